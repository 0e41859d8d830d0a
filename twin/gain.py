"""Film optics and modal gain: from pump fluence to net modal gain at any wavelength.

Pump fluence -> excitons per dot
    <N> = kappa * F, with kappa from the film's pump absorption, thickness, packing
    and dot size (``twin.presets.excitons_per_fluence``).

Material gain spectrum
    g_mat(E) = alpha0 * [S * Em(E) - B * Ab(E)]   (1/cm)
    with the band-edge weights B (absorbing) and S (emitting) of ``twin.occupancy``,
    the emission shape Em (Gaussian, FWHM ``gain_linewidth_meV``, centred at the
    gain peak E_abs - ``ase_redshift_meV``) and the absorption shape Ab (Gaussian,
    FWHM ``abs_linewidth_meV``, centred at the first excitonic peak). Both shapes
    are 1 at the gain peak, so there g_mat/alpha0 = S - B = G exactly.

Net modal gain
    g_net = Gamma * g_mat - alpha_wg - alpha_intra(n_e)
    ``film.alpha0_per_cm`` is the film's modal-free 1S absorption at the gain peak
    and ``film.confinement`` Gamma the guided mode's overlap with it. Heavy doping
    adds intraband absorption of the doping electrons: a modal loss per 1S
    electron and a larger one per electron spilled into 1P (``alpha_intra``). With
    G -> 1 at strong pumping, g_net saturates at Gamma*alpha0 - losses.
"""

from __future__ import annotations

import math

import numpy as np

from core.errors import ParameterError

from ._xp import is_tensor, namespace, to_numpy
from .constants import HC_EV_NM
from .occupancy import doping_range, gain_table, poisson_mean_for_filling
from .presets import FilmParams, Sample, SpectraParams, excitons_per_fluence

