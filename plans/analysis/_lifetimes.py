"""Lifetimes from transient-absorption (TA) traces: exponential fits, biexciton Auger and gain lifetime.

These are the lab's analyses of measured pump-probe traces (delays in ps after the
pump, t = 0 at pump arrival); the twin's simulated traces go through the same code.

* ``fit_exponential``: y = A exp(-(t - t_start)/tau) + C by least squares; tau with its
  1-sigma uncertainty from the fit covariance (scaled by the residual scatter unless
  the noise ``sigma`` is given).
* ``biexciton_lifetime``: the standard TA subtraction. A low-pump trace (<N> << 1,
  single excitons only) is scaled to the high-pump trace at late delays, where the
  multiexcitons have decayed, and subtracted; what remains is the multiexciton part
  of the high-pump signal. A single exponential (with a free offset, which absorbs a
  residual biexciton population in the normalisation window) fitted to it from a
  start delay that skips the faster tri- and higher-exciton decays gives tau_XX.
* ``gain_lifetime``: how long the sample has net gain, alpha0 + d(alpha) < 0, i.e. the
  first delay at which alpha/alpha0 returns from negative to >= 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import optimize

from ._thresholds import AnalysisError, finite_pair, first_where

__all__ = [
    "BiexcitonFit",
    "ExponentialFit",
    "GainLifetime",
    "biexciton_lifetime",
    "fit_exponential",
    "gain_lifetime",
]


def _xy(t_ps, y, what: str, min_points: int) -> tuple[np.ndarray, np.ndarray]:
    t, v = finite_pair(
        t_ps,
        y,
        what + ": delays ({0} points) and signal ({1} points) differ in length",
        f"{what}: data contain NaN or inf; remove failed points first",
    )
    if t.size < min_points:
        raise AnalysisError(f"{what} needs at least {min_points} points, got {t.size}")
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    if np.any(np.diff(t) == 0):
        raise AnalysisError(f"{what}: delays must be distinct (average repeated scans first)")
    return t, v


# ----------------------------------------------------------------------------- exponential fit


@dataclass(frozen=True)
class _Lifetime:
    """A lifetime ``tau_ps`` with its 1-sigma uncertainty ``tau_err_ps`` (ps), reported as ``{NAME}_ps``
    and ``{NAME}_err_ps`` (``NAME``: the class's, or the ``prefix`` given)."""

    NAME: ClassVar[str] = "tau"

    tau_ps: float
    tau_err_ps: float

    def as_dict(self, prefix: str | None = None) -> dict[str, float]:
        name = self.NAME if prefix is None else prefix
        return {f"{name}_ps": self.tau_ps, f"{name}_err_ps": self.tau_err_ps}


@dataclass(frozen=True)
class ExponentialFit(_Lifetime):
    """y = amplitude exp(-(t - t_start_ps)/tau_ps) + offset, fitted over t_start_ps..t_stop_ps.

    ``amplitude`` is the fitted signal above ``offset`` at the first fitted delay
    ``t_start_ps``; errors are 1-sigma; ``residual_rms`` is in the units of y.
    """

    amplitude: float
    amplitude_err: float
    offset: float
    offset_err: float
    t_start_ps: float
    t_stop_ps: float
    n_points: int
    residual_rms: float

    def __call__(self, t_ps) -> np.ndarray:
        """The fitted curve at delays ``t_ps``."""
        t = np.asarray(t_ps, dtype=float)
        return self.amplitude * np.exp(-(t - self.t_start_ps) / self.tau_ps) + self.offset


def _initial_guess(t: np.ndarray, y: np.ndarray, offset: bool) -> tuple[float, float, float]:
    n_tail = max(3, t.size // 10)
    c0 = float(np.mean(y[-n_tail:])) if offset else 0.0
    a0 = float(np.mean(y[: min(3, t.size)])) - c0
    span = float(t[-1] - t[0])
    tau0 = span / 3.0
    if a0 != 0.0:
        ratio = (y - c0) / a0
        ok = (ratio > 0.05) & (ratio <= 1.5)
        if np.count_nonzero(ok) >= 3:
            slope = np.polyfit(t[ok] - t[0], np.log(ratio[ok]), 1)[0]
            if slope < 0:
                tau0 = -1.0 / slope
    tau0 = float(np.clip(tau0, span / 200.0, span * 20.0))
    return a0 if a0 != 0.0 else float(np.ptp(y)) or 1.0, tau0, c0


def fit_exponential(t_ps, y, *, offset: bool = True, sigma=None) -> ExponentialFit:
    """Fit y(t) = A exp(-(t - t[0])/tau) + C (C = 0 with ``offset=False``) to a decay.

    ``t_ps``: delays (ps); ``y``: signal (any unit, either sign); ``sigma``: 1-sigma noise of
    y (scalar or per point, same unit). Without ``sigma`` the covariance is scaled by the
    residual scatter (the noise is estimated from the fit). ``tau_err_ps`` is the
    1-sigma uncertainty of tau from the covariance. Raises ``AnalysisError`` if the data
    do not decay (tau not determined).
    """
    t, v = _xy(t_ps, y, "exponential fit", 4 if offset else 3)
    t0 = float(t[0])
    span = float(t[-1] - t0)
    a0, tau0, c0 = _initial_guess(t, v, offset)
    if sigma is not None:
        s = np.broadcast_to(np.asarray(sigma, dtype=float), np.shape(y)).ravel()
        s = s[np.argsort(np.asarray(t_ps, dtype=float).ravel(), kind="stable")]
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise AnalysisError("sigma (noise of y) must be finite and > 0")
    else:
        s = None
    # log(tau) keeps tau positive; bounds keep it within what the delays can resolve.
    log_lo, log_hi = math.log(span / 1e4), math.log(span * 1e3)

    def model(tt, amp, log_tau, c=0.0):
        return amp * np.exp(-(tt - t0) * math.exp(-log_tau)) + c

    p0 = [a0, math.log(tau0)] + ([c0] if offset else [])
    big = np.inf
    lower = [-big, log_lo] + ([-big] if offset else [])
    upper = [big, log_hi] + ([big] if offset else [])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", optimize.OptimizeWarning)
            popt, pcov = optimize.curve_fit(
                model, t, v, p0=p0, sigma=s, absolute_sigma=s is not None, bounds=(lower, upper), maxfev=20000
            )
    except (RuntimeError, ValueError, optimize.OptimizeWarning) as exc:
        raise AnalysisError(f"exponential fit failed ({exc}); check that the data decay") from None
    if not np.all(np.isfinite(pcov)):
        raise AnalysisError("exponential fit: the lifetime is not determined by these data")
    tau = math.exp(popt[1])
    if min(abs(popt[1] - log_lo), abs(popt[1] - log_hi)) < 1e-6:
        raise AnalysisError(
            f"exponential fit: tau ran to the limit of what delays {t0:g} to {t[-1]:g} ps can resolve; "
            "the data do not show a decay in this window"
        )
    if (t[1] - t0) > 3.0 * tau:
        raise AnalysisError(
            f"exponential fit: tau = {tau:.3g} ps is shorter than the first delay step ({t[1] - t0:g} ps) "
            "can resolve; the decay is in one point (a spike), not in the data"
        )
    err = np.sqrt(np.clip(np.diag(pcov), 0.0, None))
    if not abs(popt[0]) > 2.0 * err[0]:
        raise AnalysisError(
            f"exponential fit: no significant decay (amplitude {popt[0]:.3g} +- {err[0]:.2g}); "
            "the data are flat within their noise"
        )
    resid = v - model(t, *popt)
    return ExponentialFit(
        tau_ps=tau,
        tau_err_ps=tau * float(err[1]),
        amplitude=float(popt[0]),
        amplitude_err=float(err[0]),
        offset=float(popt[2]) if offset else 0.0,
        offset_err=float(err[2]) if offset else 0.0,
        t_start_ps=t0,
        t_stop_ps=float(t[-1]),
        n_points=int(t.size),
        residual_rms=float(np.sqrt(np.mean(resid**2))),
    )


# ----------------------------------------------------------------------------- biexciton lifetime


@dataclass(frozen=True)
class BiexcitonFit(_Lifetime):
    """Biexciton Auger lifetime from high- minus scaled low-pump TA traces (1-sigma errors).

    ``scale``: factor applied to the low-pump trace (fitted over delays >=
    ``normalize_from_ps``); ``fit``: the exponential fitted to the difference from
    ``fit_from_ps``.
    """

    NAME: ClassVar[str] = "tau_xx"

    scale: float
    normalize_from_ps: float
    fit_from_ps: float
    fit: ExponentialFit


def biexciton_lifetime(
    t_ps,
    trace_high,
    trace_low,
    *,
    normalize_from_ps: float | None = None,
    fit_from_ps: float | None = None,
    sigma: float | None = None,
) -> BiexcitonFit:
    """Biexciton Auger lifetime tau_XX (ps) from a high- and a low-pump TA trace on the same delays.

    ``trace_high``/``trace_low``: the band-edge bleach, e.g. d(alpha)/alpha0 or dT/T (same
    unit and sign convention for both), at a pump creating a few biexcitons (<N> ~ 0.5-1)
    and at a weak pump (<N> ~ 0.1, single excitons), measured out to delays of several
    tau_XX (e.g. 3 ns).

    * ``normalize_from_ps`` (default: 2/3 of the last delay): the low trace is scaled to the
      high one by least squares over delays >= this;
    * ``fit_from_ps`` (default: the first delay at which the difference, measured from its
      level in the normalisation window, has fallen to 1/e of its early value, the mean of
      the first three delays >= 0): start of the single-exponential fit (with free offset)
      to the difference; late enough that tri- and higher excitons (tau_3 < tau_XX/3) are gone.
    * ``sigma``: 1-sigma noise of each trace (scalar, the unit of the traces), if known;
      otherwise the noise is estimated from the fit residuals.

    Raises ``AnalysisError`` when the windows hold too few delays or the high trace shows no
    multiexciton excess over the scaled low trace (more than 5x its noise).
    """
    t, high = _xy(t_ps, trace_high, "biexciton lifetime (high-pump trace)", 8)
    _, low = _xy(t_ps, trace_low, "biexciton lifetime (low-pump trace)", 8)
    t_last = float(t[-1])
    norm_from = 2.0 * t_last / 3.0 if normalize_from_ps is None else float(normalize_from_ps)
    late = t >= norm_from
    if np.count_nonzero(late) < 3:
        raise AnalysisError(
            f"normalisation window t >= {norm_from:g} ps holds fewer than 3 delays (last delay {t_last:g} ps)"
        )
    ll = float(np.dot(low[late], low[late]))
    if ll == 0.0:
        raise AnalysisError("the low-pump trace is zero in the normalisation window; it cannot be scaled")
    scale = float(np.dot(high[late], low[late]) / ll)
    diff = high - scale * low
    after = t >= 0.0
    if np.count_nonzero(after) < 8:
        raise AnalysisError("biexciton lifetime needs at least 8 delays >= 0 ps")
    d_after = diff[after]
    d0 = float(np.mean(d_after[:3]))
    tail = float(np.mean(diff[late]))
    noise = _noise_from_second_differences(t, diff)
    if not abs(d0 - tail) > max(5.0 * noise, 1e-3 * float(np.max(np.abs(high)))):
        raise AnalysisError(
            "the high-pump trace shows no multiexciton decay above the scaled low-pump trace "
            f"(early excess {d0 - tail:.3g}, noise {noise:.2g}); raise the high pump or check the traces"
        )
    if fit_from_ps is None:
        rel = (d_after - tail) / (d0 - tail)
        below = np.nonzero(rel <= math.exp(-1.0))[0]
        if below.size == 0:
            raise AnalysisError(
                "the multiexciton signal does not fall to 1/e within the delays; extend the delay range"
            )
        fit_from = float(t[after][below[0]])
    else:
        fit_from = float(fit_from_ps)
    window = t >= fit_from
    if np.count_nonzero(window) < 6:
        raise AnalysisError(f"fit window t >= {fit_from:g} ps holds fewer than 6 delays; start the fit earlier")
    s = None
    if sigma is not None:
        if np.ndim(sigma) != 0 or not math.isfinite(float(sigma)) or float(sigma) <= 0:
            raise AnalysisError(f"sigma must be one finite noise level > 0 for both traces, got {sigma!r}")
        s = float(sigma) * math.sqrt(1.0 + scale**2)  # noise of high - scale * low
    fit = fit_exponential(t[window], diff[window], offset=True, sigma=s)
    return BiexcitonFit(
        tau_ps=fit.tau_ps,
        tau_err_ps=fit.tau_err_ps,
        scale=scale,
        normalize_from_ps=norm_from,
        fit_from_ps=fit_from,
        fit=fit,
    )


# ----------------------------------------------------------------------------- gain lifetime


@dataclass(frozen=True)
class GainLifetime(_Lifetime):
    """Net-gain lifetime (ps after time zero) with its 1-sigma uncertainty.

    ``noise``: the 1-sigma scatter of alpha/alpha0 used (given or estimated);
    ``n_points``: delays used to place the zero crossing.
    """

    NAME: ClassVar[str] = "tau_gain"

    noise: float
    n_points: int


def _noise_from_second_differences(t: np.ndarray, y: np.ndarray) -> float:
    """Robust 1-sigma point scatter: MAD of the second differences (a smooth trace's are ~0)."""
    if y.size < 5:
        return 0.0
    d2 = y[2:] - 2.0 * y[1:-1] + y[:-2]
    return float(1.4826 * np.median(np.abs(d2 - np.median(d2))) / math.sqrt(6.0))


def _line_fit(t: np.ndarray, y: np.ndarray, noise: float) -> tuple[float, float, float, float]:
    """Least-squares line through (t, y): its zero with the 1-sigma error from ``noise``, slope, slope error."""
    tc = float(np.mean(t))
    x = t - tc
    sxx = float(np.dot(x, x))
    slope = float(np.dot(x, y) / sxx)
    icept = float(np.mean(y))
    if slope == 0.0:
        return math.nan, math.inf, 0.0, noise / math.sqrt(sxx)
    root = tc - icept / slope
    # centred x: var(icept) = noise^2/n and var(slope) = noise^2/sxx are uncorrelated
    var = noise**2 * (1.0 / t.size + (root - tc) ** 2 / sxx) / slope**2
    return root, math.sqrt(var), slope, noise / math.sqrt(sxx)


def _quadratic_root(t: np.ndarray, y: np.ndarray, noise: float, guess: float) -> tuple[float, float, float]:
    """Zero of a least-squares parabola through (t, y) near ``guess``: root, its 1-sigma error, slope there.

    The parabola removes the bias a straight line has on a curved trace over a wide window.
    """
    tc, half = float(np.mean(t)), float(np.ptp(t)) / 2.0
    x = (t - tc) / half
    design = np.stack([np.ones_like(x), x, x * x], axis=1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    c0, c1, c2 = (float(c) for c in coef)
    u = (guess - tc) / half
    for _ in range(50):
        du = (c0 + c1 * u + c2 * u * u) / (c1 + 2.0 * c2 * u)
        u -= du
        if abs(du) < 1e-13:
            break
    slope_u = c1 + 2.0 * c2 * u
    cov = noise**2 * np.linalg.inv(design.T @ design)
    grad = -np.array([1.0, u, u * u]) / slope_u
    err_u = math.sqrt(max(float(grad @ cov @ grad), 0.0))
    return tc + u * half, err_u * half, slope_u / half


def _refine_crossing(t: np.ndarray, a: np.ndarray, onset: int, j: int, noise: float):
    """Zero crossing of a noisy trace from a curve fitted about the first raw crossing (index j).

    A window of points about j grows until its straight-line slope is significant
    (> 5 sigma); then the window is set to +-3 noise/slope about the zero (where noise can
    flip the sign), with at least three points on either side, and a parabola is fitted
    to it (twice, re-centring). None if no window has a significant rising slope.
    """
    n = t.size
    k = 2
    while True:
        lo, hi = max(j - k, onset), min(j + k, n)
        if hi - lo >= 3:
            root, err, slope, slope_err = _line_fit(t[lo:hi], a[lo:hi], noise)
            if slope > 5.0 * slope_err and t[lo] <= root <= t[hi - 1]:
                break
        if lo == onset and hi == n:
            return None
        k *= 2
    n_used = hi - lo
    for _ in range(2):
        half = 3.0 * noise / slope
        i_root = int(np.searchsorted(t, root))
        lo = max(min(int(np.searchsorted(t, root - half, "left")), i_root - 3), onset)
        hi = min(max(int(np.searchsorted(t, root + half, "right")), i_root + 3), n)
        if hi - lo < 6:
            break
        r, r_err, s_fit = _quadratic_root(t[lo:hi], a[lo:hi], noise, root)
        if not (s_fit > 0 and t[lo] <= r <= t[hi - 1] and math.isfinite(r_err)):
            break
        root, err, slope, n_used = r, r_err, s_fit, hi - lo
    return root, err, n_used


def gain_lifetime(t_ps, alpha_over_alpha0, *, noise: float | None = None, time_zero_ps: float = 0.0) -> GainLifetime:
    """Net-gain lifetime: time from ``time_zero_ps`` (pump arrival) to the first delay at which the
    band-edge absorption alpha/alpha0 returns from negative (net gain) to >= 0.

    ``alpha_over_alpha0``: alpha0 + d(alpha), normalised to alpha0, at the gain peak (dimensionless;
    negative = gain); the delays may include negative ones (before the pump). The crossing is
    placed by linear interpolation between the bracketing delays and then, since noise makes
    the trace flicker about zero near the crossing and would end the gain early, by a
    parabola fitted to the delays within +-3 noise/slope of it (at least three on either side).
    ``noise``: 1-sigma scatter of the trace (default: estimated from its second differences).
    ``tau_err_ps`` combines the noise (through the fitted slope) and the sampling step
    (step/sqrt(12)) in quadrature. Raises ``AnalysisError`` if the trace never shows gain or
    the gain outlasts the last delay.
    """
    t, a = _xy(t_ps, alpha_over_alpha0, "gain lifetime", 3)
    if noise is not None and (not math.isfinite(noise) or noise < 0):
        raise AnalysisError(f"noise must be a finite 1-sigma scatter >= 0, got {noise!r}")
    sd = _noise_from_second_differences(t, a) if noise is None else float(noise)
    onset = first_where(
        a < 0.0,
        f"the trace never shows net gain: alpha/alpha0 >= 0 at every delay (minimum {float(np.min(a)):.3g}); "
        "raise the pump above the gain threshold",
    )
    j = onset + first_where(
        a[onset:] >= 0.0, f"net gain persists to the last delay ({t[-1]:g} ps); extend the delay range to see it end"
    )
    t0, t1, y0, y1 = t[j - 1], t[j], a[j - 1], a[j]
    root = float(t0 - y0 * (t1 - t0) / (y1 - y0))
    step = float(t1 - t0)
    noise_err, n_used = 0.0, 2
    if sd > 0.0:
        refined = _refine_crossing(t, a, onset, j, sd)
        if refined is not None:
            root, noise_err, n_used = refined
    tau = root - time_zero_ps
    if tau <= 0:
        raise AnalysisError(f"the gain ends at {root:g} ps, before time zero {time_zero_ps:g} ps")
    return GainLifetime(
        tau_ps=float(tau),
        tau_err_ps=float(math.hypot(noise_err, step / math.sqrt(12.0))),
        noise=sd,
        n_points=n_used,
    )
