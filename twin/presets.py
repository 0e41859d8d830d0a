"""Sample presets: the twin's parameters for one material/film, validated.

A presets file is TOML with one ``[setup]`` table (the optical bench the twin
emulates) and one ``[sample.<id>]`` table per sample, each with sub-tables
``spectra``, ``auger``, ``film`` (the ASE/VSL/TA film), ``dfb`` (the DFB device made
from the same dots) and ``damage``. Every parameter carries its unit in its name
(``_nm``, ``_ps``, ``_meV``, ``_per_cm``, ``_uJ_cm2``, ...) or is dimensionless
(noted in its description). Unknown keys are rejected, and every error names the
key and the allowed range.

The shipped presets (``core``, ``cas``, ``cas_doped``) are calibrated to the numbers
of Taghipour et al. (see ``twin/data/paper_numbers.toml``). ``load_presets(path)``
reads a user's own file for a new material.

One dot, one parameter set: samples made of the same batch of dots name it (``dots = "cas"``)
and must agree on every parameter of the dots themselves (``DOT_PARAMETERS``: degeneracy,
Auger, spectra, size, the packed solid's 1S absorption and the intraband absorption per
electron); the film parameters (thickness, packing, pump absorption, confinement, waveguide
loss, doping) are per film. Every numeric sample parameter has a physical range with its
source (``PHYSICAL_RANGES``) that the loader enforces; which parameters were chosen to hit
which of the paper's numbers is declared in ``gainloop.reproduce.ROW_BASIS``.
Dotted names (``cas.auger.tau_xx_ps``, ``noise.drift_rms``) address single parameters:
``get_parameter`` and ``with_parameters`` (which sets a dot parameter for its whole batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.errors import PresetError
from core.tomlfile import load_toml_model

from .constants import PUMP_WAVELENGTH_NM, photon_energy_eV
from .grating import DfbDesign
from .noise import NoiseParams

__all__ = [
    "DFB_SHARED_PARAMETERS",
    "DOT_PARAMETERS",
    "PHYSICAL_RANGES",
    "AugerParams",
    "DamageParams",
    "DfbParams",
    "FilmParams",
    "ParameterRange",
    "PresetFile",
    "Sample",
    "SetupParams",
    "SpectraParams",
    "default_presets_path",
    "excitons_per_fluence",
    "get_parameter",
    "load_presets",
    "with_parameters",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SetupParams(_Frozen):
    """The stripe-excitation bench the twin emulates (pump line, slit, collection)."""

    pump_repetition_rate_kHz: float = Field(10.0, gt=0, description="pump repetition rate, kHz")
    pump_pulse_fs: float = Field(300.0, gt=0, description="pump pulse duration, fs")
    pump_line_half_length_um: float = Field(
        2000.0, gt=0, description="1/e^2 half-length of the cylindrical-lens pump line, um"
    )
    stripe_width_um: float = Field(60.0, gt=0, description="width of the pumped stripe, um")
    max_pulse_energy_uJ: float = Field(
        6.0, gt=0, description="largest pulse energy the attenuated laser delivers at the sample, uJ"
    )
    stripe_length_min_um: float = Field(10.0, gt=0, description="shortest stripe the slit makes, um")
    stripe_length_max_um: float = Field(4000.0, gt=0, description="longest stripe the slit makes, um")
    unguided_pl_collection: float = Field(
        3.0,
        ge=0,
        description="collected spontaneous emission that is not amplified (scattered out of the film, "
        "red tail), relative to the guided spontaneous emission of the same stripe (dimensionless)",
    )
    ase_onset_gain_length: float = Field(
        2.0, gt=0, description="net gain-length product (dimensionless) that defines the ASE onset"
    )
    fluence_limit_uJ_cm2: float = Field(
        5000.0, gt=0, description="largest peak fluence any path may send to the sample, uJ/cm^2"
    )

    @model_validator(mode="after")
    def _stripe_range(self) -> SetupParams:
        if self.stripe_length_min_um >= self.stripe_length_max_um:
            raise ValueError("stripe_length_min_um must be below stripe_length_max_um")
        return self


class SpectraParams(_Frozen):
    """Spectral positions and widths on the spectrometer's axis."""

    abs_peak_nm: float = Field(gt=800, lt=2500, description="first excitonic absorption peak, nm")
    abs_linewidth_meV: float = Field(gt=0, description="FWHM of the first excitonic absorption, meV")
    ase_redshift_meV: float = Field(ge=0, description="red shift of the gain (ASE) peak from the absorption peak, meV")
    gain_linewidth_meV: float = Field(gt=0, description="FWHM of the stimulated-emission band, meV")
    pl_stokes_shift_meV: float = Field(ge=0, description="PL peak shift below the absorption peak, meV")
    pl_linewidth_meV: float = Field(gt=0, description="FWHM of the photoluminescence, meV")