__all__ = [
    "absorption_shape",
    "check_doping",
    "check_fluence",
    "emission_shape",
    "film_kappa",
    "gain_peak_nm",
    "intraband_loss_per_cm",
    "mean_excitons",
    "modal_gain_per_cm",
    "spilled_electrons",
    "trion_auger_lifetime_ps",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def check_fluence(fluence_uJ_cm2, limit_uJ_cm2: float | None = None) -> np.ndarray:
    """Pump fluence as an array, or a clear error for NaN/inf/negative/above-limit values."""
    if is_tensor(fluence_uJ_cm2):  # the differentiable twin: check the numbers, keep the tensor
        values = to_numpy(fluence_uJ_cm2)
        if values is not None:
            check_fluence(values, limit_uJ_cm2)
        return fluence_uJ_cm2
    f = np.asarray(fluence_uJ_cm2, dtype=float)
    if not np.all(np.isfinite(f)):
        raise ParameterError("pump fluence must be a finite number of uJ/cm^2 (got NaN or inf)")
    if np.any(f < 0):
        raise ParameterError(f"pump fluence {float(f.min()):g} uJ/cm^2 is negative; allowed: >= 0 uJ/cm^2")
    if limit_uJ_cm2 is not None and np.any(f > limit_uJ_cm2):
        raise ParameterError(
            f"pump fluence {float(f.max()):g} uJ/cm^2 exceeds the limit; allowed: 0 to {limit_uJ_cm2:g} uJ/cm^2"
        )
    return f


def check_doping(doping, sample: Sample) -> np.ndarray:
    """Doping <n_e> (1S electrons/dot) as an array, checked against the sample's model range."""
    if is_tensor(doping):  # the differentiable twin: check the numbers, keep the tensor
        values = to_numpy(doping)
        if values is not None:
            check_doping(values, sample)
        return doping
    d = np.asarray(doping, dtype=float)
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    if not np.all(np.isfinite(d)):
        raise ParameterError(f"doping must be finite; allowed: {lo:g} to {hi:g} electrons/dot")
    if np.any(d < lo) or np.any(d > hi):
        bad = float(d[(d < lo) | (d > hi)].ravel()[0])
        raise ParameterError(
            f"doping {bad:g} electrons/dot is outside the model's range {lo:g} to {hi:g} electrons/dot "
            f"({sample.doping_distribution} distribution, g = {sample.degeneracy})"
        )
    return d


def film_kappa(film: FilmParams) -> float:
    """kappa = <N>/F for the film, excitons/dot per uJ/cm^2."""
    return excitons_per_fluence(
        film.absorbed_fraction_1030, film.thickness_nm, film.packing_fraction, film.dot_diameter_nm
    )


def mean_excitons(fluence_uJ_cm2, film: FilmParams) -> np.ndarray:
    """Nominal <N> (excitons/dot) produced by a peak fluence in uJ/cm^2."""
    return check_fluence(fluence_uJ_cm2) * film_kappa(film)


def gain_peak_nm(spectra: SpectraParams) -> float:
    """Wavelength of the gain (ASE) peak, nm: the absorption peak red-shifted by the sample's shift."""
    e_abs = HC_EV_NM / spectra.abs_peak_nm
    return HC_EV_NM / (e_abs - spectra.ase_redshift_meV * 1e-3)


def _gauss(e, centre, fwhm_eV):
    s = fwhm_eV * _FWHM_TO_SIGMA
    return np.exp(-0.5 * ((e - centre) / s) ** 2)


def emission_shape(wavelength_nm, spectra: SpectraParams) -> np.ndarray:
    """Stimulated-emission line shape Em (1 at the gain peak), dimensionless."""
    e = HC_EV_NM / np.asarray(wavelength_nm, dtype=float)
    e_gain = HC_EV_NM / gain_peak_nm(spectra)
    return _gauss(e, e_gain, spectra.gain_linewidth_meV * 1e-3)


def absorption_shape(wavelength_nm, spectra: SpectraParams) -> np.ndarray:
    """1S absorption line shape Ab, normalised to 1 at the gain peak (so > 1 at the absorption peak)."""
    e = HC_EV_NM / np.asarray(wavelength_nm, dtype=float)
    e_abs = HC_EV_NM / spectra.abs_peak_nm
    e_gain = HC_EV_NM / gain_peak_nm(spectra)
    w = spectra.abs_linewidth_meV * 1e-3
    return _gauss(e, e_abs, w) / _gauss(e_gain, e_abs, w)


def spilled_electrons(doping, sample: Sample) -> np.ndarray:
    """Mean doping electrons per dot beyond the 1S level (in 1P), electrons/dot."""
    d = check_doping(doping, sample)
    if sample.doping_distribution != "poisson":
        return namespace(d).zeros_like(d)
    return poisson_mean_for_filling(d, sample.degeneracy) - d


def intraband_loss_per_cm(doping, sample: Sample) -> np.ndarray:
    """Modal intraband absorption of the doping electrons, 1/cm.

    Electrons in 1S absorb weakly at the gain wavelength (1S -> higher states);
    electrons spilled into 1P absorb more strongly (1P -> higher states lie
    close to the emission energy). Both scale with the electrons per dot.
    """
    d = check_doping(doping, sample)
    film = sample.film
    return film.intraband_loss_1s_per_cm * d + film.intraband_loss_1p_per_cm * spilled_electrons(d, sample)


def trion_auger_lifetime_ps(doping, sample: Sample) -> np.ndarray:
    """Auger lifetime of one exciton in a dot with <n_e> doping electrons, ps.

    Statistical pathway count of a charged exciton X^{n-} (n+1 electrons, 1 hole):
    S = n (n + 1) r, rate (1/tau_XX) (S/4)^gamma; for n = 0 the single exciton's
    Auger rate is zero and the lifetime is infinite. The doping used is the total
    electrons per dot (1S + 1P).
    """
    d = check_doping(doping, sample)
    n = d + spilled_electrons(d, sample)
    a = sample.auger
    s = n * (n + 1.0) * a.electron_fraction
    xp = namespace(s, a.scaling_exponent, a.tau_xx_ps)
    if xp is not np:
        rate = xp.power(s / 4.0, a.scaling_exponent) / a.tau_xx_ps
        return xp.where(rate > 0, 1.0 / xp.where(rate > 0, rate, 1.0), xp.inf)
    rate_per_ps = np.power(s / 4.0, a.scaling_exponent) / a.tau_xx_ps
    out = np.full(np.shape(rate_per_ps), np.inf)
    np.divide(1.0, rate_per_ps, out=out, where=rate_per_ps > 0)
    return out


def modal_gain_per_cm(
    mean_excitons_nominal,
    doping,
    sample: Sample,
    wavelength_nm=None,
) -> np.ndarray:
    """Net modal gain g_net (1/cm) at nominal <N> (excitons/dot), doping and wavelength.

    ``wavelength_nm`` None means the gain peak. Shapes broadcast.
    """
    d = check_doping(doping, sample)
    m = namespace(mean_excitons_nominal, d).asarray(mean_excitons_nominal) * sample.exciton_yield
    table = gain_table(sample.degeneracy, sample.doping_distribution)
    b, s = table.weights(m, d)
    film = sample.film
    if wavelength_nm is None:
        g_mat = s - b
    else:
        g_mat = s * emission_shape(wavelength_nm, sample.spectra) - b * absorption_shape(wavelength_nm, sample.spectra)
    return film.confinement * film.alpha0_per_cm * g_mat - film.waveguide_loss_per_cm - intraband_loss_per_cm(d, sample)
