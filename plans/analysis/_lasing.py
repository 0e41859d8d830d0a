"""The analyses of a DFB laser's measurements: threshold, lasing line, polarisation (pure).

Each ``analyse_*`` takes the ``primary`` stream of a ``plans.lasing`` run as columns
and the run's ``plan_args`` and returns its results with uncertainties that hold
their systematics; ``plans.lasing`` explains what each measures and how.

``hinge_breakpoint`` locates the turn-on of an input-output curve on linear axes;
``fit_lorentzian_line`` fits a lasing line (a ``LorentzianLine``) to the pixels of a
spectrum around its maximum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ._counts import counts_per_s, input_output
from ._polarization import polarization_ratio
from ._thresholds import AnalysisError, finite_pair, kink_threshold

__all__ = [
    "LINE_HALF_WIDTHS_PX",
    "THRESHOLD_FIT_MIN_POINTS",
    "THRESHOLD_WINDOWS",
    "LorentzianLine",
    "analyse_lasing_spectrum",
    "analyse_lasing_threshold",
    "analyse_polarization_scan",
    "fit_lorentzian_line",
    "hinge_breakpoint",
]

#: Fit windows of the linear-axes threshold fit, in units of the log-log kink: the first is
#: the result, the spread over all of them the window systematic.
THRESHOLD_WINDOWS = ((0.7, 1.4), (0.7, 1.25), (0.7, 1.55), (0.85, 1.4), (0.55, 1.4))
#: Pixels on each side of the peak in the line fit: the first is the result, the others the
#: window systematic.
LINE_HALF_WIDTHS_PX = (6, 4, 10)
#: Fewest points in the window of a linear-axes threshold fit (``hinge_breakpoint``).
THRESHOLD_FIT_MIN_POINTS = 8


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


def hinge_breakpoint(fluence: np.ndarray, output: np.ndarray, guess: float) -> tuple[float, float]:
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
class LorentzianLine:
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


def fit_lorentzian_line(wavelength_nm, spectrum, half_width_px: int, *, integrate: bool = False) -> LorentzianLine:
    """Lorentzian line on a linear background, fitted to ``half_width_px`` pixels each side of the maximum.

    ``integrate``: the model integrates the line over each pixel (else it samples the line at
    the pixel centres, times the pixel width).
    """
    lam, y = finite_pair(
        wavelength_nm,
        spectrum,
        f"spectrum and wavelength axis must match, with more than {2 * half_width_px} pixels",
        "spectrum or wavelength axis contains NaN or inf",
        min_points=2 * half_width_px + 1,
    )
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
    return LorentzianLine(area * scale, x0, fwhm, errs[1], errs[2])


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


def analyse_lasing_threshold(data: dict[str, np.ndarray], plan_args: dict) -> dict[str, float]:
    """Lasing threshold (uJ/cm^2) from the input-output curve, with an uncertainty that holds its systematics.

    The log-log kink (``kink_onset_uJ_cm2``) locates the turn-on; the threshold is
    the breakpoint of a continuous linear-below / quadratic-above fit on linear axes
    in ``THRESHOLD_WINDOWS[0]`` x the onset. ``threshold_err_uJ_cm2``: the fit's
    standard error, the largest shift over the other windows and a quarter of the
    local fluence step / sqrt(3) (the floor ``kink_threshold`` uses), in quadrature
    (the floor as a minimum).
    """
    fluence, output = input_output(data)
    onset = kink_threshold(fluence, output)
    values = []
    for lo, hi in THRESHOLD_WINDOWS:
        m = (fluence >= lo * onset.threshold) & (fluence <= hi * onset.threshold)
        if np.count_nonzero(m) < THRESHOLD_FIT_MIN_POINTS:
            values.append(None)
            continue
        try:
            values.append(hinge_breakpoint(fluence[m], output[m], onset.threshold))
        except AnalysisError:
            if not values:
                raise
            values.append(None)
    if values[0] is None:
        lo, hi = THRESHOLD_WINDOWS[0]
        raise AnalysisError(
            f"the threshold fit needs at least {THRESHOLD_FIT_MIN_POINTS} points between {lo:g} and {hi:g} x the "
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
    fits = [fit_lorentzian_line(lam, y, central) for lam, y in spectra]
    centre = float(np.mean([f.centre_nm for f in fits]))
    fwhm = float(np.mean([f.fwhm_nm for f in fits]))
    n = len(fits)

    def stat(values, errors):
        fit_err = math.sqrt(float(np.mean(np.square(errors))) / n)
        return max(float(np.std(values, ddof=1)) / math.sqrt(n), fit_err) if n > 1 else fit_err

    centre_stat = stat([f.centre_nm for f in fits], [f.centre_err_nm for f in fits])
    fwhm_stat = stat([f.fwhm_nm for f in fits], [f.fwhm_err_nm for f in fits])
    alt = [[fit_lorentzian_line(lam, y, h) for lam, y in spectra] for h in others]
    centre_win = _spread([float(np.mean([f.centre_nm for f in a])) for a in alt], centre)
    fwhm_win = _spread([float(np.mean([f.fwhm_nm for f in a])) for a in alt], fwhm)
    box = [fit_lorentzian_line(lam, y, central, integrate=True) for lam, y in spectra]
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
            line = fit_lorentzian_line(axes[k], counts[k] / exposure[k], LINE_HALF_WIDTHS_PX[0])
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