class AugerParams(_Frozen):
    """Auger recombination with statistical scaling (see ``twin.dynamics``)."""

    tau_xx_ps: float = Field(gt=0, description="biexciton Auger lifetime, ps")
    electron_fraction: float = Field(
        gt=0, le=1, description="r = C_e/(C_e + C_h): share of the electron (negative-trion) channel"
    )
    scaling_exponent: float = Field(
        1.0, gt=0, le=1.5, description="exponent on the statistical pathway count (1 = statistical)"
    )
    tau_x_radiative_ns: float = Field(gt=0, description="single-exciton (radiative) lifetime, ns")


# The film of dots, the same whether it is the ASE/VSL/TA film or the film on a DFB grating.
_PackingFraction = Annotated[float, Field(gt=0, le=0.75, description="volume fraction of dots in the film")]
_AbsorbedFraction1030 = Annotated[float, Field(gt=0, lt=1, description="fraction of the 1030 nm pump absorbed")]


class FilmParams(_Frozen):
    """The film used for TA, ASE and VSL: pump absorption and the slab waveguide."""

    thickness_nm: float = Field(gt=0, le=5000, description="film thickness, nm")
    packing_fraction: _PackingFraction
    absorbed_fraction_1030: _AbsorbedFraction1030
    dot_diameter_nm: float = Field(gt=0, le=30, description="diameter of the absorbing volume per dot used for <N>, nm")
    confinement: float = Field(gt=0, le=1, description="optical confinement factor of the guided mode")
    alpha0_per_cm: float = Field(gt=0, description="1S absorption coefficient at the gain peak, 1/cm")
    waveguide_loss_per_cm: float = Field(ge=0, description="scattering and substrate loss, 1/cm")
    intraband_loss_1s_per_cm: float = Field(
        ge=0, description="modal intraband absorption per 1S electron per dot, 1/cm"
    )
    intraband_loss_1p_per_cm: float = Field(
        ge=0, description="modal intraband absorption per 1P electron per dot, 1/cm"
    )
    saturation_intensity: float = Field(
        gt=0, description="ASE output (in units of spontaneous emission per um) at which gain halves"
    )
    group_index: float = Field(2.0, ge=1, lt=5, description="group index of the guided mode")


#: A second-order DFB device made from the dots: the coupled-mode design of ``twin.grating`` (every
#: value inside ``twin.grating.DFB_PARAMETER_RANGES``, unknown keys refused).
DfbParams = DfbDesign


class DamageParams(_Frozen):
    """Irreversible photo-damage of the film."""

    damage_fluence_uJ_cm2: float = Field(gt=0, description="fluence at which damage is fast, uJ/cm^2")
    damage_order: float = Field(gt=0, description="power law of the per-pulse damage rate in fluence")
    damage_per_pulse_at_threshold: float = Field(
        gt=0, lt=1, description="fraction of dots damaged per pulse at the damage fluence"
    )


@dataclass(frozen=True)
class ParameterRange:
    """The physical range of one sample parameter (units as in its key) and where it comes from."""

    lo: float
    hi: float
    source: str

    def describe(self) -> str:
        return f"{self.lo:g} to {self.hi:g} ({self.source})"


