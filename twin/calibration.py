"""Calibrate a sample's preset parameters from stored stripe, pump-probe and DFB lasing runs: MAP, Laplace errors,
identifiability.

The data are the spectrometer's integrated counts of stripe acquisitions (ASE fluence scans,
VSL scans, single ASE points): per acquisition the delivered fluence (the pump's readback,
uJ/cm^2), the stripe length (um), the film's doping (electrons/dot), the exposure (s) and the
dark-subtracted integrated counts. The forward model is the twin's own measurement model
(``twin.instrument.expected_stripe_counts``: pulse-jitter average, pixel by pixel, times the
detector's counts per unit), evaluated in torch with the fitted parameters as tensors
(``twin.differentiable``); its variance is the plans' noise model (shot noise of signal and
dark counts, read noise of every pixel, the residual pulse-to-pulse fluctuation).

Parameters are fitted in u = ln(value), each with a documented physical range (``PHYSICAL_RANGES``:
the bounds; a zero lower bound is taken as ``ZERO_BOUND_FRACTION`` of the upper one) and a
Gaussian prior in u centred on the preset value with sd ln(hi/lo)/4 (the range spans +-2 sd).
The MAP is found by Levenberg-Marquardt (iteratively reweighted: the variance follows the model;
projected at the bounds; a trust region in ln(value)), warm-started by continuation on a spread subset
of the acquisitions with relative noise floors of 10 %, 2 % and 0.3 % (far from the optimum the counts'
tiny errors make the Gauss-Newton model poor), then run on all of them under the noise model itself. The
Jacobian is reverse-mode autograd per acquisition (``torch.func``: ``vmap`` of ``jacrev``), at the pulses'
mean fluence while iterating, exact (the pulse-jitter average) to confirm convergence and for the errors;
the standard errors are the Laplace approximation (the inverse Gauss-Newton Hessian of the negative log
posterior).

Pump-probe (TA) runs (``TaRun``) enter the same fit: per reading the delay (ps), the pump's <N> (the level
the plan set) and the measured d(alpha)/alpha0, modelled by the twin's own TA trace (``twin.dynamics.ta_trace``,
differential, in torch) with a Gaussian noise of ``noise.ta_noise_rms`` per reading. They constrain the Auger
and radiative parameters and the exciton yield, which the stripe runs see only through the threshold; their
residuals join the stripe runs' in one chi2, and their Jacobian (forward-mode autograd) joins the same
Gauss-Newton step and the same Laplace errors.

DFB lasing runs (``LasingRun``: ``lasing_threshold``, the device's output versus fluence) enter the same fit:
per read the delivered fluence (the pump's readback, uJ/cm^2), the exposure (s), the analyser angle (deg) and
the dark-subtracted integrated counts, modelled by the twin bench's own DFB read
(``twin.instrument.expected_dfb_counts``: ``twin.dfb.dfb_analysed_spectrum`` at the pixel centres x the pixel
widths x the DFB's collection, summed; the variance holds shot, dark and read noise and the pump's drift during
the exposure), with the device's photo-damage dose before each read scaling alpha0 as for a film. The device's
dfb table (grating, film thickness and index, its own absorbed fraction, spontaneous coupling, PL collection) is
its design and never fitted; the fitted film and yield parameters are those of the same dots and film. A lasing
run pins the film's gain, its total loss and the exciton yield (the PL below threshold), and with them the
device's threshold; its Jacobian is forward-mode autograd (the threshold is a root on the numbers plus one torch
Newton step, exact to first order), forward differences while iterating.

Identifiability (``identifiable``): a parameter is *constrained* by the runs when the data alone,
given the parameters already chosen, pin ln(value) to better than ``IDENTIFIED_MAX_LOG_SD``; the
default parameter choice adds the candidates (``DEFAULT_CANDIDATES``, in order) that are, and says
in one line why each other one is not (e.g. "only their product is constrained").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.errors import GainloopError, PresetError

from .presets import PHYSICAL_RANGES, PresetFile, get_parameter, with_parameters

__all__ = [
    "DEFAULT_CANDIDATES",
    "IDENTIFIED_MAX_LOG_SD",
    "CalibrationError",
    "CalibrationResult",
    "LasingRun",
    "ParameterEstimate",
    "StripeRun",
    "TaRun",
    "calibrate",
    "check_parameter_names",
    "identifiable",
    "predicted_counts",
    "threshold_map_deviation",
    "unit_of",
]

#: Sample parameters (``<table>.<key>``) a calibration tries by default, in order of preference: of a set
#: only their combination constrains (kappa = absorbed fraction x ... / (packing x thickness ...)), the
#: first one is fitted and the others are held at their preset values.
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "film.absorbed_fraction_1030",
    "film.alpha0_per_cm",
    "film.waveguide_loss_per_cm",
    "film.saturation_intensity",
    "film.intraband_loss_1p_per_cm",
    "auger.tau_xx_ps",
    "film.confinement",
    "exciton_yield",
    "film.thickness_nm",
    "film.packing_fraction",
    "film.dot_diameter_nm",
    "film.intraband_loss_1s_per_cm",
    "auger.electron_fraction",
    "auger.scaling_exponent",
    "film.group_index",
    "auger.tau_x_radiative_ns",
)

#: Most Levenberg-Marquardt iterations of one stage of the fit. A lasing run beside a stripe run frees parameters
#: that stay weakly constrained along a flat valley (measured: one ASE scan + one lasing_threshold run, eight
#: parameters by default, converged after 54 iterations in all, the last stage alone over 40).
MAX_ITERATIONS = 80
#: Largest sd of ln(value) (from the data alone, the other chosen parameters free) of a constrained parameter.
IDENTIFIED_MAX_LOG_SD = 0.2
#: A physical range starting at 0 is bounded below at this fraction of its upper end (the fit is in ln).
ZERO_BOUND_FRACTION = 1e-4
#: The fit has converged when the Gauss-Newton model predicts less than this decrease of -ln(posterior)
#: (0.5 chi2 units) still to be had: first with the Jacobian at the mean fluence, then confirmed with the
#: exact one (``_CONVERGED_EXACT``: a bias far below one standard error).
_CONVERGED = 1e-4
_CONVERGED_EXACT = 1e-3
#: The fit first runs on this many acquisitions (spread over the data) until less than ``_WARM_TO_GO`` is to go.
_WARM_POINTS = 64
#: Largest change of ln(value) of any parameter in one step.
_MAX_LOG_STEP = 1.0
_WARM_TO_GO = 0.5
#: Relative error floors of the warm-start stages (continuation towards the noise model).
_WARM_FLOORS = (0.1, 0.02, 0.003)
#: Acquisitions per batch of the model and its Jacobian (bounds memory: ~1 MB per acquisition in a batch).
_BATCH = 128
#: Largest number of acquisitions the identifiability analysis evaluates (a spread subset of the data).
_IDENT_MAX_POINTS = 160

#: What to measure to constrain a parameter the runs leave free (by ``<table>.<key>``).
_MEASURE_NEXT = {
    "film.saturation_intensity": "ASE points well above threshold on long stripes (the saturated regime)",
    "film.waveguide_loss_per_cm": "films of other dopings (separates the waveguide loss from the intraband loss)",
    "film.intraband_loss_1p_per_cm": "films of other dopings (the 1P spill grows with doping)",
    "film.intraband_loss_1s_per_cm": "films of other dopings",
    "auger.tau_xx_ps": "a pump-probe (TA) run, or VSL scans on long stripes (the Auger decay in transit)",
    "exciton_yield": "a DFB lasing_threshold run of a device of the same dots (its PL below threshold), or TA runs",
    "auger.electron_fraction": "a pump-probe (TA) run on a doped film",
    "auger.scaling_exponent": "pump-probe (TA) runs at several pump <N>",
    "film.alpha0_per_cm": "a VSL scan at a high fluence (the saturated net gain)",
    "film.confinement": "a VSL scan at a high fluence (the saturated net gain)",
}


class CalibrationError(GainloopError):
    """A calibration that cannot be done: no usable data, a bad parameter, a fit that did not converge."""


def unit_of(name: str) -> str:
    """The unit of a dotted parameter from its name's suffix ("dimensionless" if it has none)."""
    for suffix, unit in (
        ("_per_cm", "1/cm"),
        ("_uJ_cm2", "uJ/cm^2"),
        ("_nm", "nm"),
        ("_ps", "ps"),
        ("_ns", "ns"),
        ("_meV", "meV"),
        ("_um", "um"),
        ("_s", "s"),
    ):
        if name.endswith(suffix):
            return unit
    return "dimensionless"


