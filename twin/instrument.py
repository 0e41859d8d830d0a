"""Noisy acquisitions from the twin, as the bench's instruments would return them.

These functions turn the noiseless model into what a detector reads: pulse
jitter averaged over the exposure's pulses, the pump's slow drift at the given
lab time, shot/read/dark noise of the line camera. They are pure functions of
their inputs and an explicit ``numpy.random.Generator`` (seeded by the caller),
so every simulated measurement is reproducible. The simulated devices in
``sim/`` and the paper-reproduction measurements both use them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .noise import NoiseParams, PumpDrift, detector_counts, jitter_nodes
from .presets import Sample, SetupParams
from .spectra import SPECTROMETER_AXIS_NM, emission_spectrum, energy_bin_widths_meV

__all__ = ["SpectrumAcquisition", "acquire_stripe_spectrum", "pulses_in"]


@dataclass(frozen=True)
class SpectrumAcquisition:
    """One spectrometer read: axis (nm), dark-subtracted counts per pixel and flags."""

    wavelength_nm: np.ndarray
    counts: np.ndarray
    saturated: bool
    exposure_s: float
    fluence_uJ_cm2: float

    @property
    def integrated_counts(self) -> float:
        """Sum of the counts over the axis (the spectrally integrated intensity)."""
        return float(np.sum(self.counts))


def pulses_in(exposure_s: float, setup: SetupParams) -> float:
    """Number of pump pulses in an exposure of ``exposure_s`` seconds."""
    return exposure_s * setup.pump_repetition_rate_kHz * 1e3


def acquire_stripe_spectrum(
    fluence_uJ_cm2: float,
    stripe_length_um: float,
    doping: float,
    sample: Sample,
    setup: SetupParams,
    noise: NoiseParams,
    rng: np.random.Generator,
    *,
    exposure_s: float = 3.0,
    lab_time_s: float = 0.0,
    drift: PumpDrift | None = None,
    wavelength_nm: np.ndarray = SPECTROMETER_AXIS_NM,
) -> SpectrumAcquisition:
    """Acquire the emission spectrum of a stripe pumped at a set peak fluence (uJ/cm^2).

    The delivered fluence is the set fluence times the pump drift at ``lab_time_s``;
    the spectrum is averaged over the exposure's pulses with their jitter.
    """
    delivered = float(fluence_uJ_cm2) * (float(drift.factor(lab_time_s)) if drift is not None else 1.0)
    mult, weights = jitter_nodes(noise.pulse_jitter_rms)
    widths = energy_bin_widths_meV(wavelength_nm)
    per_node = np.stack(
        [
            emission_spectrum(wavelength_nm, delivered * m, stripe_length_um, doping, sample, setup) * widths
            for m in mult
        ]
    )
    mean = np.tensordot(weights, per_node, axes=1)
    # residual fluctuation of the pulse average: one common factor (the pulses jitter as a whole)
    totals = per_node.sum(axis=1)
    tot_mean = float(weights @ totals)
    rel = math.sqrt(float(weights @ (totals - tot_mean) ** 2)) / max(tot_mean, 1e-300)
    rel /= math.sqrt(max(pulses_in(exposure_s, setup), 1.0))
    mean = mean * (1.0 + rel * rng.standard_normal())
    read = detector_counts(mean, exposure_s, noise, rng)
    return SpectrumAcquisition(
        wavelength_nm=np.asarray(wavelength_nm),
        counts=read.counts,
        saturated=read.saturated,
        exposure_s=exposure_s,
        fluence_uJ_cm2=delivered,
    )