#: Physical range of every numeric sample parameter, keyed ``<table>.<key>`` (``""`` table: the
#: sample's own keys). The loader refuses values outside (``Sample`` validation), naming the
#: parameter, the value, the range and its source. Calibrations (``twin calibrate``) use these
#: as their bounds. Literature: Moreels et al., ACS Nano 3, 3023 (2009) (PbS sizing and
#: absorption); Klimov et al., Science 287, 1011 (2000) (quantized Auger rates); Park et al.,
#: Nano Lett. 14, 396 (2014) and Nat. Rev. Mater. 6, 382 (2021) (trion Auger, CQD lasers);
#: Cragg & Efros, Nano Lett. 10, 313 (2010) (alloyed-shell Auger suppression); "paper" is
#: Taghipour et al. (twin/data/paper_numbers.toml).
PHYSICAL_RANGES: dict[str, ParameterRange] = {
    "degeneracy": ParameterRange(2, 8, "1S degeneracy per carrier: 2 in CdSe to 8 in PbS/PbSe (4 L valleys x spin)"),
    "exciton_yield": ParameterRange(
        0.8, 1.0, "band-edge exciton yield of a 1030 nm pump; trap losses of passivated PbS films, 0-20 %"
    ),
    "spectra.abs_peak_nm": ParameterRange(800, 2500, "1S peak of 2.5-10 nm PbS(Se) dots, Moreels 2009 sizing curve"),
    "spectra.abs_linewidth_meV": ParameterRange(40, 200, "1S FWHM of PbS ensembles, 5-15 % size dispersion"),
    "spectra.ase_redshift_meV": ParameterRange(0, 60, "gain red shift (X-X attraction, Stokes): paper 18-32 meV"),
    "spectra.gain_linewidth_meV": ParameterRange(10, 150, "stimulated-emission FWHM of CQD films"),
    "spectra.pl_stokes_shift_meV": ParameterRange(0, 80, "PL Stokes shift of PbS dots, 10-50 meV"),
    "spectra.pl_linewidth_meV": ParameterRange(40, 250, "PL FWHM of PbS films"),
    "auger.tau_xx_ps": ParameterRange(
        20, 2000, "XX Auger: PbS(Se) cores 20-300 ps (paper 230 ps), alloyed shells to ~ns (Cragg & Efros 2010)"
    ),
    "auger.electron_fraction": ParameterRange(
        0.03, 0.97, "r = C_e/(C_e+C_h): 0.5 for mirror bands; X-/X+ asymmetry up to ~15x in core/shell dots (Park 2014)"
    ),
    "auger.scaling_exponent": ParameterRange(
        0.85,
        1.15,
        "departure from the statistical pathway count: multiexciton rates of CdSe/PbSe dots grow somewhat "
        "slower than the count for N >= 3 (Klimov 2000); +-15 % on the exponent",
    ),
    "auger.tau_x_radiative_ns": ParameterRange(200, 5000, "PbS single-exciton radiative lifetime, ~0.5-3 us"),
    "film.thickness_nm": ParameterRange(20, 2000, "spin-cast CQD films; paper DFB film 160 nm"),
    "film.packing_fraction": ParameterRange(
        0.3, 0.74, "ligand-exchanged CQD solids 0.3-0.64; 0.74 fcc (paper assumes it)"
    ),
    "film.absorbed_fraction_1030": ParameterRange(0.005, 0.6, "single pass of a 20-2000 nm PbS film at 1030 nm"),
    "film.dot_diameter_nm": ParameterRange(2, 12, "PbS(Se) CQDs; paper 4.85 nm core, 7.05 nm core/shell"),
    "film.confinement": ParameterRange(0.05, 0.95, "TE0 confinement of 100-400 nm films of n 2.2-2.7 (twin.waveguide)"),
    "film.alpha0_per_cm": ParameterRange(
        1000, 12000, "1S absorption of PbS CQD solids: packing x intrinsic 1S absorption (Moreels 2009)"
    ),
    "film.waveguide_loss_per_cm": ParameterRange(0, 200, "scattering + substrate loss of CQD slab waveguides"),
    "film.intraband_loss_1s_per_cm": ParameterRange(0, 50, "modal intraband absorption per 1S electron per dot"),
    "film.intraband_loss_1p_per_cm": ParameterRange(0, 200, "modal intraband absorption per 1P electron per dot"),
    "film.saturation_intensity": ParameterRange(1e3, 1e9, "gain saturation, twin units (see twin.ase)"),
    "film.group_index": ParameterRange(1.5, 4.0, "group index of a CQD slab mode"),
    "damage.damage_fluence_uJ_cm2": ParameterRange(500, 20000, "fs single-pulse damage of CQD films, ~1-10 mJ/cm^2"),
    "damage.damage_order": ParameterRange(1, 8, "order of the per-pulse damage rate in fluence (multiphoton)"),
    "damage.damage_per_pulse_at_threshold": ParameterRange(1e-9, 1e-3, "per-pulse damaged fraction at F_damage"),
}


