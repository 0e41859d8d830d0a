"""Polarisation of a laser's emission from an analyser scan (Malus's law with an offset).

Through an analyser at angle theta, partially polarised light gives::

    I(theta) = a cos^2(theta - theta0) + b,   a >= 0, b >= 0

(a: the polarised part, along theta0; b: the part passing at every angle). With
cos^2 u = (1 + cos 2u)/2 this is linear in three coefficients::

    I(theta) = c0 + c1 cos(2 theta) + c2 sin(2 theta),
    c0 = b + a/2,  a/2 = sqrt(c1^2 + c2^2),  theta0 = atan2(c2, c1)/2

so the least-squares fit is a linear one (no starting values, a unique minimum).
I_par = I(theta0) = c0 + a/2 and I_perp = I(theta0 + 90 deg) = c0 - a/2, hence the
polarisation ratio (I_par - I_perp)/(I_par + I_perp) = (a/2)/c0. Uncertainties come
from the fit's covariance: the residual variance times (X^T X)^-1, or the given
per-point standard deviations (``sigma``), propagated to first order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._thresholds import AnalysisError, finite_pair

__all__ = ["PolarizationFit", "polarization_ratio"]


@dataclass(frozen=True)
class PolarizationFit:
    """Result of a Malus-law fit. Angles in degrees, intensities in the input's units."""

    ratio: float
    ratio_err: float
    theta0_deg: float
    theta0_err_deg: float
    amplitude: float
    offset: float
    i_parallel: float
    i_perpendicular: float
    n_points: int

    def as_dict(self) -> dict[str, float]:
        """Flat dict (for JSON and event documents)."""
        return {
            "polarization_ratio": self.ratio,
            "polarization_ratio_err": self.ratio_err,
            "polarization_angle_deg": self.theta0_deg,
            "polarization_angle_err_deg": self.theta0_err_deg,
        }


def polarization_ratio(angles_deg, intensities, *, sigma=None) -> PolarizationFit:
    """Fit I(theta) = a cos^2(theta - theta0) + b to an analyser scan; ratio = (I_par - I_perp)/(I_par + I_perp).

    ``angles_deg``: analyser angles (degrees, any range); ``intensities``: readings
    (any unit, background-corrected); ``sigma``: optional standard deviations of the
    readings (same unit; scalar or per point). Without ``sigma`` the residual scatter
    sets the uncertainties. ``theta0_deg`` is in [-90, 90).
    """
    th, y = finite_pair(
        angles_deg,
        intensities,
        "angles ({0} values) and intensities ({1} values) differ in length",
        "polarisation scan contains NaN or inf; remove failed points before fitting",
    )
    two = np.deg2rad(2.0 * th)
    x = np.stack([np.ones_like(two), np.cos(two), np.sin(two)], axis=1)
    n = th.size
    if n < 4:
        raise AnalysisError(f"a polarisation fit needs at least 4 analyser angles, got {n}")
    if np.linalg.matrix_rank(x) < 3:
        raise AnalysisError(
            "the analyser angles do not determine cos^2: use at least three distinct angles modulo 180 deg "
            "(e.g. a scan over 0 to 180 deg)"
        )
    if sigma is not None:
        sd = np.broadcast_to(np.asarray(sigma, dtype=float), y.shape)
        if not np.all(np.isfinite(sd)) or np.any(sd <= 0):
            raise AnalysisError("sigma must be finite and positive")
        w = 1.0 / sd
    else:
        w = np.ones_like(y)
    xw = x * w[:, None]
    coef, *_ = np.linalg.lstsq(xw, y * w, rcond=None)
    c0, c1, c2 = (float(v) for v in coef)
    if c0 <= 0:
        raise AnalysisError(f"the mean intensity {c0:.4g} is not positive: is the background subtracted twice?")
    cov = np.linalg.inv(xw.T @ xw)
    if sigma is None:
        dof = n - 3
        resid = y - x @ coef
        cov = cov * (float(resid @ resid) / dof if dof > 0 else math.nan)
    half_a = math.hypot(c1, c2)
    ratio = half_a / c0
    if half_a > 0:
        grad_r = np.array([-ratio / c0, c1 / (half_a * c0), c2 / (half_a * c0)])
        # theta0 = atan2(c2, c1)/2
        grad_t = np.array([0.0, -c2, c1]) / (2.0 * half_a**2)
        ratio_err = math.sqrt(max(float(grad_r @ cov @ grad_r), 0.0))
        theta_err = math.degrees(math.sqrt(max(float(grad_t @ cov @ grad_t), 0.0)))
        theta0 = math.degrees(0.5 * math.atan2(c2, c1))
    else:
        ratio_err = math.sqrt(max(float(cov[1, 1] + cov[2, 2]) / 2.0, 0.0)) / c0
        theta_err, theta0 = 90.0, 0.0
    theta0 = (theta0 + 90.0) % 180.0 - 90.0
    return PolarizationFit(
        ratio=ratio,
        ratio_err=ratio_err,
        theta0_deg=theta0,
        theta0_err_deg=theta_err,
        amplitude=2.0 * half_a,
        offset=c0 - half_a,
        i_parallel=c0 + half_a,
        i_perpendicular=c0 - half_a,
        n_points=n,
    )
