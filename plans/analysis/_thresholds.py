"""Threshold of an input-output curve (ASE or lasing) from its kink.

The lab's method: on a log-log plot of integrated output versus pump fluence,
spontaneous emission rises with slope ~1, amplified emission rises steeply above
threshold and, at high fluence, gain saturation bends the curve back towards a
slope ~1. The threshold is the onset of the steep part.

``kink_threshold`` fits a continuous piecewise-linear model to (log F, log I):
two segments (below / above), or three (below / steep / saturated) when the data
reach saturation, chosen by the residual sum of squares with a penalty per extra
parameter (BIC). The threshold is the first breakpoint; its uncertainty comes from
the least-squares covariance of the breakpoint, inflated by the residual scatter.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from core.errors import GainloopError

__all__ = ["AnalysisError", "Crossing", "KinkFit", "kink_threshold", "kink_threshold_windowed", "level_crossing"]


class AnalysisError(GainloopError, ValueError):
    """Data that cannot be analysed (too few points, no kink, non-finite values)."""


def finite_pair(x, y, mismatch: str, not_finite: str, *, min_points: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``x`` and ``y`` as flat float arrays of one length, at least ``min_points`` long and all finite.

    Otherwise ``AnalysisError``: ``mismatch`` (formatted with the two sizes, ``{0}`` and ``{1}``)
    if the lengths differ or are too few, ``not_finite`` if a value is NaN or inf.
    """
    xs = np.asarray(x, dtype=float).ravel()
    ys = np.asarray(y, dtype=float).ravel()
    if xs.shape != ys.shape or xs.size < min_points:
        raise AnalysisError(mismatch.format(xs.size, ys.size))
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise AnalysisError(not_finite)
    return xs, ys


def first_where(mask, message: str) -> int:
    """Index of the first true element of ``mask``; ``AnalysisError(message)`` if none is true."""
    hits = np.nonzero(mask)[0]
    if hits.size == 0:
        raise AnalysisError(message)
    return int(hits[0])


@dataclass(frozen=True)
class KinkFit:
    """Result of a kink fit. Fluences in the units of the input (uJ/cm^2 for gainloop)."""

    threshold: float
    threshold_err: float
    slope_below: float
    slope_above: float
    n_segments: int
    n_points: int

    def as_dict(self, prefix: str = "threshold", unit: str = "uJ_cm2") -> dict[str, float]:
        """Flat dict with units in the keys (for JSON and event documents)."""
        return {
            f"{prefix}_{unit}": self.threshold,
            f"{prefix}_err_{unit}": self.threshold_err,
            "slope_below": self.slope_below,
            "slope_above": self.slope_above,
        }


def _design(x: np.ndarray, breaks: tuple[float, ...]) -> np.ndarray:
    cols = [np.ones_like(x), x]
    cols += [np.maximum(x - b, 0.0) for b in breaks]
    return np.stack(cols, axis=1)


def _hinge(x, *p):
    n_b = (len(p) - 2) // 2
    a, s = p[0], p[1]
    breaks = p[2 : 2 + n_b]
    dslopes = p[2 + n_b :]
    y = a + s * x
    for b, ds in zip(breaks, dslopes, strict=True):
        y = y + ds * np.maximum(x - b, 0.0)
    return y


def _best_breaks(x: np.ndarray, y: np.ndarray, n_breaks: int, min_pts: int):
    n = len(x)
    cand = 0.5 * (x[:-1] + x[1:])
    best = (math.inf, None, None)
    idx_range = range(min_pts - 1, n - min_pts)
    for combo in itertools.combinations(idx_range, n_breaks):
        if n_breaks == 2 and combo[1] - combo[0] < min_pts - 1:
            continue
        breaks = tuple(cand[i] for i in combo)
        a = _design(x, breaks)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        rss = float(np.sum((a @ coef - y) ** 2))
        if rss < best[0]:
            best = (rss, breaks, coef)
    return best


