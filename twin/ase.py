"""Stripe excitation: ASE output versus fluence and stripe length (VSL), with saturation.

Geometry. A cylindrical lens focuses the pump into a line whose intensity along
its length is Gaussian, ``p(x) = exp(-2 x^2 / w^2)`` (w = ``setup.pump_line_half_length_um``,
x from the line centre); an adjustable slit cuts a stripe of length L centred on
it. ``fluence`` always means the peak (centre) fluence in uJ/cm^2.

Amplification. Spontaneous emission from the stripe is amplified along it. With
the stripe-averaged net modal gain g = Phi / L, the unsaturated output at one
wavelength is the VSL law ``I(L) = A (exp(g L) - 1) / g`` (A: spontaneous emission
per um of stripe, proportional to the excited-dot fraction 1 - exp(-<N>)). Gain
saturation by the ASE itself (dI/dx = A + g I / (1 + I/I_sat)) caps the growth;
its solution from a weak seed is ``I_sat W(I_u / I_sat)`` with Lambert's W, which
grows linearly in L once saturated. Intensities are in units of the spontaneous
emission of 1 um of fully excited stripe.

Spectral narrowing. The spectrally integrated output is the peak spectral
density times an effective width 1/sigma^2 = 1/sigma_PL^2 + max(Phi, 0)/sigma_gain^2
(Laplace's method on the Gaussian gain line): the band narrows as the
gain-length product grows. ``twin.spectra`` evaluates the same model per pixel.

The ASE onset (the twin's threshold) is where the net gain-length product at the
gain peak reaches ``setup.ase_onset_gain_length``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from core.errors import ParameterError

from ._xp import is_tensor, namespace, to_numpy
from .constants import HC_EV_NM, SPEED_OF_LIGHT_UM_PER_PS
from .gain import (
    absorption_shape,
    check_doping,
    check_fluence,
    emission_shape,
    film_kappa,
    gain_peak_nm,
    intraband_loss_per_cm,
    trion_auger_lifetime_ps,
)
from .occupancy import gain_table
from .presets import Sample, SetupParams

__all__ = [
    "StripeGain",
    "ase_output",
    "ase_threshold_uJ_cm2",
    "check_stripe_length",
    "lambertw_of_exp",
    "max_fluence_uJ_cm2",
    "saturate",
    "stripe_gain",
    "vsl_output",
]

_GL_T, _GL_W = np.polynomial.legendre.leggauss(4)
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def check_stripe_length(stripe_length_um, setup: SetupParams) -> np.ndarray:
    """Stripe length (um) as an array, or a clear error outside the slit's range."""
    if is_tensor(stripe_length_um):  # the differentiable twin: check the numbers, keep the tensor
        values = to_numpy(stripe_length_um)
        if values is not None:
            check_stripe_length(values, setup)
        return stripe_length_um
    length = np.asarray(stripe_length_um, dtype=float)
    lo, hi = setup.stripe_length_min_um, setup.stripe_length_max_um
    if not np.all(np.isfinite(length)):
        raise ParameterError(f"stripe length must be finite; allowed: {lo:g} to {hi:g} um")
    if np.any(length <= 0):
        raise ParameterError(f"stripe length must be positive; allowed: {lo:g} to {hi:g} um")
    if np.any(length < lo) or np.any(length > hi):
        bad = float(length[(length < lo) | (length > hi)].ravel()[0])
        raise ParameterError(f"stripe length {bad:g} um is out of range; allowed: {lo:g} to {hi:g} um")
    return length


def lambertw_of_exp(y) -> np.ndarray:
    """W(exp(y)) for real y, without overflow (Lambert's W, principal branch).

    Solves w + ln w = y by Newton's method from w0 = ln(1 + e^y); six steps give
    machine precision for every y.
    """
    xp = namespace(y)
    y = xp.asarray(y, dtype=float)
    w = xp.logaddexp(0.0, y)
    for _ in range(6):
        w = xp.maximum(w - (w + xp.log(w) - y) / (1.0 + 1.0 / w), 1e-300)
    return w


def saturate(log_unsaturated, saturation_intensity: float) -> np.ndarray:
    """Saturated output I_sat W(I_u / I_sat) from the log of the unsaturated output I_u.

    Gain saturation is shared by all wavelengths of the band (the same inverted
    dots feed them), so it acts on the spectrally integrated guided output.
    """
    xp = namespace(log_unsaturated, saturation_intensity)
    return saturation_intensity * lambertw_of_exp(xp.asarray(log_unsaturated) - xp.log(saturation_intensity))


