"""Counts per second of the spectrometer's events: the quantity every emission analysis starts from.

The functions take the ``primary`` stream as columns (``{data key: array in event
order}``, as ``plans.registry`` passes them live and in replay).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["PEAK_HALF_WIDTH_PX", "counts_per_s", "input_output"]

#: Pixels on each side of the peak summed for a peak intensity.
PEAK_HALF_WIDTH_PX = 2


def counts_per_s(data: dict[str, np.ndarray], *, at_peak: bool = False) -> np.ndarray:
    """Per event: counts per second (integrated, or summed around the peak pixel); NaN where saturated.

    ``at_peak``: the counts of the ``PEAK_HALF_WIDTH_PX`` pixels on each side of the
    spectrum's maximum (the ASE peak, where a VSL fit reads the gain) instead of the
    spectrometer's integrated counts. An event whose spectrum is saturated, or whose
    rate is not finite (no exposure, no counts), gives NaN.
    """
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float)
    saturated = np.asarray(data["spectrometer_saturated"]).astype(bool)
    if at_peak:
        spectra = np.atleast_2d(np.asarray(data["spectrometer_spectrum"], dtype=float))
        counts = np.empty(spectra.shape[0])
        for k, spectrum in enumerate(spectra):
            if not np.any(np.isfinite(spectrum)):
                counts[k] = math.nan
                continue
            i = int(np.nanargmax(spectrum))
            lo, hi = max(i - PEAK_HALF_WIDTH_PX, 0), i + PEAK_HALF_WIDTH_PX + 1
            counts[k] = float(np.sum(spectrum[lo:hi]))
    else:
        counts = np.asarray(data["spectrometer_integrated"], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = counts / exposure
    return np.where(saturated | ~np.isfinite(rate), math.nan, rate)


def input_output(data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The input-output curve: measured fluence (uJ/cm^2, the power meter's readback ``pump_fluence``)
    and output (counts/s, ``counts_per_s``) of the usable events, those with both finite and above 0."""
    rate = counts_per_s(data)
    fluence = np.asarray(data["pump_fluence"], dtype=float)
    ok = np.isfinite(rate) & (rate > 0) & np.isfinite(fluence) & (fluence > 0)
    return fluence[ok], rate[ok]
