"""Peak position, width and shifts of spectra on a wavelength axis."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._thresholds import AnalysisError, finite_pair

__all__ = ["HC_EV_NM", "SpectralPeak", "peak_shift_meV", "spectral_peak"]

#: Planck constant x speed of light, eV nm.
HC_EV_NM = 1239.841984


@dataclass(frozen=True)
class SpectralPeak:
    """Peak wavelength (nm, sub-pixel), full width at half maximum (nm) and peak height."""

    wavelength_nm: float
    fwhm_nm: float
    height: float

    @property
    def energy_meV(self) -> float:
        return HC_EV_NM / self.wavelength_nm * 1e3


def _half_crossing(x, y, i0, i1, half):
    # linear interpolation between samples i0 and i1 where y crosses half
    y0, y1 = y[i0], y[i1]
    if y1 == y0:
        return x[i0]
    return x[i0] + (half - y0) * (x[i1] - x[i0]) / (y1 - y0)


def spectral_peak(wavelength_nm, spectrum, *, baseline: float | None = None) -> SpectralPeak:
    """Highest peak of a spectrum: sub-pixel position (parabola through the top three pixels) and FWHM.

    ``baseline`` (same units as the spectrum) is subtracted before the half
    maximum is taken; by default the median of the outer 10 % of pixels.
    """
    x, y = finite_pair(
        wavelength_nm,
        spectrum,
        "spectrum and axis must have the same length (>= 5 pixels)",
        "spectrum contains NaN or inf",
        min_points=5,
    )
    if baseline is None:
        k = max(x.size // 20, 1)
        baseline = float(np.median(np.concatenate([y[:k], y[-k:]])))
    y = y - baseline
    i = int(np.argmax(y))
    if y[i] <= 0:
        raise AnalysisError("spectrum has no peak above its baseline")
    if 0 < i < x.size - 1:
        ym, y0, yp = y[i - 1], y[i], y[i + 1]
        denom = ym - 2 * y0 + yp
        delta = 0.5 * (ym - yp) / denom if denom != 0 else 0.0
        delta = float(np.clip(delta, -0.5, 0.5))
        step = 0.5 * (x[i + 1] - x[i - 1])
        centre = x[i] + delta * step
        height = y0 - 0.25 * (ym - yp) * delta
    else:
        centre, height = x[i], y[i]
    half = 0.5 * height
    left = i
    while left > 0 and y[left] > half:
        left -= 1
    right = i
    while right < x.size - 1 and y[right] > half:
        right += 1
    if y[left] > half or y[right] > half:
        raise AnalysisError("peak is cut by the edge of the spectrometer axis; cannot measure its FWHM")
    x_left = _half_crossing(x, y, left, left + 1, half)
    x_right = _half_crossing(x, y, right - 1, right, half)
    return SpectralPeak(wavelength_nm=float(centre), fwhm_nm=float(abs(x_right - x_left)), height=float(height))


def peak_shift_meV(reference_nm: float, shifted_nm: float) -> float:
    """Red shift (meV, positive to longer wavelength) of a peak relative to a reference peak."""
    if not (math.isfinite(reference_nm) and math.isfinite(shifted_nm)) or min(reference_nm, shifted_nm) <= 0:
        raise AnalysisError("peak wavelengths must be positive numbers of nm")
    return (HC_EV_NM / reference_nm - HC_EV_NM / shifted_nm) * 1e3