def max_fluence_uJ_cm2(stripe_length_um, setup: SetupParams) -> np.ndarray:
    """Largest peak fluence (uJ/cm^2) the laser's pulse energy can give a stripe of this length.

    Pulse energy through the slit = F_peak * stripe width * integral of p(x) over the
    stripe, capped by ``setup.max_pulse_energy_uJ``.
    """
    length = np.asarray(stripe_length_um, dtype=float)
    w = setup.pump_line_half_length_um
    # integral of exp(-2 x^2/w^2) over [-L/2, L/2], in um
    integral_um = w * math.sqrt(math.pi / 2.0) * erf(length / (math.sqrt(2.0) * w))
    area_cm2 = integral_um * 1e-4 * setup.stripe_width_um * 1e-4
    return np.minimum(setup.max_pulse_energy_uJ / area_cm2, setup.fluence_limit_uJ_cm2)


class StripeGain:
    """Stripe-averaged band-edge state of a pumped stripe (all arrays broadcast together).

    Attributes: ``absorbing`` and ``emitting`` weights B and S averaged over the
    stripe (dimensionless), ``spontaneous`` (excited-dot fraction, averaged),
    ``auger_factor`` (share of the inversion surviving the ASE transit) and
    ``loss_per_cm`` (waveguide + intraband).
    """

    __slots__ = ("absorbing", "auger_factor", "emitting", "length_um", "loss_per_cm", "sample", "spontaneous")

    def __init__(self, absorbing, emitting, spontaneous, auger_factor, loss_per_cm, length_um, sample):
        self.absorbing = absorbing
        self.emitting = emitting
        self.spontaneous = spontaneous
        self.auger_factor = auger_factor
        self.loss_per_cm = loss_per_cm
        self.length_um = length_um
        self.sample = sample

    def net_gain_per_cm(self, wavelength_nm=None) -> np.ndarray:
        """Stripe-averaged net modal gain at a wavelength (gain peak if None), 1/cm."""
        film = self.sample.film
        if wavelength_nm is None:
            g_mat = self.emitting * self.auger_factor - self.absorbing
        else:
            spectra = self.sample.spectra
            g_mat = self.emitting * self.auger_factor * emission_shape(
                wavelength_nm, spectra
            ) - self.absorbing * absorption_shape(wavelength_nm, spectra)
        return film.confinement * film.alpha0_per_cm * g_mat - self.loss_per_cm

    def gain_length(self, wavelength_nm=None) -> np.ndarray:
        """Net gain-length product Phi = g L (dimensionless)."""
        return self.net_gain_per_cm(wavelength_nm) * self.length_um * 1e-4


def stripe_gain(fluence_uJ_cm2, stripe_length_um, doping, sample: Sample, setup: SetupParams) -> StripeGain:
    """Average the band-edge state over a stripe pumped at peak fluence F (uJ/cm^2).

    Four-node Gauss-Legendre quadrature over the half stripe (the profile is
    symmetric). Transit factor for the charged-exciton Auger decay during the
    ASE build-up: (1 - exp(-t/tau))/(t/tau), t = L n_g / c.
    """
    f = check_fluence(fluence_uJ_cm2)
    length = check_stripe_length(stripe_length_um, setup)
    d = check_doping(doping, sample)
    xp = namespace(f, length, d)
    f, length, d = xp.broadcast_arrays(f, length, d)
    kappa = film_kappa(sample.film) * sample.exciton_yield
    table = gain_table(sample.degeneracy, sample.doping_distribution)
    w = setup.pump_line_half_length_um
    x = (length / 2.0)[..., None] * xp.asarray(0.5 * (_GL_T + 1.0))  # (..., 4) positions, um
    profile = xp.exp(-2.0 * (x / w) ** 2)
    mean_n = (f * kappa)[..., None] * profile
    b, s = table.weights(mean_n, d[..., None])
    weights = xp.asarray(0.5 * _GL_W)
    absorbing = b @ weights
    emitting = s @ weights
    spontaneous = (-xp.expm1(-mean_n)) @ weights
    tau = trion_auger_lifetime_ps(d, sample)
    transit_ps = length * sample.film.group_index / SPEED_OF_LIGHT_UM_PER_PS
    ratio = transit_ps / tau
    auger = xp.where(ratio > 1e-9, -xp.expm1(-ratio) / xp.maximum(ratio, 1e-300), 1.0 - ratio / 2.0)
    loss = sample.film.waveguide_loss_per_cm + intraband_loss_per_cm(d, sample)
    return StripeGain(absorbing, emitting, spontaneous, auger, loss, length, sample)


