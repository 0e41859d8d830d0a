"""Spectra on the spectrometer's axis (InGaAs line camera, 1200-1700 nm).

* ``absorption_spectrum``: the film's unexcited absorption, alpha(lambda)/alpha0:
  the first excitonic peak (Gaussian in energy) on a rising higher-transition
  background to the blue.
* ``pl_spectrum``: photoluminescence line shape (Gaussian in energy, Stokes
  shifted).
* ``emission_spectrum``: what the spectrometer sees from a pumped stripe: the
  guided emission amplified along the stripe with the wavelength-resolved net
  gain (the same model as ``twin.ase.ase_output``, pixel by pixel, so it narrows
  above threshold and peaks at the red-shifted gain peak) plus the unguided PL.
  Units: spontaneous emission of 1 um of fully excited stripe per meV.

All spectral densities are per meV of photon energy; ``integrate_meV`` turns a
spectrum on a wavelength axis into an integrated intensity.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

from .ase import StripeGain, _amplified, saturate, stripe_gain
from .constants import HC_EV_NM
from .presets import Sample, SetupParams, SpectraParams

__all__ = [
    "SPECTROMETER_AXIS_NM",
    "absorption_spectrum",
    "emission_spectrum",
    "energy_bin_widths_meV",
    "integrate_meV",
    "pl_spectrum",
    "spectrometer_axis_nm",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def spectrometer_axis_nm(start_nm: float = 1200.0, stop_nm: float = 1700.0, pixels: int = 512) -> np.ndarray:
    """Wavelength of each pixel of the 1D InGaAs camera, nm (linear dispersion)."""
    if not (pixels >= 2 and stop_nm > start_nm > 0):
        raise ValueError("spectrometer axis needs pixels >= 2 and 0 < start_nm < stop_nm")
    return np.linspace(start_nm, stop_nm, pixels)


#: The bench spectrometer's default axis (512 pixels, ~0.98 nm per pixel).
SPECTROMETER_AXIS_NM = spectrometer_axis_nm()


def energy_bin_widths_meV(wavelength_nm) -> np.ndarray:
    """Photon-energy width (meV) each pixel of a wavelength axis covers."""
    lam = np.asarray(wavelength_nm, dtype=float)
    edges = np.empty(lam.size + 1)
    edges[1:-1] = 0.5 * (lam[1:] + lam[:-1])
    edges[0] = lam[0] - 0.5 * (lam[1] - lam[0])
    edges[-1] = lam[-1] + 0.5 * (lam[-1] - lam[-2])
    e = HC_EV_NM / edges * 1e3
    return np.abs(np.diff(e))


def integrate_meV(spectrum_per_meV, wavelength_nm) -> np.ndarray:
    """Integrate a spectral density (per meV) sampled on a wavelength axis (last axis)."""
    return np.sum(np.asarray(spectrum_per_meV) * energy_bin_widths_meV(wavelength_nm), axis=-1)


def _gauss_meV(e_meV, centre_meV, fwhm_meV):
    return np.exp(-0.5 * ((e_meV - centre_meV) / (fwhm_meV * _FWHM_TO_SIGMA)) ** 2)


def absorption_spectrum(wavelength_nm, spectra: SpectraParams) -> np.ndarray:
    """Unexcited absorption alpha/alpha0 (1 at the gain peak): 1S peak + higher-transition background."""
    e = HC_EV_NM / np.asarray(wavelength_nm, dtype=float) * 1e3
    e_abs = HC_EV_NM / spectra.abs_peak_nm * 1e3
    w = spectra.abs_linewidth_meV
    peak = _gauss_meV(e, e_abs, w)
    # higher transitions: a smooth step rising one linewidth above the 1S peak
    background = 0.6 / (1.0 + np.exp(-(e - e_abs - 1.5 * w) / (0.4 * w)))
    e_gain = e_abs - spectra.ase_redshift_meV
    norm = _gauss_meV(e_gain, e_abs, w) + 0.6 / (1.0 + math.exp(-(e_gain - e_abs - 1.5 * w) / (0.4 * w)))
    return (peak + background) / norm


def pl_spectrum(wavelength_nm, spectra: SpectraParams) -> np.ndarray:
    """Photoluminescence line shape (1 at its peak), per meV."""
    e = HC_EV_NM / np.asarray(wavelength_nm, dtype=float) * 1e3
    e_pl = HC_EV_NM / spectra.abs_peak_nm * 1e3 - spectra.pl_stokes_shift_meV
    return _gauss_meV(e, e_pl, spectra.pl_linewidth_meV)


def emission_spectrum(
    wavelength_nm,
    fluence_uJ_cm2,
    stripe_length_um,
    doping,
    sample: Sample,
    setup: SetupParams,
    *,
    stripe: StripeGain | None = None,
) -> np.ndarray:
    """Emission spectral density (per meV) from a pumped stripe on the given wavelength axis.

    Scalar fluence (uJ/cm^2), stripe length (um) and doping (electrons/dot); the
    result has the axis's shape.
    """
    lam = np.asarray(wavelength_nm, dtype=float)
    st = stripe if stripe is not None else stripe_gain(fluence_uJ_cm2, stripe_length_um, doping, sample, setup)
    if np.ndim(st.absorbing) != 0:
        raise ValueError("emission_spectrum takes one condition (scalar fluence, stripe length and doping)")
    phi = st.gain_length(lam)
    pl = pl_spectrum(lam, sample.spectra)
    log_i = _amplified(float(st.spontaneous) * pl, phi / st.length_um, st.length_um)
    # shared gain saturation acts on the band-integrated guided output
    log_total = float(logsumexp(log_i + np.log(energy_bin_widths_meV(lam))))
    total = float(saturate(log_total, sample.film.saturation_intensity))
    guided = np.exp(log_i - log_total) * total
    unguided = setup.unguided_pl_collection * float(st.spontaneous) * float(st.length_um) * pl
    return guided + unguided