def _as_columns(run, names: tuple[str, ...], what: str) -> None:
    """Make ``run``'s fields ``names`` float arrays of one length (the first's), finite, and at least one entry;
    a ``CalibrationError`` naming the field otherwise."""
    n = len(getattr(run, names[0]))
    for name in names:
        arr = np.asarray(getattr(run, name), dtype=float)
        object.__setattr__(run, name, arr)
        if arr.shape != (n,):
            raise CalibrationError(f"run {run.uid}: {name} has shape {arr.shape}, expected ({n},)")
        if not np.all(np.isfinite(arr)):
            raise CalibrationError(f"run {run.uid}: {name} has NaN or inf entries (drop unusable {what} first)")
    if n == 0:
        raise CalibrationError(f"run {run.uid} has no usable {what}")


@dataclass(frozen=True)
class StripeRun:
    """One run's stripe acquisitions (one entry per usable event), all arrays of one length.

    ``fluence_uJ_cm2``: delivered peak fluence (the pump's readback); ``stripe_length_um``;
    ``exposure_s``; ``counts``: dark-subtracted integrated counts; ``doping``: the film's
    <n_e> (electrons/dot). ``sample``: the preset sample id whose parameters describe the film.
    ``damage_dose``: the film's photo-damage dose D before each acquisition (dimensionless,
    ``twin.damage``: its undamaged fraction is exp(-D)), from the pulses it has taken; zeros if None.
    """

    uid: str
    plan: str
    sample: str
    doping: float
    fluence_uJ_cm2: np.ndarray
    stripe_length_um: np.ndarray
    exposure_s: np.ndarray
    counts: np.ndarray
    damage_dose: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.damage_dose is None:
            object.__setattr__(self, "damage_dose", np.zeros(len(self.counts)))
        _as_columns(self, ("counts", "fluence_uJ_cm2", "stripe_length_um", "exposure_s", "damage_dose"), "acquisitions")
        if np.any(self.damage_dose < 0):
            raise CalibrationError(f"run {self.uid}: the damage dose must be >= 0")
        if np.any(self.fluence_uJ_cm2 <= 0) or np.any(self.exposure_s <= 0) or np.any(self.stripe_length_um <= 0):
            raise CalibrationError(f"run {self.uid}: fluence, stripe length and exposure must be positive")
        if not math.isfinite(self.doping) or self.doping < 0:
            raise CalibrationError(f"run {self.uid}: doping {self.doping!r} must be a finite number >= 0 electrons/dot")


@dataclass(frozen=True)
class TaRun:
    """One pump-probe (TA) run's readings (one entry per usable reading), all arrays of one length.

    ``delay_ps``: pump-probe delay (ps, >= 0); ``pump_excitons``: the pump's <N> (excitons/dot, nominal
    scale: the level the plan set, kappa x the fluence setpoint); ``signal``: the measured d(alpha)/alpha0
    at the gain peak (dimensionless); ``doping``: the film's <n_e> (electrons/dot); ``noise_rms``: the
    readings' noise (None: the presets' ``noise.ta_noise_rms``). ``sample``: the preset sample id.
    """

    uid: str
    plan: str
    sample: str
    doping: float
    delay_ps: np.ndarray
    pump_excitons: np.ndarray
    signal: np.ndarray
    noise_rms: float | None = None

    def __post_init__(self) -> None:
        _as_columns(self, ("signal", "delay_ps", "pump_excitons"), "readings")
        if np.any(self.delay_ps < 0) or np.any(self.pump_excitons < 0):
            raise CalibrationError(f"run {self.uid}: delays (ps) and pump <N> (excitons/dot) must be >= 0")
        if not math.isfinite(self.doping) or self.doping < 0:
            raise CalibrationError(f"run {self.uid}: doping {self.doping!r} must be a finite number >= 0 electrons/dot")
        if self.noise_rms is not None and not (math.isfinite(self.noise_rms) and self.noise_rms > 0):
            raise CalibrationError(f"run {self.uid}: the TA noise {self.noise_rms!r} must be a positive number")