#: Parameters of the dots themselves (size, degeneracy, Auger, spectra, intraband absorption per
#: electron, 1S absorption of the packed solid): shared by every film and device of one batch.
DOT_PARAMETERS: tuple[str, ...] = (
    "degeneracy",
    "auger",
    "spectra",
    "film.dot_diameter_nm",
    "film.alpha0_per_cm",
    "film.intraband_loss_1s_per_cm",
    "film.intraband_loss_1p_per_cm",
)

#: Parameters of the DFB devices' common process and optics (grating fabrication, pumped length,
#: collection): shared by every DFB device made of one batch of dots (with the dots' ``<N>``
#: convention ``dfb.dot_diameter_nm``). Named, like a dot parameter, by the batch's first sample.
DFB_SHARED_PARAMETERS: tuple[str, ...] = (
    "dfb.grating_depth_nm",
    "dfb.grating_index",
    "dfb.duty_cycle",
    "dfb.grating_length_um",
    "dfb.threshold_narrowing",
    "dfb.pl_collection",
    "dfb.polarization_extinction",
    "dfb.dot_diameter_nm",
)


def _dig(obj: object, name: str) -> object:
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _check_physical_ranges(sample: BaseModel) -> None:
    for name, rng in PHYSICAL_RANGES.items():
        obj: object = sample
        for part in name.split("."):
            obj = getattr(obj, part, None)
        if obj is None:
            continue
        value = float(obj)  # type: ignore[arg-type]
        if not (rng.lo <= value <= rng.hi):
            raise ValueError(f"{name} = {value:g} is outside its physical range {rng.describe()}")


class Sample(_Frozen):
    """One sample's full parameter set."""

    description: str = ""
    dots: str = Field(
        "",
        description="id of the batch of dots the film is made of: samples with the same id must share every "
        "dot parameter (DOT_PARAMETERS); empty = dots of their own",
    )
    degeneracy: int = Field(8, ge=1, le=32, description="band-edge (1S) degeneracy g per carrier")
    doping_ne: float = Field(ge=0, description="1S doping <n_e> from the bleach, electrons/dot")
    doping_distribution: Literal["fixed", "binomial", "poisson"] = "poisson"
    exciton_yield: float = Field(1.0, gt=0, le=1, description="fraction of nominal <N> reaching band-edge excitons")
    spectra: SpectraParams
    auger: AugerParams
    film: FilmParams
    dfb: DfbParams | None = None
    damage: DamageParams

    @model_validator(mode="after")
    def _doping_in_range(self) -> Sample:
        g = self.degeneracy
        hi = 0.99 * g if self.doping_distribution == "poisson" else float(g)
        if not (0.0 <= self.doping_ne <= hi):
            raise ValueError(
                f"doping_ne = {self.doping_ne} is outside 0 to {hi:g} electrons/dot "
                f"for a {self.doping_distribution} distribution with degeneracy {g}"
            )
        _check_physical_ranges(self)
        return self


class PresetFile(_Frozen):
    """A whole presets file: the setup and the samples by id."""

    setup: SetupParams = SetupParams()
    noise: NoiseParams = NoiseParams()
    sample: dict[str, Sample]

    @model_validator(mode="after")
    def _has_samples(self) -> PresetFile:
        if not self.sample:
            raise ValueError("a presets file needs at least one [sample.<id>] table")
        return self

    @model_validator(mode="after")
    def _one_dot_one_parameter_set(self) -> PresetFile:
        first: dict[str, str] = {}
        for sid, sample in self.sample.items():
            if not sample.dots:
                continue
            ref_id = first.setdefault(sample.dots, sid)
            ref = self.sample[ref_id]
            shared = DOT_PARAMETERS + (DFB_SHARED_PARAMETERS if ref.dfb and sample.dfb else ())
            for name in shared:
                a, b = _dig(ref, name), _dig(sample, name)
                if a != b:
                    raise ValueError(
                        f"samples {ref_id!r} and {sid!r} are made of the same dots ({sample.dots!r}) but differ in "
                        f"the {'dot' if name in DOT_PARAMETERS else 'shared DFB'} parameter {name} ({a!r} vs {b!r}); "
                        "one dot, one parameter set"
                    )
        return self

    def get(self, sample_id: str) -> Sample:
        """The sample with this id, or a clear error listing the ids there are."""
        try:
            return self.sample[sample_id]
        except KeyError:
            raise PresetError(
                f"unknown sample {sample_id!r}; this presets file has: {', '.join(sorted(self.sample))}"
            ) from None


