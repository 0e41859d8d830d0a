"""Lasing measurements of a DFB device as Bluesky plans: threshold, spectrum and polarisation.

Each plan follows ``plans.measurements``: it takes a ``devices.Bench`` (EPICS or
the in-process twin), checks its arguments before anything moves (a DFB device
from the bench's library, fluences within the bench limit), measures, analyses
its own ``primary`` stream with its ``analyse_*`` function (pure; the same one a
replay calls on the stored stream, see ``plans.registry``) and records the
result in an ``analysis`` stream. ``plans._common.measurement`` adds the standard
metadata (plan name and arguments, sample id and doping, twin or bench, units,
hints), checks every fluence sent and closes the shutter at the end.

The pump spot on a DFB is uniform (no stripe), so the slit is not moved. The
analyser stays in front of the spectrometer; the threshold and spectrum plans set
it parallel to the lasing polarisation (0 deg) unless told otherwise, and every
event records its angle. The spectra plans read the spectrometer's wavelength
axis (a configuration signal) into every event, so a replay has it next to the
counts.

How each quantity is measured, and what its uncertainty holds:

``lasing_threshold``
    Integrated output (counts/s) versus the power meter's fluence: a coarse log
    sweep, then a linear sweep around the kink. The kink of the log-log curve
    (``plans.analysis.kink_threshold``) locates the turn-on (``kink_onset_uJ_cm2``);
    the threshold is the breakpoint of a continuous fit on linear axes around it
    (spontaneous emission linear below, the lasing output rising above with a
    curvature term for gain saturation) - the intercept of the above-threshold
    output with the spontaneous line, the classic L-L threshold, at which the
    round-trip gain equals the loss. Its uncertainty: the fit's covariance
    (scaled by the residuals), the spread of the breakpoint over five fit windows
    (systematic), and no less than a quarter of the local fluence step / sqrt(3).
    (The log-log onset sits a few per cent below: the lasing output only clears
    the spontaneous emission once the device already lases.)

``lasing_spectrum``
    Repeated spectra at one fluence. A Lorentzian on a linear background is
    fitted to the pixels around the highest peak of each unsaturated spectrum:
    the centre is the lasing wavelength, the FWHM the linewidth (as measured: the
    spectrometer's response beyond its pixels is not deconvolved, so on a bench
    whose slit function is wider than a pixel the width is an upper bound). The
    line is about one pixel wide, so how the pixels record it matters; the fit is
    made with the line sampled at the pixel centres, and again integrated over
    each pixel: the difference is the instrument systematic. Uncertainty: the
    statistical error of the mean over spectra (or of the fit), the fit-window
    systematic (+-2 and +4 pixels) and the instrument systematic, in quadrature.

``polarization_scan``
    Integrated output (counts/s) versus analyser angle at one fluence (the angles
    forward, then back: a linear drift of the pump cancels), fitted with
    Malus's law plus an unpolarised part (``plans.analysis.polarization_ratio``):
    ratio (I_par - I_perp)/(I_par + I_perp) of everything collected (line and PL
    background), as the paper defines it. Uncertainty: the fit's, and the
    instrument systematic of the lasing line's counts (its area if the pixels
    integrate it instead of sampling it at their centres), in quadrature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

import bluesky.plan_stubs as bps
import numpy as np
from scipy import optimize

from devices import check_angle, check_exposure
from plans._common import PrimaryData, acquire, analysis_event, counts_per_s, measurement, mount
from plans.analysis import AnalysisError, kink_threshold, polarization_ratio
from plans.safety import check_fluence

__all__ = [
    "DEFAULT_ANALYSER_ANGLES_DEG",
    "analyse_lasing_spectrum",
    "analyse_lasing_threshold",
    "analyse_polarization_scan",
    "lasing_spectrum",
    "lasing_threshold",
    "polarization_scan",
]

#: Analyser angles of a polarisation scan by default (deg): 0 to 170 in steps of 10.
DEFAULT_ANALYSER_ANGLES_DEG = tuple(float(a) for a in range(0, 180, 10))

#: Fit windows of the linear-axes threshold fit, in units of the log-log kink: the first is
#: the result, the spread over all of them the window systematic.
THRESHOLD_WINDOWS = ((0.7, 1.4), (0.7, 1.25), (0.7, 1.55), (0.85, 1.4), (0.55, 1.4))
#: The sweeps of ``lasing_threshold`` after the coarse one, in units of the kink located so far: a
#: geometric one bracketing the coarse kink, then a linear one over the fit windows.
BRACKET_SWEEP = (0.5, 2.0)
FINE_SWEEP = (0.55, 1.6)
#: Pixels on each side of the peak in the line fit: the first is the result, the others the
#: window systematic.
LINE_HALF_WIDTHS_PX = (6, 4, 10)

_POINTS_PER_HINGE_FIT = 8


# ---------------------------------------------------------------------------------------------
# argument checks


def _require_dfb(bench, sample_id: str, plan_name: str) -> None:
    """A ``ValueError`` unless ``sample_id`` is a DFB device of the bench's library."""
    entry = bench.config.library_entry(sample_id)  # BenchConfigError (a ValueError) naming the library
    if entry.kind != "dfb":
        dfbs = [e.id for e in bench.config.stage.library if e.kind == "dfb"]
        raise ValueError(
            f"{plan_name} measures a DFB laser, but {sample_id!r} is a {entry.kind}; "
            f"DFB devices on this bench: {', '.join(dfbs) or 'none'}"
        )