@dataclass(frozen=True)
class LasingRun:
    """One DFB lasing run's reads (one entry per usable event), all arrays of one length.

    ``fluence_uJ_cm2``: delivered fluence (the pump's readback; uniform over the DFB's pump spot);
    ``exposure_s``; ``counts``: dark-subtracted integrated counts of the spectrometer;
    ``analyser_angle_deg``: the analyser's angle from the lasing polarisation (deg); ``doping``: the device
    film's <n_e> (electrons/dot); ``damage_dose``: the device's photo-damage dose before each read
    (``twin.damage``; zeros if None). ``sample``: the preset sample whose dots, film and ``dfb`` table
    describe the device; ``grating_period_nm``: the device's grating period (nm) where it is not the dfb
    table's (None: the table's). The device's dfb table is the device's design: never fitted.
    """

    uid: str
    plan: str
    sample: str
    doping: float
    fluence_uJ_cm2: np.ndarray
    exposure_s: np.ndarray
    counts: np.ndarray
    analyser_angle_deg: np.ndarray
    damage_dose: np.ndarray | None = None
    grating_period_nm: float | None = None

    def __post_init__(self) -> None:
        if self.damage_dose is None:
            object.__setattr__(self, "damage_dose", np.zeros(len(self.counts)))
        _as_columns(self, ("counts", "fluence_uJ_cm2", "exposure_s", "analyser_angle_deg", "damage_dose"), "reads")
        if np.any(self.damage_dose < 0):
            raise CalibrationError(f"run {self.uid}: the damage dose must be >= 0")
        if np.any(self.fluence_uJ_cm2 <= 0) or np.any(self.exposure_s <= 0):
            raise CalibrationError(f"run {self.uid}: fluence (uJ/cm^2) and exposure (s) must be positive")
        if not math.isfinite(self.doping) or self.doping < 0:
            raise CalibrationError(f"run {self.uid}: doping {self.doping!r} must be a finite number >= 0 electrons/dot")
        if self.grating_period_nm is not None and not (
            math.isfinite(self.grating_period_nm) and self.grating_period_nm > 0
        ):
            raise CalibrationError(f"run {self.uid}: grating period {self.grating_period_nm!r} must be positive, nm")


@dataclass(frozen=True)
class ParameterEstimate:
    """A fitted parameter: MAP value and its standard error (Laplace), in the unit of its name."""

    name: str
    value: float
    error: float
    preset: float
    lo: float
    hi: float
    unit: str
    data_log_sd: float  # sd of ln(value) from the data alone (the other fitted parameters free)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "value": self.value,
            "error": self.error,
            "preset": self.preset,
            "bounds": [self.lo, self.hi],
            "unit": self.unit,
            "data_log_sd": self.data_log_sd,
        }


@dataclass
class CalibrationResult:
    """The outcome of ``calibrate``: estimates, correlation, fit quality, the calibrated presets."""

    sample: str
    estimates: list[ParameterEstimate]
    correlation: np.ndarray  # (k, k)
    chi2: float
    n_points: int
    iterations: int
    presets: PresetFile
    flags: list[str]
    run_uids: list[str]
    residuals: dict[str, np.ndarray]  # uid -> (measured - model) / sd per acquisition
    predicted: dict[str, np.ndarray]  # uid -> calibrated model counts per acquisition
    predicted_preset: dict[str, np.ndarray] = field(default_factory=dict)  # uid -> model counts at the presets

    @property
    def dof(self) -> int:
        return max(self.n_points - len(self.estimates), 1)

    @property
    def reduced_chi2(self) -> float:
        return self.chi2 / self.dof

    def as_dict(self) -> dict:
        return {
            "sample": self.sample,
            "parameters": [e.as_dict() for e in self.estimates],
            "correlation": self.correlation.tolist(),
            "chi2": self.chi2,
            "n_points": self.n_points,
            "dof": self.dof,
            "reduced_chi2": self.reduced_chi2,
            "iterations": self.iterations,
            "flags": list(self.flags),
            "runs": {
                uid: {"n": int(r.size), "rms_residual": float(np.sqrt(np.mean(r**2)))}
                for uid, r in self.residuals.items()
            },
        }


# ----------------------------------------------------------------------------- names and bounds
def check_parameter_names(presets: PresetFile, sample: str, names: list[str]) -> list[str]:
    """Full dotted names (``<sample>.<table>.<key>``; a name without the sample is taken as the sample's)
    of parameters the calibration can fit, or a ``CalibrationError`` saying which is not and why."""
    from .differentiable import DIFFERENTIABLE_PARAMETERS

    out = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        full = name if name.split(".")[0] in presets.sample else f"{sample}.{name}"
        try:
            get_parameter(presets, full)
        except PresetError as exc:
            raise CalibrationError(
                f"{exc}; parameters of {sample!r} a calibration can fit: {', '.join(DIFFERENTIABLE_PARAMETERS)}"
            ) from None
        sid, _, key = full.partition(".")
        if sid != sample:
            raise CalibrationError(f"parameter {full!r} belongs to sample {sid!r}, but the runs are of {sample!r}")
        if key not in DIFFERENTIABLE_PARAMETERS:
            raise CalibrationError(
                f"parameter {full!r} cannot be calibrated from stripe acquisitions (ASE/VSL runs); fittable: "
                f"{', '.join(DIFFERENTIABLE_PARAMETERS)}"
            )
        if full in out:
            raise CalibrationError(f"parameter {full!r} is named twice")
        out.append(full)
    if not out:
        raise CalibrationError("no parameters to fit were named")
    return out


def _bounds(key: str) -> tuple[float, float]:
    rng = PHYSICAL_RANGES[key]
    lo = rng.lo if rng.lo > 0 else rng.hi * ZERO_BOUND_FRACTION
    return float(lo), float(rng.hi)


