"""Linear absorption of a film around its first excitonic (1S) peak, and what a white-light
transmission measurement of it reads.

Absorbance (optical density, base 10, dimensionless) of a film of thickness ``t`` at a
doping <n_e> (1S electrons per dot)::

    A(lambda) = alpha0 * t / ln(10) * [(1 - <n_e>/g) * S(lambda) + H(lambda)]

* ``S``: the 1S band, ``H``: the higher transitions to the blue: the two parts of the
  twin's unexcited absorption ``twin.spectra.absorption_spectrum`` (its sum, alpha/alpha0,
  1 at the gain peak), with the preset's 1S peak wavelength and linewidth
  (``SpectraParams.abs_peak_nm``, ``abs_linewidth_meV``);
* ``alpha0`` (1/cm): the preset film's 1S absorption coefficient at the gain peak
  (``FilmParams.alpha0_per_cm``, the same one the gain model bleaches), ``t`` the film's
  thickness (``FilmParams.thickness_nm``, or ``DfbParams.film_thickness_nm`` on a grating);
* the doping electrons fill the 1S level of the conduction band (degeneracy ``g`` = 8 in
  PbS), so they bleach the 1S band by ``1 - <n_e>/g`` -- the paper's
  <n_e> = 8 (1 - alpha_doped / alpha_neutral) read at the 1S peak -- and leave the higher
  transitions as they are. (The gain model's absorbing weight at zero pump is the same
  ``1 - <n_e>/g``.) Nothing here is tuned to the paper: every number is the preset's.

``neutral_absorbance`` is the undoped film of the same dots (<n_e> = 0): the reference the
paper reads the bleach against. ``transmitted_counts_per_s`` is the white-light source seen
through the film (or beside it) by the spectrometer, with a slow seeded lamp drift
(``LampDrift``); the detector's noise is added by the caller (``twin.noise``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import ParameterError

from .constants import HC_EV_NM
from .occupancy import doping_range
from .presets import Sample, SpectraParams

__all__ = [
    "LAMP_CENTRE_NM",
    "LAMP_WIDTH_NM",
    "AbsorbanceParts",
    "LampDrift",
    "absorbance",
    "absorbance_parts",
    "bleach_factor",
    "film_thickness_nm",
    "higher_transitions",
    "lamp_shape",
    "neutral_absorbance",
    "one_s_band",
    "transmitted_counts_per_s",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_LN10 = math.log(10.0)

#: Centre (nm) and 1/e half width (nm) of the white-light source as the InGaAs camera sees it
#: (a halogen lamp times the camera's response: a broad hump over the 1200-1700 nm axis).
LAMP_CENTRE_NM = 1450.0
LAMP_WIDTH_NM = 450.0


def _energies_meV(wavelength_nm) -> np.ndarray:
    lam = np.asarray(wavelength_nm, dtype=float)
    if lam.size == 0 or not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ParameterError("wavelengths must be finite positive numbers of nm")
    return HC_EV_NM / lam * 1e3


def _gauss(e_meV, centre_meV, fwhm_meV):
    return np.exp(-0.5 * ((e_meV - centre_meV) / (fwhm_meV * _FWHM_TO_SIGMA)) ** 2)


def _step(e_meV, e_abs_meV, w_meV):
    # the higher transitions: a smooth step rising one and a half linewidths above the 1S peak
    return 0.6 / (1.0 + np.exp(-(e_meV - e_abs_meV - 1.5 * w_meV) / (0.4 * w_meV)))


def _norm(spectra: SpectraParams) -> float:
    e_abs = HC_EV_NM / spectra.abs_peak_nm * 1e3
    w = spectra.abs_linewidth_meV
    e_gain = e_abs - spectra.ase_redshift_meV
    return float(_gauss(e_gain, e_abs, w) + _step(e_gain, e_abs, w))


def one_s_band(wavelength_nm, spectra: SpectraParams) -> np.ndarray:
    """The 1S band of the unexcited absorption, alpha_1S/alpha0 (the part doping bleaches), dimensionless."""
    e = _energies_meV(wavelength_nm)
    e_abs = HC_EV_NM / spectra.abs_peak_nm * 1e3
    return _gauss(e, e_abs, spectra.abs_linewidth_meV) / _norm(spectra)


def higher_transitions(wavelength_nm, spectra: SpectraParams) -> np.ndarray:
    """The higher transitions' absorption to the blue of the 1S peak, alpha_hi/alpha0 (not bleached), dimensionless.

    ``one_s_band + higher_transitions`` is ``twin.spectra.absorption_spectrum`` (to round-off).
    """
    e = _energies_meV(wavelength_nm)
    e_abs = HC_EV_NM / spectra.abs_peak_nm * 1e3
    return _step(e, e_abs, spectra.abs_linewidth_meV) / _norm(spectra)


def bleach_factor(doping_e_per_dot, degeneracy: int = 8) -> np.ndarray:
    """1 - <n_e>/g: the 1S absorption left at a doping of <n_e> electrons/dot (0 to g)."""
    d = np.asarray(doping_e_per_dot, dtype=float)
    if not (isinstance(degeneracy, int | np.integer) and degeneracy >= 1):
        raise ParameterError(f"degeneracy must be a whole number >= 1, got {degeneracy!r}")
    if not np.all(np.isfinite(d)) or np.any(d < 0) or np.any(d > degeneracy):
        raise ParameterError(f"doping must be finite, 0 to {degeneracy} electrons/dot (g = {degeneracy}), got {d!r}")
    return 1.0 - d / degeneracy


def film_thickness_nm(sample: Sample, kind: str = "film") -> float:
    """The film's thickness, nm: the ASE film's (``film.thickness_nm``), or the film on a DFB grating."""
    if kind == "dfb":
        if sample.dfb is None:
            raise ParameterError("a DFB's absorption needs the preset's dfb table (film_thickness_nm)")
        return float(sample.dfb.film_thickness_nm)
    if kind != "film":
        raise ParameterError(f"kind must be 'film' or 'dfb', got {kind!r}")
    return float(sample.film.thickness_nm)


@dataclass(frozen=True)
class AbsorbanceParts:
    """A film's absorbance (OD, dimensionless) on a wavelength axis, and its 1S and higher-transition parts."""

    total: np.ndarray
    one_s: np.ndarray
    higher: np.ndarray