def kink_threshold(fluence, intensity, *, min_points_per_segment: int = 3) -> KinkFit:
    """Threshold fluence at the kink of a log-log input-output curve, with uncertainty.

    ``fluence``: pump fluences (> 0, e.g. uJ/cm^2); ``intensity``: integrated output
    (> 0, any unit). Non-positive or non-finite points are an error, not dropped.
    """
    f, i = finite_pair(
        fluence,
        intensity,
        "fluence ({0} points) and intensity ({1} points) differ in length",
        "input-output data contain NaN or inf; remove failed points before the kink fit",
    )
    if np.any(f <= 0) or np.any(i <= 0):
        raise AnalysisError("kink fit needs positive fluences and positive (background-corrected) intensities")
    m = min_points_per_segment
    if f.size < 2 * m:
        raise AnalysisError(f"kink fit needs at least {2 * m} points, got {f.size}")
    order = np.argsort(f)
    x = np.log10(f[order])
    y = np.log10(i[order])
    n = x.size

    fits = []
    for n_breaks in (1, 2):
        if n < (n_breaks + 1) * m:
            continue
        rss, breaks, coef = _best_breaks(x, y, n_breaks, m)
        if breaks is None:
            continue
        k = 2 + 2 * n_breaks
        bic = n * math.log(max(rss, 1e-300) / n) + k * math.log(n)
        fits.append((bic, n_breaks, breaks, coef))
    if not fits:
        raise AnalysisError("no kink could be fitted")
    one = next(t for t in fits if t[1] == 1)
    bic, n_breaks, breaks, coef = one
    two = [t for t in fits if t[1] == 2]
    if two:
        bic2, _, _, coef2 = two[0]
        steep, last = coef2[1] + coef2[2], coef2[1] + coef2[2] + coef2[3]
        # a saturation segment only when it clearly improves the fit and really bends back
        if bic2 < bic - 6.0 and coef2[2] > 0 and last < 0.5 * steep:
            bic, n_breaks, breaks, coef = two[0]

    p0 = [coef[0], coef[1], *breaks, *coef[2:]]
    lo = [-np.inf, -np.inf] + [x[0]] * n_breaks + [-np.inf] * n_breaks
    hi = [np.inf, np.inf] + [x[-1]] * n_breaks + [np.inf] * n_breaks
    try:
        popt, pcov = optimize.curve_fit(_hinge, x, y, p0=p0, bounds=(lo, hi), maxfev=20000)
    except (RuntimeError, ValueError):
        popt, pcov = np.asarray(p0), np.full((len(p0), len(p0)), np.nan)
    x0 = float(popt[2])
    slope_below = float(popt[1])
    slope_above = float(popt[1] + popt[2 + n_breaks])
    if slope_above <= slope_below:
        raise AnalysisError(
            f"no threshold kink: the output does not rise faster above the break "
            f"(slopes {slope_below:.2f} below, {slope_above:.2f} above)"
        )
    var = float(pcov[2, 2]) if np.all(np.isfinite(pcov)) else math.nan
    if not math.isfinite(var) or var <= 0:
        # breakpoint pinned to a grid/bound: half the local point spacing is the resolution
        j = int(np.clip(np.searchsorted(x, x0), 1, n - 1))
        sd_log = 0.5 * (x[j] - x[j - 1])
    else:
        sd_log = math.sqrt(var)
    # never claim better than a quarter of the local sampling step
    j = int(np.clip(np.searchsorted(x, x0), 1, n - 1))
    sd_log = max(sd_log, 0.25 * (x[j] - x[j - 1]) / math.sqrt(3.0))
    thr = 10.0**x0
    return KinkFit(
        threshold=thr,
        threshold_err=thr * math.log(10.0) * sd_log,
        slope_below=slope_below,
        slope_above=slope_above,
        n_segments=n_breaks + 1,
        n_points=n,
    )


@dataclass(frozen=True)
class Crossing:
    """Where a measured curve first crosses a level: x with its uncertainty."""

    x: float
    x_err: float


def level_crossing(x, y, level: float, *, y_err: float | None = None) -> Crossing:
    """First x at which y rises through ``level`` (linear interpolation between the bracketing points).

    Used for the TA gain threshold (|d(alpha)/alpha0| = 1). The uncertainty
    propagates the scatter of y (``y_err``, default: the rms of point-to-point
    second differences) through the local slope.
    """
    xs, ys = finite_pair(
        x, y, "level crossing needs matching x and y with at least 3 points", "data contain NaN or inf", min_points=3
    )
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    above = np.nonzero(ys >= level)[0]
    if above.size == 0 or above[0] == 0:
        raise AnalysisError(
            f"the data do not cross {level:g} from below within x = {xs[0]:g} to {xs[-1]:g}; extend the range"
        )
    j = int(above[0])
    x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
    slope = (y1 - y0) / (x1 - x0)
    xc = float(x0 + (level - y0) / slope)
    if y_err is None:
        y_err = float(np.sqrt(np.mean(np.diff(ys, 2) ** 2) / 6.0)) if ys.size >= 3 else 0.0
    err = math.hypot(y_err / abs(slope), (x1 - x0) / math.sqrt(12.0) * 0.1)
    return Crossing(x=xc, x_err=float(err))


#: Fit windows (in units of the first threshold estimate) whose refits bound the window systematic.
KINK_WINDOWS = ((0.0, 3.0), (1.0 / 3.0, math.inf), (0.0, 2.0), (0.5, 2.0))


def kink_threshold_windowed(fluence, intensity, *, min_points_per_segment: int = 3) -> KinkFit:
    """``kink_threshold`` with the fit-window systematic folded into its uncertainty.

    A smooth ASE onset has no unique kink: where a piecewise-linear fit puts the
    break depends on which fluences it sees. The fit is repeated on the windows of
    ``KINK_WINDOWS`` around the first estimate (those with enough points each
    side); the largest shift of the threshold is the systematic uncertainty,
    added in quadrature to the statistical one.
    """
    fit = kink_threshold(fluence, intensity, min_points_per_segment=min_points_per_segment)
    f = np.asarray(fluence, dtype=float).ravel()
    i = np.asarray(intensity, dtype=float).ravel()
    m = min_points_per_segment
    shifts = []
    for lo, hi in KINK_WINDOWS:
        keep = (f >= lo * fit.threshold) & (f <= hi * fit.threshold)
        below = int(np.sum(keep & (f < fit.threshold)))
        if below < m or int(np.sum(keep)) - below < m or np.array_equal(keep, np.ones_like(keep)):
            continue
        try:
            alt = kink_threshold(f[keep], i[keep], min_points_per_segment=m)
        except AnalysisError:
            continue
        shifts.append(abs(alt.threshold - fit.threshold))
    systematic = max(shifts, default=0.0)
    return KinkFit(
        threshold=fit.threshold,
        threshold_err=math.hypot(fit.threshold_err, systematic),
        slope_below=fit.slope_below,
        slope_above=fit.slope_above,
        n_segments=fit.n_segments,
        n_points=fit.n_points,
    )
