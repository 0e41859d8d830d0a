"""Noisy acquisitions from the twin, as the bench's instruments would return them.

These functions turn the noiseless model into what a detector reads: pulse
jitter averaged over the exposure's pulses, the pump's slow drift at the given
lab time, shot/read/dark noise of the line camera. They are pure functions of
their inputs and an explicit ``numpy.random.Generator`` (seeded by the caller),
so every simulated measurement is reproducible. The simulated devices in
``sim/`` and the paper-reproduction measurements both use them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from ._xp import namespace
from .ase import _amplified, saturate, stripe_gain
from .noise import NoiseParams, PumpDrift, detector_counts, jitter_nodes
from .presets import Sample, SetupParams, SpectraParams
from .spectra import SPECTROMETER_AXIS_NM, energy_bin_widths_meV, pl_spectrum

__all__ = [
    "SpectrumAcquisition",
    "acquire_stripe_spectrum",
    "dfb_pixel_intensities",
    "expected_dfb_counts",
    "expected_stripe_counts",
    "pulses_in",
    "stripe_pixel_intensities",
]


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
    mult, weights = _jitter_nodes(noise.pulse_jitter_rms)
    per_node = _node_intensities(
        np.asarray(wavelength_nm, dtype=float), delivered * mult, stripe_length_um, doping, sample, setup
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


@functools.lru_cache(maxsize=8)
def _jitter_nodes(jitter_rms: float) -> tuple[np.ndarray, np.ndarray]:
    """``jitter_nodes`` of a jitter, computed once (read-only arrays)."""
    mult, weights = jitter_nodes(jitter_rms)
    mult.setflags(write=False)
    weights.setflags(write=False)
    return mult, weights


class _AxisShapes:
    """What depends only on the wavelength axis and the sample's spectra: line shapes and pixel widths."""

    __slots__ = ("absorption", "emission", "log_widths", "pl", "widths")

    def __init__(self, lam: np.ndarray, spectra: SpectraParams):
        from .gain import absorption_shape, emission_shape

        self.pl = pl_spectrum(lam, spectra)
        self.emission = emission_shape(lam, spectra)
        self.absorption = absorption_shape(lam, spectra)
        self.widths = energy_bin_widths_meV(lam)
        self.log_widths = np.log(self.widths)
        for name in self.__slots__:  # shared by every acquisition on this axis
            getattr(self, name).setflags(write=False)


_SHAPES: dict[tuple, _AxisShapes] = {}


def _axis_shapes(lam: np.ndarray, spectra: SpectraParams) -> _AxisShapes:
    key = (spectra, lam.shape, lam.tobytes())
    shapes = _SHAPES.get(key)
    if shapes is None:
        if len(_SHAPES) >= 32:
            _SHAPES.clear()
        shapes = _SHAPES[key] = _AxisShapes(lam, spectra)
    return shapes


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """``scipy.special.logsumexp(x, axis=-1)`` of a 2-D array: the same arithmetic (the maximum taken
    out of the sum, ``log1p``), bit for bit, without its array-API dispatch (~0.1 ms a call)."""
    if not np.all(np.isfinite(x)):
        return logsumexp(x, axis=-1)
    top = x.max(axis=-1, keepdims=True)
    at_top = x == top
    m = at_top.sum(axis=-1, keepdims=True, dtype=x.dtype)
    s = np.exp(np.where(at_top, -np.inf, x) - top).sum(axis=-1, keepdims=True, dtype=x.dtype)
    s = np.where(s == 0, s, s / m)
    return (np.log1p(s) + np.log(m) + top)[..., 0]


def _node_intensities(lam, fluences_uJ_cm2, stripe_length_um, doping, sample: Sample, setup: SetupParams):
    """Intensity per pixel (spectral density x pixel meV width) at each jitter node's fluence: (nodes, pixels).

    The same model as ``twin.spectra.emission_spectrum`` evaluated at every node in one
    pass (one ``stripe_gain`` over the node fluences; line shapes cached per axis). Equal to
    float64 round-off (``stripe_gain``'s quadrature is one matrix-vector product here, seven dot
    products node by node); the seeded acquisitions' counts are the same
    (tests/test_instrument_nodes.py). Generic over the array namespace (``stripe_pixel_intensities``).
    """
    return stripe_pixel_intensities(lam, fluences_uJ_cm2, stripe_length_um, doping, sample, setup)