def _positive_fluence(value, limit: float, what: str = "fluence") -> float:
    f = check_fluence(value, limit)
    if f <= 0:
        raise ValueError(f"{what} must be above 0 uJ/cm^2 (the pump must be on); allowed: up to {limit:g} uJ/cm^2")
    return f


def _check_exposure(exposure_s, bench) -> float:
    check_exposure(exposure_s, bench.config)
    return float(exposure_s)


def _check_angle(angle_deg, bench) -> float:
    check_angle(angle_deg, bench.config)
    return float(angle_deg)


class _AsEventData:
    """A configuration signal read as event data (its own root, so ``trigger_and_read`` keeps it)."""

    def __init__(self, signal):
        self._signal = signal
        self.name = signal.name
        self.parent = None

    def read(self):
        return self._signal.read()

    def describe(self):
        return self._signal.describe()


# ---------------------------------------------------------------------------------------------
# analysis helpers (pure)


def _input_output(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Measured fluence (uJ/cm^2, power-meter readback) and output (counts/s) of the usable events."""
    rate = counts_per_s(data)
    fluence = np.asarray(data["pump_fluence"], dtype=float)
    ok = np.isfinite(rate) & (rate > 0) & np.isfinite(fluence) & (fluence > 0)
    return fluence[ok], rate[ok]


def _covariance(res) -> np.ndarray:
    """Parameter covariance of a ``least_squares`` result, scaled by the residual variance."""
    jac = np.asarray(res.jac, dtype=float)
    dof = jac.shape[0] - jac.shape[1]
    if dof <= 0:
        return np.full((jac.shape[1],) * 2, math.nan)
    s2 = float(res.fun @ res.fun) / dof
    return np.linalg.pinv(jac.T @ jac) * s2


def _hinge(x, p):
    a, b, x0, c, e = p
    u = np.maximum(x - x0, 0.0)
    return a + b * x + u * (c + e * u)


def _hinge_breakpoint(fluence: np.ndarray, output: np.ndarray, guess: float) -> tuple[float, float]:
    """Breakpoint (uJ/cm^2) and its standard error of a continuous fit: linear below, quadratic above."""
    x = fluence / guess
    y = output / float(np.max(output))
    below = x <= 1.0
    if np.count_nonzero(below) >= 2:
        b0, a0 = np.polyfit(x[below], y[below], 1)
    else:
        a0, b0 = float(y.min()), 0.0
    above = x > 1.0
    c0 = float(np.polyfit(x[above], y[above], 1)[0]) - b0 if np.count_nonzero(above) >= 2 else 1.0
    if not np.ptp(x) > 0:
        raise AnalysisError("the threshold fit needs points at more than one fluence")
    lo = [-np.inf, -np.inf, float(x.min()), -np.inf, -np.inf]
    hi = [np.inf, np.inf, float(x.max()), np.inf, np.inf]
    p0 = [a0, b0, float(np.clip(1.0, x.min(), x.max())), c0, 0.0]
    res = optimize.least_squares(lambda p: _hinge(x, p) - y, p0, bounds=(lo, hi), x_scale="jac", method="trf")
    if not res.success:
        raise AnalysisError(f"the threshold fit did not converge: {res.message}")
    if res.x[3] <= 0:
        raise AnalysisError("no lasing turn-on: the output does not rise faster above the kink than below it")
    n_below = int(np.count_nonzero(x < res.x[2]))
    if min(n_below, x.size - n_below) < 3:
        raise AnalysisError(
            f"the lasing turn-on at {res.x[2] * guess:.4g} uJ/cm^2 is not inside the fitted points "
            f"({x.min() * guess:.4g} to {x.max() * guess:.4g} uJ/cm^2, {n_below} below it)"
        )
    var = float(_covariance(res)[2, 2])
    return float(res.x[2]) * guess, (math.sqrt(var) if math.isfinite(var) and var > 0 else 0.0) * guess


@dataclass(frozen=True)
class _Line:
    """A Lorentzian line fitted to a spectrum: area (units of the spectrum x pixels), centre and FWHM (nm)."""

    area: float
    centre_nm: float
    fwhm_nm: float
    centre_err_nm: float
    fwhm_err_nm: float

    def density(self, wavelength_nm):
        """The line's spectral density (per nm) at the given wavelengths."""
        g = 0.5 * self.fwhm_nm
        return self.area * (g / math.pi) / ((np.asarray(wavelength_nm) - self.centre_nm) ** 2 + g**2)

    def sampled_sum(self, wavelength_nm) -> float:
        """What the line adds to the sum over the pixels if they sample it at their centres."""
        return float(np.sum(self.density(wavelength_nm) * _pixel_widths(wavelength_nm)))

    def integrated_sum(self, wavelength_nm) -> float:
        """What the line adds to the sum over the pixels if they integrate it over their widths."""
        lam = np.asarray(wavelength_nm, dtype=float)
        w = _pixel_widths(lam)
        g = 0.5 * self.fwhm_nm
        hi = np.arctan((lam[-1] + 0.5 * w[-1] - self.centre_nm) / g)
        lo = np.arctan((lam[0] - 0.5 * w[0] - self.centre_nm) / g)
        return self.area * float(hi - lo) / math.pi


def _pixel_widths(wavelength_nm) -> np.ndarray:
    return np.abs(np.gradient(np.asarray(wavelength_nm, dtype=float)))


def _fit_line(wavelength_nm, spectrum, half_width_px: int, *, integrate: bool = False) -> _Line:
    """Lorentzian line on a linear background, fitted to ``half_width_px`` pixels each side of the maximum.

    ``integrate``: the model integrates the line over each pixel (else it samples the line at
    the pixel centres, times the pixel width).
    """
    lam = np.asarray(wavelength_nm, dtype=float).ravel()
    y = np.asarray(spectrum, dtype=float).ravel()
    if lam.shape != y.shape or lam.size < 2 * half_width_px + 1:
        raise AnalysisError(f"spectrum and wavelength axis must match, with more than {2 * half_width_px} pixels")
    if not (np.all(np.isfinite(lam)) and np.all(np.isfinite(y))):
        raise AnalysisError("spectrum or wavelength axis contains NaN or inf")
    i = int(np.argmax(y))
    if i < half_width_px or i > lam.size - 1 - half_width_px:
        raise AnalysisError(
            f"the spectrum's peak at {lam[i]:.2f} nm is within {half_width_px} pixels of the edge of the axis "
            f"({lam[0]:.1f}-{lam[-1]:.1f} nm); cannot fit the line"
        )
    x = lam[i - half_width_px : i + half_width_px + 1]
    yy = y[i - half_width_px : i + half_width_px + 1]
    w = _pixel_widths(lam)[i - half_width_px : i + half_width_px + 1]
    step = float(np.mean(w))
    span = float(abs(x[-1] - x[0]))
    scale = float(np.max(np.abs(yy))) or 1.0
    yn = yy / scale
    xc = float(lam[i])

    def model(p):
        area, x0, fwhm, b0, b1 = p
        g = 0.5 * fwhm
        if integrate:
            line = (np.arctan((x + 0.5 * w - x0) / g) - np.arctan((x - 0.5 * w - x0) / g)) / math.pi
        else:
            line = w * (g / math.pi) / ((x - x0) ** 2 + g**2)
        return area * line + b0 + b1 * (x - xc) / step

    base = float(min(yn[0], yn[-1]))
    p0 = [max(float(np.sum(yn - base)), 1e-9), xc, step, base, 0.0]
    lo = [0.0, float(min(x[0], x[-1])), 1e-3 * step, -np.inf, -np.inf]
    hi = [np.inf, float(max(x[0], x[-1])), span, np.inf, np.inf]
    res = optimize.least_squares(lambda p: model(p) - yn, p0, bounds=(lo, hi), x_scale="jac", method="trf")
    area, x0, fwhm = (float(v) for v in res.x[:3])
    if not res.success or area <= 0 or fwhm >= 0.5 * span:
        raise AnalysisError(
            f"no narrow line around {xc:.2f} nm: the fitted width {fwhm:.3g} nm is not well inside the "
            f"{span:.3g} nm fit window (is the fluence above the lasing threshold?)"
        )
    cov = _covariance(res)
    errs = [math.sqrt(v) if math.isfinite(v) and v > 0 else 0.0 for v in np.diag(cov)[:3]]
    return _Line(area * scale, x0, fwhm, errs[1], errs[2])


def _spectra(data: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(wavelength axis, counts/s per pixel) of every unsaturated event with finite counts."""
    counts = np.atleast_2d(np.asarray(data["spectrometer_spectrum"], dtype=float))
    axes = np.atleast_2d(np.asarray(data["spectrometer_wavelength"], dtype=float))
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float)
    saturated = np.asarray(data["spectrometer_saturated"]).astype(bool)
    out = []
    for k in range(counts.shape[0]):
        if saturated[k] or not (exposure[k] > 0) or not np.all(np.isfinite(counts[k])):
            continue
        out.append((axes[k], counts[k] / exposure[k]))
    return out


def _spread(values: list[float], reference: float) -> float:
    return max((abs(v - reference) for v in values), default=0.0)


# ---------------------------------------------------------------------------------------------
# analyses


def analyse_lasing_threshold(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Lasing threshold (uJ/cm^2) from the input-output curve, with an uncertainty that holds its systematics.

    The log-log kink (``kink_onset_uJ_cm2``) locates the turn-on; the threshold is
    the breakpoint of a continuous linear-below / quadratic-above fit on linear axes
    in ``THRESHOLD_WINDOWS[0]`` x the onset. ``threshold_err_uJ_cm2``: the fit's
    standard error, the largest shift over the other windows and a quarter of the
    local fluence step / sqrt(3) (the floor ``kink_threshold`` uses), in quadrature
    (the floor as a minimum).
    """
    fluence, output = _input_output(data)
    onset = kink_threshold(fluence, output)
    values = []
    for lo, hi in THRESHOLD_WINDOWS:
        m = (fluence >= lo * onset.threshold) & (fluence <= hi * onset.threshold)
        if np.count_nonzero(m) < _POINTS_PER_HINGE_FIT:
            values.append(None)
            continue
        try:
            values.append(_hinge_breakpoint(fluence[m], output[m], onset.threshold))
        except AnalysisError:
            if not values:
                raise
            values.append(None)
    if values[0] is None:
        lo, hi = THRESHOLD_WINDOWS[0]
        raise AnalysisError(
            f"the threshold fit needs at least {_POINTS_PER_HINGE_FIT} points between {lo:g} and {hi:g} x the "
            f"kink at {onset.threshold:.4g} uJ/cm^2; measure more points around it"
        )
    threshold, stat = values[0]
    window = _spread([v[0] for v in values[1:] if v is not None], threshold)
    f_sorted = np.sort(fluence)
    j = int(np.clip(np.searchsorted(f_sorted, threshold), 1, f_sorted.size - 1))
    floor = 0.25 * float(f_sorted[j] - f_sorted[j - 1]) / math.sqrt(3.0)
    err = max(math.hypot(stat, window), floor)
    return {
        "threshold_uJ_cm2": threshold,
        "threshold_err_uJ_cm2": err,
        "kink_onset_uJ_cm2": onset.threshold,
        "kink_onset_err_uJ_cm2": onset.threshold_err,
    }


def analyse_lasing_spectrum(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Lasing wavelength and linewidth (FWHM), nm, each with an uncertainty holding its systematics.

    Also ``fluence_uJ_cm2``: the mean measured fluence of the spectra (the linewidth
    depends on it).
    """
    spectra = _spectra(data)
    if not spectra:
        raise AnalysisError("no unsaturated spectrum to analyse")
    central, *others = LINE_HALF_WIDTHS_PX
    fits = [_fit_line(lam, y, central) for lam, y in spectra]
    centre = float(np.mean([f.centre_nm for f in fits]))
    fwhm = float(np.mean([f.fwhm_nm for f in fits]))
    n = len(fits)

    def stat(values, errors):
        fit_err = math.sqrt(float(np.mean(np.square(errors))) / n)
        return max(float(np.std(values, ddof=1)) / math.sqrt(n), fit_err) if n > 1 else fit_err

    centre_stat = stat([f.centre_nm for f in fits], [f.centre_err_nm for f in fits])
    fwhm_stat = stat([f.fwhm_nm for f in fits], [f.fwhm_err_nm for f in fits])
    alt = [[_fit_line(lam, y, h) for lam, y in spectra] for h in others]
    centre_win = _spread([float(np.mean([f.centre_nm for f in a])) for a in alt], centre)
    fwhm_win = _spread([float(np.mean([f.fwhm_nm for f in a])) for a in alt], fwhm)
    box = [_fit_line(lam, y, central, integrate=True) for lam, y in spectra]
    centre_inst = abs(float(np.mean([f.centre_nm for f in box])) - centre)
    fwhm_inst = abs(float(np.mean([f.fwhm_nm for f in box])) - fwhm)
    usable = ~np.asarray(data["spectrometer_saturated"]).astype(bool)
    fluence = np.asarray(data["pump_fluence"], dtype=float)[usable]
    return {
        "wavelength_nm": centre,
        "wavelength_err_nm": math.sqrt(centre_stat**2 + centre_win**2 + centre_inst**2),
        "linewidth_nm": fwhm,
        "linewidth_err_nm": math.sqrt(fwhm_stat**2 + fwhm_win**2 + fwhm_inst**2),
        "fluence_uJ_cm2": float(np.mean(fluence)) if fluence.size else math.nan,
    }


def analyse_polarization_scan(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Polarisation ratio (I_par - I_perp)/(I_par + I_perp) and the polarisation's angle (deg), with uncertainties.

    Also ``fluence_uJ_cm2``: the mean measured fluence (the ratio depends on it
    through the share of unpolarised PL).
    """
    rate = counts_per_s(data)
    angle = np.asarray(data["polarizer_angle"], dtype=float)
    fluence = np.asarray(data["pump_fluence"], dtype=float)
    ok = np.isfinite(rate) & np.isfinite(angle)
    fit = polarization_ratio(angle[ok], rate[ok])
    # the line's counts if the pixels integrated it rather than sampled it: the instrument systematic
    counts = np.atleast_2d(np.asarray(data["spectrometer_spectrum"], dtype=float))[ok]
    axes = np.atleast_2d(np.asarray(data["spectrometer_wavelength"], dtype=float))[ok]
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float)[ok]
    corrected = rate[ok].copy()
    for k in range(corrected.size):
        try:
            line = _fit_line(axes[k], counts[k] / exposure[k], LINE_HALF_WIDTHS_PX[0])
        except AnalysisError as exc:
            raise AnalysisError(
                f"at analyser angle {angle[ok][k]:g} deg: {exc}; the polarisation of lasing needs a lasing line"
            ) from None
        corrected[k] += line.integrated_sum(axes[k]) - line.sampled_sum(axes[k])
    instrument = abs(polarization_ratio(angle[ok], corrected).ratio - fit.ratio)
    out = fit.as_dict()
    out["polarization_ratio_err"] = math.hypot(fit.ratio_err, instrument)
    out["fluence_uJ_cm2"] = float(np.mean(fluence[ok]))
    return out


# ---------------------------------------------------------------------------------------------
# plans


def lasing_threshold(
    bench,
    sample_id: str,
    *,
    fluence_min_uJ_cm2: float = 10.0,
    fluence_max_uJ_cm2: float | None = None,
    n_coarse: int = 12,
    n_fine: int = 20,
    exposure_s: float = 3.0,
    analyser_angle_deg: float = 0.0,
    md: dict | None = None,
):
    """Lasing threshold of a DFB device from its input-output curve.

    A coarse log sweep from ``fluence_min_uJ_cm2`` to ``fluence_max_uJ_cm2`` (default:
    the bench limit) locates the kink; ``n_fine // 2`` points over ``BRACKET_SWEEP`` x
    that kink (geometric) refine it, and ``n_fine`` points spaced linearly over
    ``FINE_SWEEP`` x the refined kink follow. Returns ``{"uid", "threshold_uJ_cm2",
    "threshold_err_uJ_cm2", "kink_onset_uJ_cm2", "kink_onset_err_uJ_cm2"}``
    (``analyse_lasing_threshold``), also recorded in the run's ``analysis`` stream.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    _require_dfb(bench, sample_id, "lasing_threshold")
    f_hi = limit if fluence_max_uJ_cm2 is None else fluence_max_uJ_cm2
    f_lo = _positive_fluence(fluence_min_uJ_cm2, limit, "fluence_min_uJ_cm2")
    f_hi = _positive_fluence(f_hi, limit, "fluence_max_uJ_cm2")
    if not f_hi > f_lo:
        raise ValueError(f"fluence range must satisfy 0 < min < max <= {limit:g} uJ/cm^2, got {f_lo:g}..{f_hi:g}")
    if n_coarse < 6 or n_fine < _POINTS_PER_HINGE_FIT:
        raise ValueError(
            f"lasing_threshold needs n_coarse >= 6 (to find the kink) and n_fine >= {_POINTS_PER_HINGE_FIT} "
            f"(to fit the threshold), got {n_coarse} and {n_fine}"
        )
    exposure_s = _check_exposure(exposure_s, bench)
    angle = _check_angle(analyser_angle_deg, bench)
    plan_args = {
        "sample_id": sample_id,
        "fluence_min_uJ_cm2": f_lo,
        "fluence_max_uJ_cm2": f_hi,
        "n_coarse": int(n_coarse),
        "n_fine": int(n_fine),
        "exposure_s": exposure_s,
        "analyser_angle_deg": angle,
    }

    def inner(results):
        yield from mount(bench, sample_id)
        yield from bps.mv(bench.polarizer.angle, angle)
        yield from bps.mv(bench.pump.fluence, f_lo)
        yield from bps.mv(bench.pump.shutter, 1)
        primary = PrimaryData()

        def measure(f):
            yield from bps.mv(bench.pump.fluence, float(f))
            yield from acquire(bench, exposure_s, primary, extra=[bench.polarizer])

        def kink():
            try:
                return kink_threshold(*_input_output(primary.arrays())).threshold
            except AnalysisError:
                return None

        for f in np.geomspace(f_lo, f_hi, n_coarse):
            yield from measure(f)
        # the coarse kink is good to about one coarse step: bracket it, then zoom in linearly
        for (lo, hi), n, space in (
            (BRACKET_SWEEP, max(n_fine // 2, 6), np.geomspace),
            (FINE_SWEEP, n_fine, np.linspace),
        ):
            located = kink()
            if located is None:
                break
            for f in space(max(lo * located, f_lo), min(hi * located, f_hi), n):
                yield from measure(f)
        results.update(analyse_lasing_threshold(primary.arrays(), plan_args))
        yield from analysis_event(results)

    return (yield from measurement(bench, "lasing_threshold", plan_args, bench.pump.fluence, md, inner))


def lasing_spectrum(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    n_spectra: int = 3,
    exposure_s: float = 3.0,
    analyser_angle_deg: float = 0.0,
    md: dict | None = None,
):
    """Lasing wavelength and linewidth of a DFB device at one fluence, from ``n_spectra`` spectra.

    Returns ``{"uid", "wavelength_nm", "wavelength_err_nm", "linewidth_nm",
    "linewidth_err_nm", "fluence_uJ_cm2"}`` (``analyse_lasing_spectrum``), also
    recorded in the run's ``analysis`` stream.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    _require_dfb(bench, sample_id, "lasing_spectrum")
    fluence = _positive_fluence(fluence_uJ_cm2, limit, "fluence_uJ_cm2")
    if not (isinstance(n_spectra, int | np.integer) and n_spectra >= 1):
        raise ValueError(f"lasing_spectrum needs n_spectra >= 1 (a whole number), got {n_spectra!r}")
    exposure_s = _check_exposure(exposure_s, bench)
    angle = _check_angle(analyser_angle_deg, bench)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence,
        "n_spectra": int(n_spectra),
        "exposure_s": exposure_s,
        "analyser_angle_deg": angle,
    }
    axis = _AsEventData(bench.spectrometer.wavelength)

    def inner(results):
        yield from mount(bench, sample_id)
        yield from bps.mv(bench.polarizer.angle, angle)
        yield from bps.mv(bench.pump.fluence, fluence)
        yield from bps.mv(bench.pump.shutter, 1)
        primary = PrimaryData()
        for _ in range(n_spectra):
            yield from acquire(bench, exposure_s, primary, extra=[bench.polarizer, axis])
        results.update(analyse_lasing_spectrum(primary.arrays(), plan_args))
        yield from analysis_event(results)

    time_axis = SimpleNamespace(name="time")  # repeated spectra: plotted against time, as bluesky's count
    return (yield from measurement(bench, "lasing_spectrum", plan_args, time_axis, md, inner))


def polarization_scan(
    bench,
    sample_id: str,
    *,
    fluence_uJ_cm2: float,
    angles_deg=DEFAULT_ANALYSER_ANGLES_DEG,
    exposure_s: float = 3.0,
    md: dict | None = None,
):
    """Polarisation ratio of a DFB laser's emission from an analyser scan at one fluence.

    Every angle is measured twice, going through ``angles_deg`` and back, so that a
    slow drift of the pump cancels in the fit (and its remainder shows in the
    residuals the uncertainty is scaled by).

    Returns ``{"uid", "polarization_ratio", "polarization_ratio_err",
    "polarization_angle_deg", "polarization_angle_err_deg", "fluence_uJ_cm2"}``
    (``analyse_polarization_scan``), also recorded in the run's ``analysis`` stream.
    """
    limit = bench.config.bench.fluence_limit_uJ_cm2
    _require_dfb(bench, sample_id, "polarization_scan")
    fluence = _positive_fluence(fluence_uJ_cm2, limit, "fluence_uJ_cm2")
    angles = [_check_angle(a, bench) for a in angles_deg]
    distinct = {round(a % 180.0, 6) for a in angles}
    if len(angles) < 4 or len(distinct) < 3:
        raise ValueError(
            f"polarization_scan needs at least 4 analyser angles, 3 of them distinct modulo 180 deg "
            f"(e.g. 0 to 170 in steps of 10), got {angles}"
        )
    exposure_s = _check_exposure(exposure_s, bench)
    plan_args = {
        "sample_id": sample_id,
        "fluence_uJ_cm2": fluence,
        "angles_deg": angles,
        "exposure_s": exposure_s,
    }
    axis = _AsEventData(bench.spectrometer.wavelength)

    def inner(results):
        yield from mount(bench, sample_id)
        yield from bps.mv(bench.polarizer.angle, angles[0])
        yield from bps.mv(bench.pump.fluence, fluence)
        yield from bps.mv(bench.pump.shutter, 1)
        primary = PrimaryData()
        for a in [*angles, *reversed(angles)]:
            yield from bps.mv(bench.polarizer.angle, a)
            yield from acquire(bench, exposure_s, primary, extra=[bench.polarizer, axis])
        results.update(analyse_polarization_scan(primary.arrays(), plan_args))
        yield from analysis_event(results)

    return (yield from measurement(bench, "polarization_scan", plan_args, bench.polarizer, md, inner))
