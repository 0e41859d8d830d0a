"""The bench file: PV names, limits and the sample library of one optical bench.

A bench file is TOML, validated with pydantic (unknown keys are errors that name
the key). Every PV name is relative to ``[bench].prefix``. Units are in the key
names. The same file describes the real bench (EPICS IOCs of the lab) and the
twin's IOC (``gainloop twin serve --bench FILE`` serves exactly these PVs), whose
extra settings live in an optional ``[twin]`` table that the bench ignores.

``[bench].control_layer`` chooses ophyd's Channel Access client: ``"auto"`` (the
default: the layer ``$OPHYD_CONTROL_LAYER`` names if set, else pyepics if it is
installed, else caproto -- what ophyd itself does), ``"pyepics"`` (libca; needs
``pip install pyepics``) or ``"caproto"`` (pure Python, always installed). A layer
asked for but not installed is a ``BenchConnectionError`` naming the package when
the bench connects (``devices.connect_bench``).

Sample ids are at most ``SAMPLE_ID_MAX`` (39) characters: the stage's sample PVs are
EPICS strings (DBR_STRING, 40 bytes with the terminator).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import GainloopError
from core.tomlfile import format_validation_error, read_toml

__all__ = [
    "CONTROL_LAYERS",
    "SAMPLE_ID_MAX",
    "BenchConfig",
    "BenchConfigError",
    "LibraryEntry",
    "load_bench",
    "parse_bench",
]


#: Values of ``[bench].control_layer``.
CONTROL_LAYERS = ("auto", "pyepics", "caproto")
#: Longest sample id, characters: an EPICS DBR_STRING holds 40 bytes with its terminator.
SAMPLE_ID_MAX = 39


class BenchConfigError(GainloopError, ValueError):
    """A bench file that is missing, not TOML, or does not validate."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BenchInfo(_Strict):
    name: str = Field(min_length=1, description="name of the bench (recorded in every run)")
    prefix: str = Field("", description="prefix of every PV of this bench, e.g. 'LAB1:'")
    fluence_limit_uJ_cm2: float = Field(gt=0, le=1e5, description="largest peak fluence any path may send")
    connection_timeout_s: float = Field(5.0, gt=0, le=120, description="time to wait for PVs to connect")
    control_layer: Literal["auto", "pyepics", "caproto"] = Field(
        "auto",
        description="ophyd's Channel Access client: auto ($OPHYD_CONTROL_LAYER, else pyepics if installed, "
        "else caproto), pyepics or caproto",
    )
    lab_clock_pv: str | None = Field(
        None,
        min_length=1,
        description="PV holding the bench's lab clock in s (the twin's IOC: SIM:LabTime); absent: the wall clock",
    )


class PumpPVs(_Strict):
    fluence_setpoint: str = "PUMP:Fluence-SP"
    fluence_readback: str = "PUMP:Fluence-RB"
    pulse_energy_readback: str = "PUMP:PulseEnergy-RB"
    shutter: str = "PUMP:Shutter"
    repetition_rate_readback: str = "PUMP:RepRate-RB"
    power_ok: str = "PUMP:PowerOK"
    fluence_min_uJ_cm2: float = Field(0.0, ge=0, description="lowest fluence setpoint; also where the pump is parked")
    watchdog: str | None = Field(
        None,
        min_length=1,
        description="heartbeat PV the client refreshes while connected; the IOC closes the shutter when it goes stale",
    )
    watchdog_timeout_s: float = Field(
        5.0, ge=0.5, le=600, description="wall seconds without a heartbeat after which the IOC closes the shutter"
    )


class SlitPVs(_Strict):
    motor: str = "SLIT:Length"
    min_um: float = Field(10.0, gt=0)
    max_um: float = Field(4000.0, gt=0)
    speed_um_per_s: float = Field(500.0, gt=0, description="slit travel speed")
    move_timeout_margin_s: float = Field(
        10.0, gt=0, le=3600, description="a move fails if not done within its travel time plus this (s)"
    )

    @model_validator(mode="after")
    def _range(self) -> SlitPVs:
        if self.min_um >= self.max_um:
            raise ValueError(f"slit min_um ({self.min_um}) must be below max_um ({self.max_um})")
        return self