# ----------------------------------------------------------------------------- the model
class _Data:
    """All runs' acquisitions concatenated, as float64 tensors (one sample)."""

    def __init__(self, runs: list[StripeRun]):
        import torch

        self.runs = runs

        def cat(parts):
            return np.concatenate(parts) if parts else np.zeros(0)

        self.fluence = torch.as_tensor(cat([r.fluence_uJ_cm2 for r in runs]), dtype=torch.float64)
        self.length = torch.as_tensor(cat([r.stripe_length_um for r in runs]), dtype=torch.float64)
        self.doping = torch.as_tensor(cat([np.full(r.counts.size, r.doping) for r in runs]), dtype=torch.float64)
        self.exposure = torch.as_tensor(cat([r.exposure_s for r in runs]), dtype=torch.float64)
        self.counts = torch.as_tensor(cat([r.counts for r in runs]), dtype=torch.float64)
        self.healthy = torch.as_tensor(np.exp(-cat([r.damage_dose for r in runs])), dtype=torch.float64)
        self.splits = np.cumsum([r.counts.size for r in runs])[:-1] if runs else np.array([], dtype=int)

    def batches(self):
        n = self.counts.numel()
        return [slice(i, i + _BATCH) for i in range(0, n, _BATCH)]

    def columns(self, sl: slice):
        return self.fluence[sl], self.length[sl], self.doping[sl], self.exposure[sl], self.healthy[sl]

    def subset(self, idx: np.ndarray) -> _Data:
        sub = object.__new__(_Data)
        sub.runs = self.runs
        for name in ("fluence", "length", "doping", "exposure", "counts", "healthy"):
            setattr(sub, name, getattr(self, name)[idx])
        sub.splits = np.array([], dtype=int)
        return sub

    def per_run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return _per_run(self.runs, self.splits, values)


def _point_model(presets: PresetFile, sample_id: str, names: list[str], *, exact: bool = True):
    """The counts model of one acquisition, ``(u, fluence, length, doping, exposure, healthy) -> (mean, var)``
    (0-d tensors; ``healthy``: the film's undamaged fraction exp(-dose), which scales alpha0 as in
    ``twin.damage.damaged_sample``). ``exact`` False: at the pulses' mean fluence, without the jitter average."""
    import torch

    from .instrument import expected_stripe_counts, stripe_pixel_intensities
    from .spectra import SPECTROMETER_AXIS_NM

    base = presets.get(sample_id)
    alpha0_name = f"{sample_id}.film.alpha0_per_cm"

    def one(u, f, length, doping, exposure, healthy):
        values = dict(zip(names, torch.exp(u), strict=True))
        values[alpha0_name] = values.get(alpha0_name, base.film.alpha0_per_cm) * healthy
        sample = _tensor_sample(presets, sample_id, list(values), list(values.values()))
        if exact:
            return expected_stripe_counts(f, length, doping, exposure, sample, presets.setup, presets.noise)
        per_pixel = stripe_pixel_intensities(SPECTROMETER_AXIS_NM, f, length, doping, sample, presets.setup)
        return per_pixel.sum(-1) * presets.noise.counts_per_unit_s * exposure, exposure

    return one


def _model(presets: PresetFile, sample_id: str, names: list[str], u, data: _Data):
    """Mean and variance of the integrated counts at u = ln(parameters), per acquisition (torch, no graph)."""
    import torch
    from torch.func import vmap

    if data.counts.numel() == 0:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    one = vmap(_point_model(presets, sample_id, names), in_dims=(None, 0, 0, 0, 0, 0))
    means, variances = [], []
    with torch.no_grad():
        for sl in data.batches():
            m, v = one(u, *data.columns(sl))
            means.append(m)
            variances.append(v)
    return torch.cat(means), torch.cat(variances)


def _tensor_sample(presets: PresetFile, sample_id: str, names: list[str], values):
    from .differentiable import tensor_presets

    if not names:
        return presets.get(sample_id)
    return tensor_presets(presets, dict(zip(names, values, strict=True))).get(sample_id, presets.get(sample_id))


def _jacobian(presets, sample_id, names, u, data: _Data, *, exact: bool = True):
    """d(mean counts)/du, shape (points, k), by reverse-mode autograd per acquisition (``torch.func``:
    ``vmap`` of ``jacrev`` over the acquisitions, in batches). ``exact`` False: the counts at the pulses'
    mean fluence, without the jitter average (7x cheaper; the fit's iterations use it, the errors do not)."""
    import torch
    from torch.func import jacrev, vmap

    if not names or data.counts.numel() == 0:
        return torch.zeros((data.counts.numel(), len(names)), dtype=torch.float64)
    one = _point_model(presets, sample_id, names, exact=exact)
    jac = vmap(jacrev(lambda *a: one(*a)[0]), in_dims=(None, 0, 0, 0, 0, 0))
    return torch.cat([jac(u, *data.columns(sl)) for sl in data.batches()]).detach()


#: The parameters (``<table>.<key>`` prefixes) a TA trace depends on: the Auger and radiative rates and the yield.
_TA_PARAMETER_PREFIXES = ("auger.", "exciton_yield")