def stripe_pixel_intensities(lam, fluence_uJ_cm2, stripe_length_um, doping, sample: Sample, setup: SetupParams):
    """Intensity per pixel of the axis ``lam`` (nm): spectral density x the pixel's meV width, shape
    ``broadcast(fluence, length, doping).shape + (pixels,)``; fluence (uJ/cm^2, peak), stripe length (um)
    and doping (electrons/dot) broadcast together.

    numpy inputs: numpy; torch inputs (and torch parameters in ``sample``): torch, differentiable
    (``twin.differentiable``). The line shapes depend only on the axis and ``sample.spectra``.
    """
    shapes = _axis_shapes(lam, sample.spectra)
    st = stripe_gain(fluence_uJ_cm2, stripe_length_um, doping, sample, setup)
    xp = namespace(st.absorbing)
    emission, absorption, pl = xp.asarray(shapes.emission), xp.asarray(shapes.absorption), xp.asarray(shapes.pl)
    film = sample.film
    col = np.newaxis
    g_mat = (st.emitting * st.auger_factor)[..., col] * emission - st.absorbing[..., col] * absorption
    length = st.length_um[..., col]
    phi = (film.confinement * film.alpha0_per_cm * g_mat - st.loss_per_cm[..., col]) * length * 1e-4
    spont = st.spontaneous[..., col]
    log_i = _amplified(spont * pl, phi / length, length)
    # shared gain saturation acts on the band-integrated guided output of each node
    log_widths = xp.asarray(shapes.log_widths)
    log_total = _logsumexp_rows(log_i + log_widths) if xp is np else xp.logsumexp_rows(log_i + log_widths)
    total = saturate(log_total, film.saturation_intensity)
    guided = xp.exp(log_i - log_total[..., col]) * total[..., col]
    unguided = setup.unguided_pl_collection * spont * length * pl
    return (guided + unguided) * xp.asarray(shapes.widths)


def expected_stripe_counts(
    fluence_uJ_cm2,
    stripe_length_um,
    doping,
    exposure_s,
    sample: Sample,
    setup: SetupParams,
    noise: NoiseParams,
    wavelength_nm: np.ndarray = SPECTROMETER_AXIS_NM,
):
    """Mean and variance of the spectrometer's integrated counts of a stripe acquisition (counts, counts^2).

    The measurement model of ``acquire_stripe_spectrum`` for a delivered fluence (the pump's
    readback, uJ/cm^2): the output averaged over the pulse jitter (its Gauss-Hermite nodes),
    times ``counts_per_unit_s`` x exposure (s), summed over the axis. The variance holds the
    shot noise of signal and dark counts, the read noise of every pixel, the residual
    pulse-to-pulse fluctuation of the exposure's average and the pump's drift during the exposure
    (the readback is one moment of it). Inputs broadcast (one entry per
    acquisition); numpy or torch (differentiable in the sample's torch parameters).
    """
    xp = namespace(fluence_uJ_cm2, stripe_length_um, doping, exposure_s)
    mult, weights = _jitter_nodes(noise.pulse_jitter_rms)
    f = xp.asarray(fluence_uJ_cm2)
    f, length, dop, exp_s = xp.broadcast_arrays(f, stripe_length_um, doping, exposure_s)
    lam = np.asarray(wavelength_nm, dtype=float)
    per_node = stripe_pixel_intensities(
        lam, f[..., None] * xp.asarray(mult), length[..., None], dop[..., None], sample, setup
    )  # (..., nodes, pixels)
    totals = per_node.sum(-1)  # (..., nodes)
    w = xp.asarray(weights)
    tot_mean = totals @ w
    spread = xp.sqrt(((totals - tot_mean[..., None]) ** 2) @ w) / xp.maximum(tot_mean, 1e-300)
    pulses = xp.maximum(exp_s * (setup.pump_repetition_rate_kHz * 1e3), 1.0)
    rel = spread / xp.sqrt(pulses)
    # the delivered fluence is known to the pump's drift during the exposure (its readback is one
    # moment of it): a relative fluence error of drift_rms x 2 pi x exposure / shortest drift period,
    # carried to the output through the local slope d ln(output)/d ln(fluence) (the nodes' spread / jitter)
    if noise.pulse_jitter_rms > 0:
        fluence_rel = noise.drift_rms * 2.0 * np.pi * exp_s / noise.drift_period_min_s
        rel = xp.sqrt(rel**2 + (spread * (fluence_rel / noise.pulse_jitter_rms)) ** 2)
    signal = xp.maximum(tot_mean, 0.0) * noise.counts_per_unit_s * exp_s
    n_pix = lam.size
    var = signal + n_pix * noise.dark_counts_per_s * exp_s + n_pix * noise.read_noise_counts**2 + (rel * signal) ** 2
    return signal, var