class LibraryEntry(_Strict):
    """One film or DFB device mounted on the sample stage."""

    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    kind: Literal["film", "dfb"]
    doping: float = Field(ge=0, le=40, description="<n_e>, 1S electrons/dot (from the bleach)")
    material: str | None = Field(
        None, min_length=1, description="the dots and film process it is made of (a campaign optimises one material)"
    )
    grating_period_nm: float | None = Field(None, gt=200, lt=2000)
    excitons_per_uJ_cm2: float | None = Field(
        None,
        gt=0,
        description="kappa = <N>/F at the pump wavelength, excitons/dot per uJ/cm^2 (pump_probe's default)",
    )
    preset: str | None = Field(None, description="twin only: the preset sample this film is made of")

    @field_validator("id")
    @classmethod
    def _fits_a_string_pv(cls, v: str) -> str:
        if len(v) > SAMPLE_ID_MAX:
            raise ValueError(
                f"sample id {v!r} has {len(v)} characters; at most {SAMPLE_ID_MAX} fit the stage's sample PVs "
                "(EPICS strings, DBR_STRING: 40 bytes with the terminator)"
            )
        return v

    @model_validator(mode="after")
    def _dfb_has_period(self) -> LibraryEntry:
        if self.kind == "dfb" and self.grating_period_nm is None:
            raise ValueError(f"DFB device {self.id!r} needs grating_period_nm")
        return self


class StagePVs(_Strict):
    sample_setpoint: str = "STAGE:Sample-SP"
    sample_readback: str = "STAGE:Sample-RB"
    doping_readback: str = "STAGE:Doping-RB"
    grating_period_readback: str = "STAGE:Period-RB"
    kind_readback: str = "STAGE:Kind-RB"
    busy: str = "STAGE:Busy"
    new_film_doping: str = "STAGE:NewFilm-Doping-SP"
    new_film_request: str = "STAGE:NewFilm-Request"
    move_timeout_s: float = Field(120.0, gt=0)
    new_film_timeout_h: float = Field(48.0, gt=0, description="longest wait for an operator to make a film")
    new_film_material: str | None = Field(
        None, min_length=1, description="material of the films an operator makes on request (NewFilm-Request)"
    )
    library: list[LibraryEntry] = Field(min_length=1)

    @field_validator("library")
    @classmethod
    def _unique(cls, v: list[LibraryEntry]) -> list[LibraryEntry]:
        ids = [e.id for e in v]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate sample ids in the library: {', '.join(sorted(dup))}")
        return v


class SpectrometerPVs(_Strict):
    exposure: str = "SPEC:Exposure"
    acquire: str = "SPEC:Acquire"
    spectrum: str = "SPEC:Spectrum"
    wavelength: str = "SPEC:Wavelength"
    integrated: str = "SPEC:Integrated"
    peak_wavelength: str = "SPEC:PeakWavelength"
    fwhm: str = "SPEC:FWHM"
    saturated: str = "SPEC:Saturated"
    pixels: int = Field(512, ge=16, le=8192)
    start_nm: float = Field(1200.0, gt=0)
    stop_nm: float = Field(1700.0, gt=0)
    exposure_min_s: float = Field(0.001, gt=0)
    exposure_max_s: float = Field(60.0, gt=0)
    acquire_timeout_s: float = Field(120.0, gt=0)

    @model_validator(mode="after")
    def _axis(self) -> SpectrometerPVs:
        if self.start_nm >= self.stop_nm:
            raise ValueError("spectrometer start_nm must be below stop_nm")
        if self.exposure_min_s >= self.exposure_max_s:
            raise ValueError("exposure_min_s must be below exposure_max_s")
        return self


class PolarizerPVs(_Strict):
    angle_setpoint: str = "POL:Angle-SP"
    angle_readback: str = "POL:Angle-RB"


class TransientAbsorptionPVs(_Strict):
    delay_setpoint: str = "TA:Delay-SP"
    delay_readback: str = "TA:Delay-RB"
    pump_excitons: str = "TA:PumpExcitons-SP"
    acquire: str = "TA:Acquire"
    signal: str = "TA:dAlpha"
    delay_min_ps: float = -100.0
    delay_max_ps: float = Field(5000.0, gt=0)