class _TaData:
    """The TA runs' readings concatenated (``twin.dynamics.ta_readings``: one batched cascade per run)."""

    def __init__(self, runs: list[TaRun], default_noise_rms: float):
        self.runs = runs
        self.signal = np.concatenate([r.signal for r in runs]) if runs else np.zeros(0)
        self.sd = (
            np.concatenate([np.full(r.signal.size, r.noise_rms or default_noise_rms) for r in runs])
            if runs
            else np.zeros(0)
        )
        self.splits = np.cumsum([r.signal.size for r in runs])[:-1] if runs else np.array([], dtype=int)

    @property
    def size(self) -> int:
        return int(self.signal.size)

    def model(self, presets: PresetFile, sample_id: str, names: list[str], u):
        """d(alpha)/alpha0 of every reading at u = ln(parameters) (torch, differentiable in u)."""
        import torch

        from .dynamics import ta_readings

        if not self.runs:
            return torch.zeros(0, dtype=torch.float64)
        sample = _tensor_sample(presets, sample_id, names, torch.exp(u)) if names else presets.get(sample_id)
        return torch.cat(
            [
                ta_readings(r.delay_ps, torch.as_tensor(r.pump_excitons), sample, r.doping, differential=True)
                for r in self.runs
            ]
        )

    def jacobian(self, presets: PresetFile, sample_id: str, names: list[str], u, *, exact: bool = True) -> np.ndarray:
        """d(model)/du, shape (readings, k), for the parameters the trace depends on (zero columns for the rest):
        forward-mode autograd, one pass per parameter; ``exact`` False: forward differences in u (step 1e-6; five
        times cheaper, for the fit's iterations and the identifiability analysis, not for the errors)."""
        return _forward_jacobian(
            lambda v: self.model(presets, sample_id, names, v),
            u,
            names,
            self.size,
            _TA_PARAMETER_PREFIXES,
            exact=exact,
            active=bool(self.runs),
        )

    def per_run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return _per_run(self.runs, self.splits, values)


#: The parameters (``<table>.<key>`` prefixes) a DFB's output depends on: the film's gain and losses and the yield
#: (the device's own dfb table is its design, not fitted).
_LASING_PARAMETER_PREFIXES = ("film.", "exciton_yield")


class _LasingData:
    """The DFB lasing runs' reads concatenated; modelled run by run (``twin.instrument.expected_dfb_counts``)."""

    def __init__(self, runs: list[LasingRun]):
        self.runs = runs
        self.counts = np.concatenate([r.counts for r in runs]) if runs else np.zeros(0)
        self.splits = np.cumsum([r.counts.size for r in runs])[:-1] if runs else np.array([], dtype=int)

    @property
    def size(self) -> int:
        return int(self.counts.size)

    def _run_sample(self, presets: PresetFile, sample_id: str, names: list[str], u, run: LasingRun):
        """The run's device: the fitted parameters at u, alpha0 scaled by each read's undamaged fraction
        exp(-dose) (as ``twin.damage.damaged_sample``), the run's grating period."""
        import torch

        values = dict(zip(names, torch.exp(u), strict=True)) if names else {}
        alpha0_name = f"{sample_id}.film.alpha0_per_cm"
        dose = run.damage_dose
        if np.any(dose != dose[0]):
            healthy = torch.exp(-torch.as_tensor(dose, dtype=torch.float64))
        else:
            healthy = math.exp(-float(dose[0]))
        if not (isinstance(healthy, float) and healthy == 1.0):
            base = presets.get(sample_id).film.alpha0_per_cm
            values[alpha0_name] = values.get(alpha0_name, base) * healthy
        sample = _tensor_sample(presets, sample_id, list(values), list(values.values()))
        if run.grating_period_nm is not None and sample.dfb is not None:
            sample = sample.model_copy(
                update={"dfb": sample.dfb.model_copy(update={"grating_period_nm": float(run.grating_period_nm)})}
            )
        if sample.dfb is None:
            raise CalibrationError(
                f"run {run.uid} is a DFB lasing run, but preset sample {sample_id!r} has no dfb table (the device's "
                "grating design): add [sample.<id>.dfb] to the presets"
            )
        return sample

    def model(self, presets: PresetFile, sample_id: str, names: list[str], u):
        """Mean and variance of every read's integrated counts at u = ln(parameters) (torch; the mean is
        differentiable in u, the variance is not meant to be)."""
        import torch

        from .instrument import expected_dfb_counts

        if not self.runs:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        u = torch.as_tensor(u, dtype=torch.float64)
        means, variances = [], []
        for r in self.runs:
            sample = self._run_sample(presets, sample_id, names, u, r)
            m, v = expected_dfb_counts(
                torch.as_tensor(r.fluence_uJ_cm2, dtype=torch.float64),
                r.analyser_angle_deg,
                r.doping,
                r.exposure_s,
                sample,
                presets.noise,
            )
            means.append(m)
            variances.append(v)
        return torch.cat(means), torch.cat(variances)

    def jacobian(self, presets: PresetFile, sample_id: str, names: list[str], u, *, exact: bool = True) -> np.ndarray:
        """d(mean counts)/du, shape (reads, k), for the parameters the DFB output depends on (zero columns for the
        rest): forward-mode autograd, one pass per parameter (the threshold's root is found on the numbers, so
        reverse-mode ``torch.func`` transforms cannot run it); ``exact`` False: forward differences in u (step
        1e-6), for the fit's iterations and the identifiability analysis."""
        return _forward_jacobian(
            lambda v: self.model(presets, sample_id, names, v)[0],
            u,
            names,
            self.size,
            _LASING_PARAMETER_PREFIXES,
            exact=exact,
            active=bool(self.runs),
        )

    def per_run(self, values: np.ndarray) -> dict[str, np.ndarray]:
        return _per_run(self.runs, self.splits, values)


def _per_run(runs: list, splits, values: np.ndarray) -> dict[str, np.ndarray]:
    """``values`` (one per reading, the runs' readings one after the other) split by run uid."""
    if not runs:
        return {}
    return {r.uid: part for r, part in zip(runs, np.split(values, splits), strict=True)}


def _forward_jacobian(model, u, names: list[str], size: int, prefixes: tuple[str, ...], *, exact: bool, active: bool):
    """d model(u) / d u (``size`` x ``len(names)``), one column per parameter: zero where the parameter's key
    does not start with one of ``prefixes`` (the model does not depend on it); ``exact`` True: forward-mode
    autograd, one pass per column (dual numbers, not ``torch.func``: the model reads its inputs' values to
    choose the states it keeps); False: forward differences in u (step 1e-6), for the fit's iterations and
    the identifiability analysis. ``active`` False (no runs): all zero."""
    import torch
    import torch.autograd.forward_ad as fwd

    from ._xp import make_dual

    if not names or not active:
        return np.zeros((size, len(names)))
    u = torch.as_tensor(u, dtype=torch.float64).detach()
    if not exact:
        with torch.no_grad():
            at = model(u).numpy()
    cols = []
    for i, name in enumerate(names):
        if not name.split(".", 1)[1].startswith(prefixes):
            cols.append(np.zeros(size))
            continue
        if not exact:
            step = torch.zeros_like(u)
            step[i] = 1e-6
            with torch.no_grad():
                cols.append((model(u + step).numpy() - at) / 1e-6)
            continue
        tangent = torch.zeros_like(u)
        tangent[i] = 1.0
        with fwd.dual_level():
            col = fwd.unpack_dual(model(make_dual(u, tangent))).tangent
        cols.append(np.zeros(size) if col is None else col.detach().numpy())
    return np.stack(cols, axis=1)