def _amplified(spont_per_um, gain_per_um, length_um):
    """Unsaturated VSL law in log form: log of A (exp(g L) - 1)/g (A > 0), stable for all g."""
    xp = namespace(spont_per_um, gain_per_um, length_um)
    gl = gain_per_um * length_um
    # (exp(gl) - 1)/g = L * expm1(gl)/gl; its log is gl - log(gl) for large gl (no overflow)
    big = gl > 30.0
    small = xp.abs(gl) < 1e-8
    moderate = xp.where(big | small, 1.0, gl)
    log_factor = xp.where(
        big,
        gl - xp.log(xp.where(big, gl, 1.0)),
        xp.where(small, 0.0, xp.log(xp.expm1(moderate) / moderate)),
    )
    return xp.log(xp.maximum(spont_per_um, 1e-300)) + xp.log(length_um) + log_factor


def ase_output(
    fluence_uJ_cm2,
    stripe_length_um,
    doping,
    sample: Sample,
    setup: SetupParams,
    *,
    stripe: StripeGain | None = None,
    at_peak: bool = False,
) -> np.ndarray:
    """ASE output of a pumped stripe, spectrally integrated (default) or at the gain peak.

    Integrated: in units of the spontaneous emission of 1 um of fully excited
    stripe x meV. ``at_peak=True``: the spectral density (per meV) at the gain
    peak wavelength, what a VSL measurement reads at the ASE peak. Vectorised over
    broadcastable fluence (uJ/cm^2), stripe length (um) and doping
    (electrons/dot). Includes saturation and spectral narrowing (module docstring).
    """
    st = stripe if stripe is not None else stripe_gain(fluence_uJ_cm2, stripe_length_um, doping, sample, setup)
    spectra = sample.spectra
    phi = st.gain_length()
    g_per_um = phi / st.length_um
    e_gain = HC_EV_NM / gain_peak_nm(spectra)
    e_pl = HC_EV_NM / spectra.abs_peak_nm - spectra.pl_stokes_shift_meV * 1e-3
    sigma_pl = spectra.pl_linewidth_meV * _FWHM_TO_SIGMA
    sigma_gain = spectra.gain_linewidth_meV * _FWHM_TO_SIGMA
    pl_at_gain_peak = math.exp(-0.5 * ((e_gain - e_pl) * 1e3 / sigma_pl) ** 2)
    xp = namespace(phi)
    log_peak = _amplified(st.spontaneous * pl_at_gain_peak, g_per_um, st.length_um)
    inv_var = 1.0 / sigma_pl**2 + xp.maximum(phi, 0.0) / sigma_gain**2
    log_width = 0.5 * xp.log(2.0 * math.pi / inv_var)
    log_total = log_peak + log_width
    guided_total = saturate(log_total, sample.film.saturation_intensity)
    # unguided spontaneous emission collected from the whole stripe
    unguided = setup.unguided_pl_collection * st.spontaneous * st.length_um
    if at_peak:
        return xp.exp(log_peak - log_total) * guided_total + unguided * pl_at_gain_peak
    return guided_total + unguided * math.sqrt(2.0 * math.pi) * sigma_pl


def vsl_output(stripe_length_um, fluence_uJ_cm2, doping, sample: Sample, setup: SetupParams) -> np.ndarray:
    """ASE spectral density at the gain peak versus stripe length (um) at fixed fluence: the VSL curve."""
    return ase_output(fluence_uJ_cm2, stripe_length_um, doping, sample, setup, at_peak=True)


def ase_threshold_uJ_cm2(stripe_length_um, doping, sample: Sample, setup: SetupParams) -> np.ndarray:
    """The twin's ASE onset: peak fluence (uJ/cm^2) at which Phi = ``ase_onset_gain_length``.

    ``inf`` where no fluence up to the setup's fluence limit reaches it. Vectorised
    over broadcastable stripe length and doping (bisection in log fluence).
    """
    length = check_stripe_length(stripe_length_um, setup)
    d = check_doping(doping, sample)
    length, d = np.broadcast_arrays(length, d)
    target = setup.ase_onset_gain_length
    f_hi_limit = setup.fluence_limit_uJ_cm2

    def excess(f):
        return stripe_gain(f, length, d, sample, setup).gain_length() - target

    lo = np.full(length.shape, math.log(1e-2))
    hi = np.full(length.shape, math.log(f_hi_limit))
    reach = excess(np.exp(hi)) >= 0
    for _ in range(48):
        mid = 0.5 * (lo + hi)
        up = excess(np.exp(mid)) >= 0
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    out = np.where(reach, np.exp(0.5 * (lo + hi)), np.inf)
    return float(out) if out.ndim == 0 else out