def dfb_pixel_intensities(lam, fluence_uJ_cm2, analyser_angle_deg, sample: Sample, noise: NoiseParams, doping=None):
    """What the spectrometer collects from a DFB device per pixel of the axis ``lam`` (nm), in the detector's
    intensity units (its counts per second are this x ``counts_per_unit_s``): the emission spectrum normal to
    the device (``twin.dfb.dfb_spectrum``, per nm) at the pixel centres x the pixel's width (nm, ``np.gradient``
    of the axis), through the analyser at ``analyser_angle_deg`` (the spectrum scaled by ``dfb_polarized_output /
    dfb_output``: ``twin.dfb.dfb_analysed_spectrum``), with the DFB's collection efficiency
    (``dfb_counts_per_unit_s``).

    The pump spot on a DFB is uniform and there is no pulse-jitter average: the delivered fluence
    (uJ/cm^2, > 0) acts as one. Shape ``broadcast(fluence, doping).shape + (pixels,)``; numpy, or torch
    (differentiable in the sample's film and yield parameters) for torch inputs or tensor parameters.
    """
    from .dfb import dfb_analysed_spectrum

    lam = np.asarray(lam, dtype=float)
    per_nm = dfb_analysed_spectrum(lam, analyser_angle_deg, fluence_uJ_cm2, sample, doping)
    step_nm = np.gradient(lam)
    to_units = noise.dfb_counts_per_unit_s / noise.counts_per_unit_s
    return per_nm * namespace(per_nm).asarray(step_nm) * to_units


def expected_dfb_counts(
    fluence_uJ_cm2,
    analyser_angle_deg,
    doping,
    exposure_s,
    sample: Sample,
    noise: NoiseParams,
    wavelength_nm: np.ndarray = SPECTROMETER_AXIS_NM,
):
    """Mean and variance of the spectrometer's integrated counts of a DFB acquisition (counts, counts^2).

    The measurement model of the twin bench's DFB read (``dfb_pixel_intensities`` x ``counts_per_unit_s`` x
    exposure (s), summed over the axis) for a delivered fluence (the pump's readback, uJ/cm^2, > 0), an
    analyser angle (deg) and the device's doping (electrons/dot). The variance holds the shot noise of signal
    and dark counts, the read noise of every pixel and the pump's drift during the exposure (the readback is
    one moment of it: a relative fluence error drift_rms x 2 pi x exposure / shortest drift period, carried
    through the local slope d ln(counts)/d ln(fluence), a central difference on the numbers; the variance is
    not differentiated). Inputs broadcast (one entry per acquisition); numpy or torch.
    """
    from ._xp import to_numpy

    xp = namespace(fluence_uJ_cm2, analyser_angle_deg, doping, exposure_s)
    lam = np.asarray(wavelength_nm, dtype=float)
    f, angle, dop, exp_s = xp.broadcast_arrays(fluence_uJ_cm2, analyser_angle_deg, doping, exposure_s)
    angle_deg = to_numpy(angle)

    def integrated(fluence, s):
        per_pixel = dfb_pixel_intensities(lam, fluence, angle_deg, s, noise, dop)
        return xp.maximum(per_pixel, 0.0).sum(-1)

    total = integrated(f, sample)
    signal = total * noise.counts_per_unit_s * exp_s
    n_pix = lam.size
    var = signal + n_pix * noise.dark_counts_per_s * exp_s + n_pix * noise.read_noise_counts**2
    if noise.drift_rms > 0:
        from .dfb import _numeric_sample

        numeric = _numeric_sample(sample)
        f_np, dop_np, tot_np = to_numpy(f), to_numpy(dop), to_numpy(total)
        h = 1e-4
        hi = to_numpy(dfb_pixel_intensities(lam, f_np * (1.0 + h), angle_deg, numeric, noise, dop_np)).clip(0).sum(-1)
        lo = to_numpy(dfb_pixel_intensities(lam, f_np * (1.0 - h), angle_deg, numeric, noise, dop_np)).clip(0).sum(-1)
        slope = (hi - lo) / (2.0 * h * np.maximum(tot_np, 1e-300))
        fluence_rel = noise.drift_rms * 2.0 * np.pi * to_numpy(exp_s) / noise.drift_period_min_s
        var = var + (xp.asarray(slope * fluence_rel) * signal) ** 2
    return signal, var