def _split_runs(runs: list) -> tuple[list[StripeRun], list[TaRun], list[LasingRun]]:
    stripe = [r for r in runs if isinstance(r, StripeRun)]
    ta = [r for r in runs if isinstance(r, TaRun)]
    lasing = [r for r in runs if isinstance(r, LasingRun)]
    other = [type(r).__name__ for r in runs if not isinstance(r, StripeRun | TaRun | LasingRun)]
    if other:
        raise CalibrationError(
            f"the calibration models StripeRun, TaRun and LasingRun data, not {', '.join(sorted(set(other)))}"
        )
    return stripe, ta, lasing


def predicted_counts(presets: PresetFile, runs: list[StripeRun | LasingRun]) -> dict[str, np.ndarray]:
    """The twin's mean integrated counts (counts) of every acquisition of ``runs`` (stripe and DFB lasing runs
    of one preset sample), by run uid (numpy): the calibration's model at the presets' values, photo-damage
    included."""
    import torch

    sample_id = _one_sample(runs)
    stripe_runs, ta_runs, lasing_runs = _split_runs(runs)
    if ta_runs:
        raise CalibrationError("predicted_counts models counts: pump-probe (TA) runs read d(alpha)/alpha0")
    data = _Data(stripe_runs)
    u0 = torch.zeros(0, dtype=torch.float64)
    mean, _ = _model(presets, sample_id, [], u0, data)
    lasing = _LasingData(lasing_runs)
    with torch.no_grad():
        lasing_mean, _ = lasing.model(presets, sample_id, [], u0)
    return {**data.per_run(mean.numpy()), **lasing.per_run(lasing_mean.numpy())}


# ----------------------------------------------------------------------------- identifiability
def _conditional_log_sd(fisher: np.ndarray, chosen: list[int], j: int) -> float:
    """sd of u_j from the data given free u_chosen: 1 / sqrt(Schur complement of F)."""
    f_jj = fisher[j, j]
    if chosen:
        f_sj = fisher[np.ix_(chosen, [j])]
        f_ss = fisher[np.ix_(chosen, chosen)]
        f_jj = f_jj - float((f_sj.T @ np.linalg.solve(f_ss, f_sj))[0, 0])
    return math.inf if f_jj <= 0 else 1.0 / math.sqrt(f_jj)


def _short(name: str) -> str:
    return name.split(".", 1)[1] if "." in name else name


def _why_not(names: list[str], fisher: np.ndarray, chosen: list[int], j: int, sd: float) -> str:
    """One line: why parameter j is not constrained (a combination with a chosen one, or too little data)."""
    key = _short(names[j])
    hint = _MEASURE_NEXT.get(key, "runs at other stripe lengths, fluences or dopings")
    if chosen:
        f_ss = fisher[np.ix_(chosen, chosen)]
        beta = np.linalg.solve(f_ss, fisher[np.ix_(chosen, [j])]).ravel()
        # how much of column j the chosen columns explain (1: fully degenerate)
        explained = float((fisher[np.ix_([j], chosen)] @ beta)[0]) / max(fisher[j, j], 1e-300)
        k = int(np.argmax(np.abs(beta)))
        if explained > 0.9 and abs(beta[k]) > 1e-6:
            partner = _short(names[chosen[k]])
            b = float(beta[k])
            if abs(b - 1.0) < 0.05:
                combo = "only their product is constrained"
            elif abs(b + 1.0) < 0.05:
                combo = f"only their ratio {partner}/{key} is constrained"
            else:
                combo = f"only the combination {partner} x {key}^{b:.2g} is constrained"
            return f"{key} and {partner}: {combo} by these runs ({key} held at its preset; to separate them: {hint})"
    pct = "inf" if not math.isfinite(sd) else f"{100 * sd:.0f} %"
    return f"{key}: these runs do not pin it down (+-{pct} from the data alone; held at its preset): measure {hint}"


def identifiable(
    presets: PresetFile, runs: list[StripeRun], candidates: list[str] | None = None
) -> tuple[list[str], list[str]]:
    """(the candidates these runs constrain, one line for each they do not), by the data's Fisher information
    in ln(value) at the preset values. ``candidates``: full dotted names (default: ``DEFAULT_CANDIDATES`` of
    the runs' sample)."""
    import torch

    sample_id = _one_sample(runs)
    stripe_runs, ta_runs, lasing_runs = _split_runs(runs)
    if candidates is None:
        candidates = [f"{sample_id}.{k}" for k in DEFAULT_CANDIDATES]
    u0 = torch.tensor(
        [math.log(max(get_parameter(presets, c), _bounds(c.split(".", 1)[1])[0])) for c in candidates],
        dtype=torch.float64,
    )
    fisher = np.zeros((len(candidates), len(candidates)))
    data = _Data(stripe_runs)
    n = data.counts.numel()
    if n:
        idx = np.unique(np.linspace(0, n - 1, min(n, _IDENT_MAX_POINTS)).round().astype(int))
        sub = data.subset(idx)
        with torch.no_grad():
            _, var = _model(presets, sample_id, candidates, u0, sub)
        jac = _jacobian(presets, sample_id, candidates, u0, sub, exact=False) / torch.sqrt(var)[:, None]
        fisher += (jac.T @ jac).numpy() * (n / len(idx))
    ta = _TaData(ta_runs, presets.noise.ta_noise_rms)
    if ta.size:
        jac_ta = ta.jacobian(presets, sample_id, candidates, u0, exact=False) / ta.sd[:, None]
        fisher += jac_ta.T @ jac_ta
    lasing = _LasingData(lasing_runs)
    if lasing.size:
        with torch.no_grad():
            _, var = lasing.model(presets, sample_id, candidates, u0)
        jac_l = lasing.jacobian(presets, sample_id, candidates, u0, exact=False) / np.sqrt(var.numpy())[:, None]
        fisher += jac_l.T @ jac_l
    chosen: list[int] = []
    lines = []
    for j, name in enumerate(candidates):
        lo, hi = _bounds(name.split(".", 1)[1])
        prior_sd = math.log(hi / lo) / 4.0
        sd = _conditional_log_sd(fisher, chosen, j)
        if sd < min(IDENTIFIED_MAX_LOG_SD, 0.5 * prior_sd):
            chosen.append(j)
        else:
            lines.append(_why_not(candidates, fisher, chosen, j, sd))
    return [candidates[j] for j in chosen], lines