class AbsorptionPVs(_Strict):
    """The white-light source of the linear absorption measurement, read by the same spectrometer."""

    lamp_shutter: str = "ABS:LampShutter"
    lamp_ok: str = "ABS:LampOK"
    sample_in: str = "ABS:SampleIn"
    neutral_absorbance: str = "ABS:NeutralAbs"
    neutral_1s_absorbance: str = "ABS:Neutral1SAbs"
    exposure_s: float = Field(
        1.0, gt=0, le=60, description="exposure of each white-light read (dark, reference, sample), s"
    )
    sample_in_move_s: float = Field(
        2.0, ge=0, le=600, description="lab time to move the film into or out of the white-light beam, s"
    )


class InterlockPVs(_Strict):
    permit: str = "IL:Permit"
    message: str = "IL:Message"
    resume_delay_s: float = Field(
        5.0, ge=0, le=3600, description="wall time a measurement waits after the permit or pump power is back"
    )


class TwinSettings(_Strict):
    """Settings of the twin's IOC and in-process devices (ignored by a real bench)."""

    presets: str | None = Field(None, description="presets TOML (default: the shipped presets)")
    seed: int = 0
    new_film_hours: float = Field(6.0, gt=0, description="lab time to make a film of a new doping, h")
    sample_change_s: float = Field(20.0, ge=0, description="lab time of a stage move, s")
    new_film_preset: str = Field("cas_doped", description="preset sample new films are made of")
    film_doping_spread: float = Field(
        0.1, ge=0, le=2, description="sigma of a new film's true doping around the request, electrons/dot"
    )
    film_thickness_rel_spread: float = Field(
        0.03, ge=0, le=0.3, description="relative sigma of a new film's thickness around the preset's (fraction)"
    )
    film_loss_rel_spread: float = Field(
        0.05, ge=0, le=0.5, description="relative sigma of a new film's waveguide loss around the preset's (fraction)"
    )
    lamp_counts_per_s: float = Field(
        2.0e6, gt=0, le=1e9, description="white-light counts per second on the spectrometer's brightest pixel"
    )
    lamp_drift_rms: float = Field(0.002, ge=0, lt=0.5, description="slow drift of the white light, rms fraction")


class BenchConfig(_Strict):
    """A whole bench file."""

    bench: BenchInfo
    pump: PumpPVs = PumpPVs()
    slit: SlitPVs = SlitPVs()
    stage: StagePVs
    spectrometer: SpectrometerPVs = SpectrometerPVs()
    polarizer: PolarizerPVs = PolarizerPVs()
    transient_absorption: TransientAbsorptionPVs = TransientAbsorptionPVs()
    interlock: InterlockPVs = InterlockPVs()
    absorption: AbsorptionPVs = AbsorptionPVs()
    twin: TwinSettings = TwinSettings()

    def pv(self, name: str) -> str:
        """Full PV name (with the bench prefix)."""
        return f"{self.bench.prefix}{name}"

    def new_film_entry(self, sample_id: str, doping: float, *, preset: str | None = None) -> LibraryEntry:
        """The library entry of a film an operator made on request: ``[stage].new_film_material``, this doping."""
        return LibraryEntry(
            id=sample_id, kind="film", doping=float(doping), material=self.stage.new_film_material, preset=preset
        )

    def library_entry(self, sample_id: str) -> LibraryEntry:
        for e in self.stage.library:
            if e.id == sample_id:
                return e
        ids = ", ".join(e.id for e in self.stage.library)
        raise BenchConfigError(f"sample {sample_id!r} is not in the bench's library; mounted: {ids}")


def parse_bench(data: dict, source: str = "<dict>") -> BenchConfig:
    """Validate an already-parsed bench mapping."""
    try:
        cfg = BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise BenchConfigError(format_validation_error(exc, "bench file", source)) from None
    if not math.isfinite(cfg.bench.fluence_limit_uJ_cm2):
        raise BenchConfigError(f"invalid bench file {source}: bench.fluence_limit_uJ_cm2 must be finite")
    return cfg


def load_bench(path: str | Path) -> BenchConfig:
    """Read and validate a bench TOML file."""
    return parse_bench(read_toml(path, "bench file", BenchConfigError), str(path))
