"""Net modal gain from a variable-stripe-length (VSL) series.

The VSL law for a uniformly pumped stripe, I(l) = A (exp(g l) - 1) + B l, holds only
while the amplified emission does not saturate the gain; past g l ~ 6-8 the
measured intensity grows more slowly and a fit over all points reads g low.
``vsl_gain`` therefore fits growing windows of the shortest stripes and keeps the
longest window whose fitted g l_max stays at or below ``max_gain_length`` (and
whose fit is acceptable), reporting g in 1/cm with its 1-sigma uncertainty. The
term B l (B >= 0) is the spontaneous emission collected without amplification
(scattered out of the film); it is linear in the stripe length and would
otherwise be read as gain. ``background=False`` fits the plain Shaklee law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ._thresholds import AnalysisError, finite_pair

__all__ = ["Plateau", "VslFit", "plateau_level", "vsl_gain"]


@dataclass(frozen=True)
class VslFit:
    """VSL fit: net modal gain (1/cm) with uncertainty, amplitude, and the window used."""

    gain_per_cm: float
    gain_err_per_cm: float
    amplitude: float
    max_stripe_um: float
    n_points: int

    def as_dict(self) -> dict[str, float]:
        return {
            "gnet_per_cm": self.gain_per_cm,
            "gnet_err_per_cm": self.gain_err_per_cm,
            "vsl_max_stripe_um": self.max_stripe_um,
        }


def _model(l_cm, amplitude, g_per_cm, background=0.0):
    return amplitude * np.expm1(g_per_cm * l_cm) + background * l_cm


def _fit(l_cm: np.ndarray, y: np.ndarray, with_background: bool):
    # start: g from the last two points of the window, A from the first
    g0 = max(math.log(max(y[-1], 1e-300) / max(y[-2], 1e-300)) / max(l_cm[-1] - l_cm[-2], 1e-12), 1.0)
    a0 = y[0] / max(math.expm1(g0 * l_cm[0]), 1e-12)
    p0 = [a0, g0] + ([0.1 * y[0] / l_cm[0]] if with_background else [])
    lower = [0.0, 0.0] + ([0.0] if with_background else [])
    upper = [np.inf, np.inf] + ([np.inf] if with_background else [])
    sigma = np.sqrt(np.maximum(y, 1e-12 * y.max())) + 1e-3 * y.max()
    return optimize.curve_fit(_model, l_cm, y, p0=p0, sigma=sigma, bounds=(lower, upper), maxfev=20000)


def vsl_gain(
    stripe_length_um, intensity, *, max_gain_length: float = 6.0, min_points: int = 5, background: bool = True
) -> VslFit:
    """Net modal gain g_net (1/cm) from integrated intensities at several stripe lengths (um)."""
    length, y = finite_pair(
        stripe_length_um,
        intensity,
        "stripe lengths and intensities differ in length",
        "VSL data contain NaN or inf; remove failed points first",
    )
    if np.any(length <= 0):
        raise AnalysisError("stripe lengths must be positive (um)")
    if length.size < min_points:
        raise AnalysisError(f"VSL fit needs at least {min_points} stripe lengths, got {length.size}")
    order = np.argsort(length)
    l_cm = length[order] * 1e-4
    y = y[order]
    best = None
    for n in range(min_points, length.size + 1):
        try:
            popt, pcov = _fit(l_cm[:n], y[:n], background)
        except (RuntimeError, ValueError):
            continue
        amp, g = popt[0], popt[1]
        if not (np.all(np.isfinite(pcov)) and amp > 0 and g > 0):
            continue
        if g * l_cm[n - 1] > max_gain_length:
            break
        resid = y[:n] - _model(l_cm[:n], *popt)
        good = np.sqrt(np.mean(resid**2)) <= 0.15 * np.mean(np.abs(y[:n]))
        significant = g > 2.0 * math.sqrt(max(pcov[1, 1], 0.0)) and g * l_cm[n - 1] >= 1.0
        if good and significant:
            best = (popt, pcov, n)
    if best is None:
        raise AnalysisError(
            "no unsaturated exponential growth found: the VSL curve does not rise as A(exp(g l) - 1) "
            f"below g l = {max_gain_length}; use shorter stripes or a lower fluence"
        )
    popt, pcov, n = best
    amp, g = popt[0], popt[1]
    return VslFit(
        gain_per_cm=float(g),
        gain_err_per_cm=float(math.sqrt(pcov[1, 1])),
        amplitude=float(amp),
        max_stripe_um=float(l_cm[n - 1] * 1e4),
        n_points=n,
    )


@dataclass(frozen=True)
class Plateau:
    """Saturation level of a rising curve: mean of its plateau points, with the standard error."""

    level: float
    level_err: float
    start_x: float
    n_points: int


def plateau_level(x, y, *, max_relative_step: float = 0.10, min_points: int = 2) -> Plateau:
    """Level at which y(x) saturates: the mean of the highest-x run of points in which
    each step to the next x changes y by less than ``max_relative_step``.

    Used for the saturation of g_net(F) measured by VSL at several fluences.
    """
    xs = np.asarray(x, dtype=float).ravel()
    ys = np.asarray(y, dtype=float).ravel()
    if xs.shape != ys.shape or xs.size < min_points + 1:
        raise AnalysisError(f"plateau needs matching x and y with at least {min_points + 1} points")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
        raise AnalysisError("data contain NaN or inf")
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    start = xs.size - 1
    while start > 0 and abs(ys[start] - ys[start - 1]) <= max_relative_step * abs(ys[start]):
        start -= 1
    n = xs.size - start
    if n < min_points:
        raise AnalysisError(
            f"no plateau: the last points still change by more than {max_relative_step:.0%} per step; "
            "measure at higher x"
        )
    pts = ys[start:]
    err = float(np.std(pts, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return Plateau(level=float(np.mean(pts)), level_err=err, start_x=float(xs[start]), n_points=int(n))