def default_presets_path() -> Path:
    """Path of the shipped presets file (calibrated to the paper)."""
    return Path(str(resources.files("twin") / "data" / "presets.toml"))


def load_presets(path: str | Path | None = None) -> PresetFile:
    """Read and validate a presets TOML file (the shipped one when ``path`` is None)."""
    p = default_presets_path() if path is None else Path(path)
    return load_toml_model(p, PresetFile, "presets file", PresetError)


def excitons_per_fluence(
    absorbed_fraction_1030: float, thickness_nm: float, packing_fraction: float, dot_diameter_nm: float
) -> float:
    """kappa = <N>/F in excitons/dot per uJ/cm^2 of 1030 nm pump.

    <N> = A_1030 * (F / h nu) / n_area, with the photon fluence F/h nu (photons/cm^2;
    h nu = 1.2037 eV at 1030 nm) and the areal dot density of the film
    n_area = phi * t / V_dot (dots/cm^2), V_dot = pi d^3 / 6.
    """
    photon_energy_uJ = photon_energy_eV(PUMP_WAVELENGTH_NM) * 1.602176634e-19 * 1e6
    v_dot_cm3 = math.pi / 6.0 * (dot_diameter_nm * 1e-7) ** 3
    n_area_per_cm2 = packing_fraction * thickness_nm * 1e-7 / v_dot_cm3
    return absorbed_fraction_1030 / photon_energy_uJ / n_area_per_cm2


def _split_name(presets: PresetFile, name: str) -> list[str]:
    parts = name.split(".")
    if parts[0] == "noise" or parts[0] == "setup":
        return parts
    if parts[0] not in presets.sample:
        raise PresetError(
            f"unknown parameter {name!r}: {parts[0]!r} is not a sample of these presets "
            f"({', '.join(sorted(presets.sample))}), nor 'noise' or 'setup'"
        )
    return ["sample", *parts]


def get_parameter(presets: PresetFile, name: str) -> float:
    """The value of a dotted preset parameter (``cas_doped.film.alpha0_per_cm``, ``noise.drift_rms``)."""
    obj: object = presets
    for part in _split_name(presets, name):
        if isinstance(obj, dict):
            if part not in obj:
                raise PresetError(f"unknown parameter {name!r}: no {part!r}")
            obj = obj[part]
        elif obj is None or not hasattr(obj, part):
            raise PresetError(f"unknown parameter {name!r}: no {part!r}")
        else:
            obj = getattr(obj, part)
    if isinstance(obj, bool) or not isinstance(obj, (int, float)):
        raise PresetError(f"parameter {name!r} is not a number (it is {type(obj).__name__})")
    return float(obj)


def with_parameters(presets: PresetFile, values: dict[str, float]) -> PresetFile:
    """A copy of the presets with dotted parameters replaced, validated like a loaded file.

    A dot parameter (``DOT_PARAMETERS``) of a sample made of a batch of dots (``dots``) is
    replaced in every sample of that batch: one dot, one parameter set.
    """
    data = presets.model_dump()
    for name, value in values.items():
        get_parameter(presets, name)  # the name must exist
        parts = _split_name(presets, name)
        targets = [parts]
        if parts[0] == "sample":
            # a dot parameter is set for every sample made of the same dots
            batch = presets.sample[parts[1]].dots
            key = ".".join(parts[2:])
            if batch and any(key == d or key.startswith(d + ".") for d in DOT_PARAMETERS):
                targets = [["sample", sid, *parts[2:]] for sid, s in presets.sample.items() if s.dots == batch]
            elif batch and key in DFB_SHARED_PARAMETERS:
                targets = [
                    ["sample", sid, *parts[2:]]
                    for sid, s in presets.sample.items()
                    if s.dots == batch and s.dfb is not None
                ]
        for target in targets:
            node = data
            for part in target[:-1]:
                node = node[part]
            node[target[-1]] = value
    try:
        return PresetFile.model_validate(data)
    except ValueError as exc:
        raise PresetError(f"parameters {sorted(values)} give invalid presets: {exc}") from None