def _one_sample(runs: list) -> str:
    if not runs:
        raise CalibrationError("no runs to calibrate on")
    samples = sorted({r.sample for r in runs})
    if len(samples) != 1:
        raise CalibrationError(
            f"the runs are of several preset samples ({', '.join(samples)}); calibrate one at a time"
        )
    return samples[0]


# ----------------------------------------------------------------------------- the fit
def calibrate(
    presets: PresetFile,
    runs: list[StripeRun | TaRun | LasingRun],
    params: list[str] | None = None,
    *,
    max_iterations: int = MAX_ITERATIONS,
) -> CalibrationResult:
    """MAP fit of ``params`` (full dotted names; default: those ``identifiable`` finds) to ``runs`` (stripe,
    pump-probe and DFB lasing runs of one preset sample).

    Returns the estimates with Laplace standard errors, their correlation, the fit quality and the
    calibrated presets (``with_parameters``: a dot parameter is set for its whole batch). A fit that does
    not converge in ``max_iterations`` is a ``CalibrationError``.
    """
    import torch

    sample_id = _one_sample(runs)
    flags: list[str] = []
    if params is None:
        names, flags = identifiable(presets, runs)
        if not names:
            raise CalibrationError(
                "these runs constrain none of the parameters; measure an ASE fluence scan through threshold "
                "and a VSL scan above it. " + " ".join(flags)
            )
    else:
        names = check_parameter_names(presets, sample_id, params)
    keys = [n.split(".", 1)[1] for n in names]
    bounds = np.array([_bounds(k) for k in keys])
    log_lo, log_hi = np.log(bounds[:, 0]), np.log(bounds[:, 1])
    preset_values = np.array([get_parameter(presets, n) for n in names])
    u0 = np.clip(np.log(np.maximum(preset_values, bounds[:, 0])), log_lo, log_hi)
    prior_sd = (log_hi - log_lo) / 4.0
    stripe_runs, ta_runs, lasing_runs = _split_runs(runs)
    data = _Data(stripe_runs)
    ta = _TaData(ta_runs, presets.noise.ta_noise_rms)
    lasing = _LasingData(lasing_runs)
    y = data.counts

    def ta_model(u_np: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return ta.model(presets, sample_id, names, torch.as_tensor(u_np, dtype=torch.float64)).numpy()

    def lasing_model(u_np: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mean, var = lasing.model(presets, sample_id, names, torch.as_tensor(u_np, dtype=torch.float64))
        return mean.numpy(), var.numpy()

    def lm(data: _Data, u: np.ndarray, *, warm_start: bool, floor: float = 0.0):
        """Levenberg-Marquardt from u on ``data``: (u, converged, iterations, r, mean, jac); ``warm_start``:
        stop early (to_go < ``_WARM_TO_GO``), with the cheap Jacobian only; ``floor``: a relative error added
        to the noise model (a smoother cost far from the optimum, where the counts' tiny errors make the
        Gauss-Newton model poor)."""
        y = data.counts

        def cost_at(u_np: np.ndarray):
            u_t = torch.as_tensor(u_np, dtype=torch.float64)
            mean, var = _model(presets, sample_id, names, u_t, data)
            var = var + (floor * mean) ** 2
            pred_ta = ta_model(u_np)
            pred_l, var_l = lasing_model(u_np)
            sd_l = np.sqrt(var_l + (floor * pred_l) ** 2)
            r = np.concatenate(
                [((y - mean) / torch.sqrt(var)).numpy(), (ta.signal - pred_ta) / ta.sd, (lasing.counts - pred_l) / sd_l]
            )
            rp = (u_np - u0) / prior_sd
            return (
                0.5 * (float(r @ r) + float(rp @ rp)),
                r,
                np.concatenate([mean.numpy(), pred_ta, pred_l]),
                (var, sd_l),
            )

        cost, r, mean, var = cost_at(u)
        lam = 1e-3
        exact = False  # the first iterations use the Jacobian at the mean fluence; the last ones the exact one
        jac = np.zeros((y.numel() + ta.size + lasing.size, len(names)))
        for it in range(1, max_iterations + 1):
            u_t = torch.as_tensor(u)
            var_s, sd_l = var
            jac = np.vstack(
                [
                    (_jacobian(presets, sample_id, names, u_t, data, exact=exact) / torch.sqrt(var_s)[:, None]).numpy(),
                    ta.jacobian(presets, sample_id, names, u_t, exact=exact) / ta.sd[:, None],
                    lasing.jacobian(presets, sample_id, names, u_t, exact=exact) / sd_l[:, None],
                ]
            )
            rp = (u - u0) / prior_sd
            h = jac.T @ jac + np.diag(1.0 / prior_sd**2)
            g = -jac.T @ r + rp / prior_sd  # gradient of the cost in u (r = (y - mu)/sd: d r/du = -jac)
            # the Gauss-Newton model's predicted decrease of -ln(posterior) still to be had
            at_bound = ((u <= log_lo + 1e-12) & (g > 0)) | ((u >= log_hi - 1e-12) & (g < 0))
            gf = np.where(at_bound, 0.0, g)
            to_go = 0.5 * float(gf @ np.linalg.solve(h, gf))
            if warm_start and to_go < _WARM_TO_GO:
                return u, True, it, r, mean, jac
            if exact and to_go < _CONVERGED_EXACT:
                return u, True, it, r, mean, jac
            if not exact and to_go < _CONVERGED:
                exact = True  # check (and finish) with the exact Jacobian, which the errors need anyway
                continue
            # parameters at a bound that the gradient pushes outward stay there (projected Gauss-Newton)
            free = ~(((u <= log_lo + 1e-12) & (g > 0)) | ((u >= log_hi - 1e-12) & (g < 0)))
            improved = False
            for _ in range(12):
                step = np.zeros_like(u)
                hf = h[np.ix_(free, free)]
                step[free] = np.linalg.solve(hf + lam * np.diag(np.diag(hf)), -g[free])
                # a trust region in ln(value): no parameter moves by more than a factor e^_MAX_LOG_STEP at once
                step *= min(1.0, _MAX_LOG_STEP / max(float(np.max(np.abs(step))), 1e-300))
                u_new = np.clip(u + step, log_lo, log_hi)
                cost_new, r_new, mean_new, var_new = cost_at(u_new)
                if cost_new <= cost:
                    improved = True
                    break
                lam *= 4.0
            if not improved:
                # no step lowers the cost: at the optimum as far as the arithmetic can tell, if little was to go
                if exact or warm_start:
                    return u, to_go < 1e-2 or warm_start, it, r, mean, jac
                exact = True
                continue
            u, cost, r, mean, var = u_new, cost_new, r_new, mean_new, var_new
            lam = max(lam / 3.0, 1e-7)
        return u, False, max_iterations, r, mean, jac

    u = u0.copy()
    iterations = 0
    n = y.numel()
    if n > 2 * _WARM_POINTS:  # the long way from the presets on a spread subset of the acquisitions
        idx = np.unique(np.linspace(0, n - 1, _WARM_POINTS).round().astype(int))
        warm = data.subset(idx)
    else:
        warm = data
    for floor in _WARM_FLOORS:  # continuation: from a coarse noise floor to the noise model itself
        u, _, it, *_ = lm(warm, u, warm_start=True, floor=floor)
        iterations += it
    u, converged, it, r, mean, jac = lm(data, u, warm_start=False)
    iterations += it
    if not converged:
        raise CalibrationError(
            f"the fit of {', '.join(_short(n) for n in names)} did not converge in {iterations} iterations "
            "(the runs may not constrain these parameters: fit fewer with --params, or add an ASE scan through "
            "threshold and a VSL scan above it); nothing was written"
        )
    # Laplace: the inverse Gauss-Newton Hessian of the negative log posterior at the MAP (exact Jacobian)
    fisher = jac.T @ jac
    cov = np.linalg.inv(fisher + np.diag(1.0 / prior_sd**2))
    sd_u = np.sqrt(np.diag(cov))
    corr = cov / np.outer(sd_u, sd_u)
    values = np.exp(u)
    estimates = []
    for i, name in enumerate(names):
        data_sd = _conditional_log_sd(fisher, [j for j in range(len(names)) if j != i], i)
        estimates.append(
            ParameterEstimate(
                name=name,
                value=float(values[i]),
                error=float(values[i] * sd_u[i]),
                preset=float(preset_values[i]),
                lo=float(PHYSICAL_RANGES[keys[i]].lo),
                hi=float(PHYSICAL_RANGES[keys[i]].hi),
                unit=unit_of(name),
                data_log_sd=float(data_sd),
            )
        )
        if not data_sd < IDENTIFIED_MAX_LOG_SD:
            flags.append(
                f"{_short(name)}: weakly constrained by these runs (+-{100 * min(data_sd, 99):.0f} % from the data "
                f"alone; the estimate leans on its prior): measure "
                f"{_MEASURE_NEXT.get(keys[i], 'runs at other stripe lengths, fluences or dopings')}"
            )
        if np.isclose(u[i], log_lo[i]) or np.isclose(u[i], log_hi[i]):
            flags.append(
                f"{_short(name)} = {values[i]:.4g} {unit_of(name)} is at the edge of its physical range "
                f"{PHYSICAL_RANGES[keys[i]].describe()}"
            )
    calibrated = with_parameters(presets, {n: float(v) for n, v in zip(names, values, strict=True)})
    chi2 = float(r @ r)
    ns = int(y.numel())
    at_preset = np.concatenate(
        [_model(presets, sample_id, names, torch.as_tensor(u0), data)[0].numpy(), ta_model(u0), lasing_model(u0)[0]]
    )

    def per_run(values: np.ndarray) -> dict[str, np.ndarray]:
        return {
            **data.per_run(values[:ns]),
            **ta.per_run(values[ns : ns + ta.size]),
            **lasing.per_run(values[ns + ta.size :]),
        }

    return CalibrationResult(
        sample=sample_id,
        estimates=estimates,
        correlation=corr,
        chi2=chi2,
        n_points=ns + ta.size + lasing.size,
        iterations=iterations,
        presets=calibrated,
        flags=flags,
        run_uids=[run.uid for run in runs],
        residuals=per_run(r),
        predicted=per_run(mean),
        predicted_preset=per_run(at_preset),
    )


def threshold_map_deviation(
    calibrated: PresetFile,
    truth: PresetFile,
    sample: str,
    stripe_range_um: tuple[float, float],
    doping_range: tuple[float, float],
    n: int = 12,
) -> float:
    """Largest relative difference of the twin's ASE threshold (uJ/cm^2) between two presets over a
    stripe length x doping grid (``n`` x ``n``, log in length); inf where only one of them reaches."""
    from .ase import ase_threshold_uJ_cm2

    lengths = np.geomspace(*stripe_range_um, n)
    dopings = np.linspace(*doping_range, n if doping_range[1] > doping_range[0] else 1)
    ll, dd = np.meshgrid(lengths, dopings)
    a = ase_threshold_uJ_cm2(ll, dd, calibrated.get(sample), calibrated.setup)
    b = ase_threshold_uJ_cm2(ll, dd, truth.get(sample), truth.setup)
    both = np.isfinite(a) & np.isfinite(b)
    if np.any(np.isfinite(a) != np.isfinite(b)):
        return math.inf
    return float(np.max(np.abs(a[both] / b[both] - 1.0))) if np.any(both) else 0.0