def absorbance_parts(
    wavelength_nm, doping_e_per_dot: float, sample: Sample, *, thickness_nm: float | None = None, kind: str = "film"
) -> AbsorbanceParts:
    """Absorbance (OD) of the film at ``doping_e_per_dot`` (<n_e>, 1S electrons/dot), split into its parts.

    ``thickness_nm``: the film's thickness (default the preset's, ``film_thickness_nm``).
    The doping must be within the sample's model range (``twin.occupancy.doping_range``).
    """
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    d = float(doping_e_per_dot)
    if not (math.isfinite(d) and lo <= d <= hi):
        raise ParameterError(f"doping {doping_e_per_dot!r} electrons/dot is outside {lo:g} to {hi:g}")
    t_nm = film_thickness_nm(sample, kind) if thickness_nm is None else float(thickness_nm)
    if not (math.isfinite(t_nm) and t_nm > 0):
        raise ParameterError(f"film thickness must be a positive number of nm, got {thickness_nm!r}")
    scale = sample.film.alpha0_per_cm * t_nm * 1e-7 / _LN10
    one_s = scale * float(bleach_factor(d, sample.degeneracy)) * one_s_band(wavelength_nm, sample.spectra)
    higher = scale * higher_transitions(wavelength_nm, sample.spectra)
    return AbsorbanceParts(total=one_s + higher, one_s=one_s, higher=higher)


def absorbance(
    wavelength_nm, doping_e_per_dot: float, sample: Sample, *, thickness_nm: float | None = None, kind: str = "film"
) -> np.ndarray:
    """Absorbance (OD, base 10) of the film at a doping (electrons/dot) on a wavelength axis (nm)."""
    return absorbance_parts(wavelength_nm, doping_e_per_dot, sample, thickness_nm=thickness_nm, kind=kind).total


def neutral_absorbance(wavelength_nm, sample: Sample, *, kind: str = "film") -> AbsorbanceParts:
    """The neutral reference: the undoped (<n_e> = 0) film of the same dots at the preset's thickness, OD."""
    return absorbance_parts(wavelength_nm, 0.0, sample, kind=kind)


def lamp_shape(wavelength_nm) -> np.ndarray:
    """The white-light source's spectrum on the camera, 1 at ``LAMP_CENTRE_NM`` (dimensionless)."""
    lam = np.asarray(wavelength_nm, dtype=float)
    return np.exp(-(((lam - LAMP_CENTRE_NM) / LAMP_WIDTH_NM) ** 2))


class LampDrift:
    """Slow relative drift of the lamp's output, a fixed seeded function of lab time (s).

    A sum of sinusoids with periods 60 s to 1 h and seeded phases, normalised so that its
    time-averaged rms is ``rms`` (a fraction); the same seed gives the same drift whatever
    the order of the acquisitions.
    """

    def __init__(self, rms: float, seed: int, n_terms: int = 5):
        if not (math.isfinite(rms) and 0 <= rms < 0.5):
            raise ParameterError(f"lamp drift must be an rms fraction 0 to 0.5, got {rms!r}")
        rng = np.random.default_rng([int(seed), 0x1A4D])
        self.periods_s = np.exp(rng.uniform(math.log(60.0), math.log(3600.0), n_terms))
        self.phases = rng.uniform(0.0, 2.0 * math.pi, n_terms)
        amp = rng.normal(size=n_terms)
        self.amplitudes = amp / math.sqrt(0.5 * float(np.sum(amp**2))) * rms if rms > 0 else amp * 0.0

    def factor(self, lab_time_s: float) -> float:
        """Lamp output multiplier (around 1) at a lab time, s."""
        t = float(lab_time_s)
        return 1.0 + float(np.sum(self.amplitudes * np.sin(2.0 * math.pi * t / self.periods_s + self.phases)))


def transmitted_counts_per_s(
    wavelength_nm, counts_per_s_at_peak: float, absorbance_od=None, *, drift_factor: float = 1.0
) -> np.ndarray:
    """Mean detector counts per second per pixel of the white light, through a film of absorbance
    ``absorbance_od`` (OD; None: beside the film, the reference beam), at the lamp's drift factor."""
    if not (math.isfinite(counts_per_s_at_peak) and counts_per_s_at_peak >= 0):
        raise ParameterError(f"lamp counts must be a number >= 0 per second, got {counts_per_s_at_peak!r}")
    light = counts_per_s_at_peak * float(drift_factor) * lamp_shape(wavelength_nm)
    if absorbance_od is None:
        return light
    return light * np.power(10.0, -np.asarray(absorbance_od, dtype=float))
