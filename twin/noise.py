"""Measurement noise, all seeded and reproducible.

* Pump: pulse-to-pulse fluence jitter (relative rms per pulse) and a slow drift of
  the pump power over lab time (a sum of sinusoids with seeded periods and phases,
  so the drift is a fixed function of lab time: the same seed gives the same
  drift whatever the order of the acquisitions).
* Detector (1D InGaAs camera behind the spectrograph): photon shot noise
  (Poisson), dark counts (Poisson, rate x exposure), read noise (Gaussian, per
  pixel and read) and a full well at which pixels saturate.

Because output is strongly nonlinear in fluence near threshold, the jitter is
not applied to the mean fluence: the output of an exposure is the average over
its pulses, computed by Gauss-Hermite quadrature over the pulse distribution
(``jitter_nodes``), and the finite number of pulses leaves a residual relative
fluctuation std/mean/sqrt(n_pulses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DetectorReadout",
    "NoiseParams",
    "PumpDrift",
    "detector_counts",
    "jitter_average",
    "jitter_nodes",
]


class NoiseParams(BaseModel):
    """Noise of the bench (pump and detector); units in the names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pulse_jitter_rms: float = Field(0.02, ge=0, lt=0.5, description="pulse-to-pulse fluence jitter (fraction)")
    drift_rms: float = Field(
        0.002, ge=0, lt=0.5, description="slow pump-power drift (long-term stability of the laser), rms fraction"
    )
    drift_period_min_s: float = Field(600.0, gt=0, description="shortest drift period, s")
    drift_period_max_s: float = Field(14400.0, gt=0, description="longest drift period, s")
    counts_per_unit_s: float = Field(
        5.0, gt=0, description="detector counts per second per unit of twin spectral intensity x meV"
    )
    dfb_counts_per_unit_s: float = Field(
        1.0e7, gt=0, description="detector counts per second per unit of DFB output (surface-normal collection)"
    )
    read_noise_counts: float = Field(8.0, ge=0, description="read noise per pixel and read, counts rms")
    dark_counts_per_s: float = Field(20.0, ge=0, description="dark counts per pixel per second")
    full_well_counts: float = Field(6.0e7, gt=0, description="counts at which a pixel saturates")
    ta_noise_rms: float = Field(
        2.0e-3,
        gt=0,
        lt=0.1,
        description="noise of one averaged TA reading of d(alpha)/alpha0 (dimensionless), rms: the probe's "
        "shot and lamp noise over the averaging time (a few 1e-3 for a lock-in TA setup)",
    )


def jitter_nodes(jitter_rms: float, n_nodes: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Fluence multipliers and weights for averaging over Gaussian pulse-to-pulse jitter."""
    x, w = np.polynomial.hermite_e.hermegauss(n_nodes)
    mult = np.maximum(1.0 + jitter_rms * x, 0.0)
    return mult, w / w.sum()


def jitter_average(values_at_nodes: np.ndarray, weights: np.ndarray, n_pulses: float, rng: np.random.Generator):
    """Mean output of an exposure of ``n_pulses`` pulses from the model evaluated at the jitter nodes.

    ``values_at_nodes``: shape (n_nodes, ...) model outputs at the node fluences.
    Returns the pulse-averaged output with the residual finite-pulse fluctuation.
    """
    v = np.asarray(values_at_nodes, dtype=float)
    w = weights.reshape((-1,) + (1,) * (v.ndim - 1))
    mean = np.sum(w * v, axis=0)
    var = np.sum(w * (v - mean) ** 2, axis=0)
    rel = np.sqrt(var) / np.maximum(mean, 1e-300) / math.sqrt(max(n_pulses, 1.0))
    return mean * (1.0 + rel * rng.standard_normal(np.shape(mean)))


class PumpDrift:
    """Slow relative drift of the pump power as a fixed, seeded function of lab time (s)."""

    def __init__(self, params: NoiseParams, seed: int, n_terms: int = 6):
        rng = np.random.default_rng([seed, 0xD81F7])
        self.rms = params.drift_rms
        self.periods_s = np.exp(
            rng.uniform(math.log(params.drift_period_min_s), math.log(params.drift_period_max_s), n_terms)
        )
        self.phases = rng.uniform(0.0, 2.0 * math.pi, n_terms)
        amp = rng.normal(size=n_terms)
        # normalise so that the time-averaged rms is drift_rms (sum of a_k^2 / 2 = rms^2)
        self.amplitudes = amp / math.sqrt(0.5 * float(np.sum(amp**2))) * self.rms if self.rms > 0 else amp * 0

    def factor(self, lab_time_s) -> np.ndarray:
        """Pump power multiplier (around 1) at lab time(s) in seconds."""
        t = np.asarray(lab_time_s, dtype=float)[..., None]
        return 1.0 + np.sum(self.amplitudes * np.sin(2.0 * math.pi * t / self.periods_s + self.phases), axis=-1)


@dataclass(frozen=True)
class DetectorReadout:
    """One read of the line camera: counts per pixel (dark-subtracted estimate) and flags."""

    counts: np.ndarray
    saturated: bool
    exposure_s: float


def detector_counts(
    intensity_per_pixel: np.ndarray, exposure_s: float, params: NoiseParams, rng: np.random.Generator
) -> DetectorReadout:
    """Noisy, dark-subtracted counts for a spectrum integrated over each pixel.

    ``intensity_per_pixel``: twin intensity per pixel (spectral density x the
    pixel's meV width). Shot noise on signal + dark, Gaussian read noise, then
    the expected dark level is subtracted (as the bench software does); pixels
    above the full well are clipped and flagged.
    """
    if not (math.isfinite(exposure_s) and exposure_s > 0):
        raise ValueError(f"exposure must be a positive number of seconds, got {exposure_s!r}")
    signal = np.maximum(np.asarray(intensity_per_pixel, dtype=float), 0.0) * params.counts_per_unit_s * exposure_s
    dark = params.dark_counts_per_s * exposure_s
    raw = rng.poisson(signal + dark).astype(float) + rng.normal(0.0, params.read_noise_counts, signal.shape)
    saturated = bool(np.any(raw >= params.full_well_counts))
    raw = np.minimum(raw, params.full_well_counts)
    return DetectorReadout(counts=raw - dark, saturated=saturated, exposure_s=exposure_s)
