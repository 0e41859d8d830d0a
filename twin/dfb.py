"""Second-order DFB laser made from the sample's dots: wavelength, threshold, output, spectrum, polarisation.

Lasing mode
    The grating (period Lambda) feeds back the TE0 mode of the CQD film on its
    substrate at the Bragg condition m lambda = 2 n_eff(lambda) Lambda; second order
    (m = 2) couples the mode out normal to the surface, lambda = n_eff Lambda.
    n_eff(lambda) and the confinement Gamma_dfb come from the slab solver
    (``twin.waveguide.slab_te0``) with ``dfb.film_index``, ``dfb.film_thickness_nm``,
    ``dfb.substrate_index`` and ``dfb.cover_index``; the Bragg wavelength is solved
    self-consistently (Brent's method). ``film_index`` is an effective index: it
    lumps the CQD film and the high-index grating teeth under it into one slab.

Pump
    The pump spot on the DFB is uniform (no stripe), so every dot sees the set
    fluence: <N> = kappa_dfb F with the DFB film's own kappa
    (``twin.presets.excitons_per_fluence`` of ``dfb.absorbed_fraction_1030``,
    ``dfb.film_thickness_nm``, ``dfb.packing_fraction``, ``dfb.dot_diameter_nm``).

Gain and threshold
    Material gain of the band-edge transition at lambda_B (1/cm)::

        g_mat = film.alpha0_per_cm [S Em(lambda_B) - B Ab(lambda_B)]

    with the ensemble weights (B, S) of ``twin.occupancy`` at band-edge <N> =
    kappa_dfb F x exciton_yield and the line shapes of ``twin.gain``.
    ``film.alpha0_per_cm`` is the material (not modal) 1S absorption coefficient, as
    in ``twin.gain`` (the stripe film's modal gain is film.confinement x g_mat), so the
    same dots give the DFB mode Gamma_dfb x g_mat. The lasing mode's gain is
    g_0 = Gamma_dfb g_mat and its total loss
    alpha_tot = film.waveguide_loss_per_cm + intraband(doping) + dfb.grating_loss_per_cm
    (intraband absorption of the doping electrons from ``twin.gain.intraband_loss_per_cm``;
    the grating loss, radiation out of the surface included, is fitted per device).
    Threshold: g_0 = alpha_tot, i.e. net modal gain g_0 - wg - intraband =
    ``grating_loss_per_cm`` (``dfb_threshold_uJ_cm2``, root finding).

Output (rate equations with spontaneous coupling beta)
    With carriers N, mode photons S, spontaneous lifetime tau, photon lifetime tau_p,
    and a share beta of the spontaneous emission going into the lasing mode::

        dN/dt = P - N/tau - (beta/tau) N S,     dS/dt = (beta/tau) N (S + 1) - S/tau_p

    the steady state in the pump ratio x = P/P_th is the classic::

        S(x) = [(x - 1) + sqrt((x - 1)^2 + 4 beta x)] / (2 beta)

    (S_th = 1/sqrt(beta) at x = 1, S ~ (x - 1)/beta above). Here the pump ratio is
    the unsaturated gain in units of the loss, x = g_0/alpha_tot (x = 0 at
    transparency, 1 at threshold); for x <= 0 (below transparency) S = 0. The mode
    emits beta S in units of the spontaneous emission at threshold, i.e.
    ``beta S(x) (1 - exp(-<N_th>))`` in units of the spontaneous emission of the fully
    excited spot. The detector also collects a weak, unpolarised PL background,
    ``dfb.pl_collection (1 - exp(-<N>))`` (excited-dot fraction). ``dfb_output`` is
    the sum, in units of the spontaneous emission of the fully excited pump spot.

Spectrum and linewidth
    A single Lorentzian line at lambda_B holding the lasing output, on the Gaussian PL
    band (centre E_abs - ``pl_stokes_shift_meV``, FWHM ``pl_linewidth_meV``, in energy)
    holding the background; both are densities per nm, and their integral over
    wavelength is ``dfb_output``. The rate equations give the mode's net loss rate
    as the cold-cavity rate / (1 + S): a Schawlow-Townes-like 1/S narrowing above
    threshold. Pulsed CQD lasers are far broader than that coherent limit (gain and
    index transients during the pulse, inhomogeneity over the pump spot), so the
    twin counts the photon number in units of 1/beta, i.e. it narrows the line with
    the lasing output in units of the spontaneous emission at threshold::

        FWHM = dfb.cavity_linewidth_nm / (1 + beta S)

    the cold-cavity width up to threshold, then ~ cavity_linewidth_nm / x above
    (Schawlow-Townes-like: inversely proportional to the output).

Polarisation
    The lasing mode is linearly polarised along the grating lines (TE); through an
    analyser at angle theta from that axis it transmits
    ``P_las [cos^2 theta + eps sin^2 theta] / (1 + eps)`` (eps = ``dfb.polarization_extinction``,
    normalised so that the parallel and perpendicular readings sum to P_las), plus
    half of the unpolarised PL background.

All functions are vectorised over fluence (uJ/cm^2) and broadcast with doping
(electrons/dot; None = the sample's ``doping_ne``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from core.errors import ParameterError, PresetError

from .constants import HC_EV_NM
from .gain import absorption_shape, check_doping, check_fluence, emission_shape, intraband_loss_per_cm
from .occupancy import MAX_MEAN_EXCITONS, gain_table
from .presets import DfbParams, Sample, excitons_per_fluence
from .waveguide import slab_te0, te0_cutoff_thickness_nm

__all__ = [
    "BRAGG_ORDER",
    "DfbMode",
    "bragg_wavelength_nm",
    "dfb_kappa",
    "dfb_linewidth_nm",
    "dfb_mean_excitons",
    "dfb_modal_gain_per_cm",
    "dfb_mode",
    "dfb_output",
    "dfb_polarized_output",
    "dfb_pump_ratio",
    "dfb_spectrum",
    "dfb_threshold_uJ_cm2",
    "grating_loss_for_threshold",
    "laser_photon_number",
]

#: Bragg order of the grating: second order couples the lasing mode out of the surface.
BRAGG_ORDER = 2

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


@dataclass(frozen=True)
class DfbMode:
    """The DFB's lasing mode: Bragg wavelength (nm), effective index and confinement (dimensionless)."""

    wavelength_nm: float
    n_eff: float
    confinement: float


def _dfb_of(sample: Sample) -> DfbParams:
    if not isinstance(sample, Sample):
        raise ParameterError(f"expected a twin.presets.Sample, got {type(sample).__name__}")
    if sample.dfb is None:
        name = f" ({sample.description})" if sample.description else ""
        raise PresetError(
            f"this sample{name} has no DFB device: its presets need a [sample.<id>.dfb] table "
            f"(grating_period_nm, film_thickness_nm, film_index, grating_loss_per_cm, ...)"
        )
    return sample.dfb


@functools.lru_cache(maxsize=128)
def _bragg_solution(
    period_nm: float, film_index: float, thickness_nm: float, substrate_index: float, cover_index: float, order: int
) -> DfbMode:
    n_lo = max(substrate_index, cover_index)
    if film_index <= n_lo:
        raise ParameterError(
            f"the DFB film index {film_index:g} must exceed the substrate index {substrate_index:g} "
            f"and the cover index {cover_index:g} to guide a mode"
        )

    def mismatch(lam):
        return lam - 2.0 * slab_te0(lam, film_index, thickness_nm, substrate_index, cover_index)[0] * period_nm / order

    lam_lo = 2.0 * n_lo * period_nm / order
    lam_hi = 2.0 * film_index * period_nm / order
    # TE0 is cut off beyond the wavelength at which the film reaches its cut-off thickness
    t_c_per_nm = te0_cutoff_thickness_nm(1.0, film_index, substrate_index, cover_index)
    lam_cut = thickness_nm / t_c_per_nm if t_c_per_nm > 0 else math.inf
    if lam_cut <= lam_lo * (1.0 + 1e-12):
        raise ParameterError(
            f"no Bragg resonance: at {lam_lo:.1f} nm (order {order}, period {period_nm:g} nm) the "
            f"{thickness_nm:g} nm film of index {film_index:g} guides no mode; allowed: a thicker film or "
            f"higher film index (TE0 cut-off at {lam_cut:.1f} nm)"
        )
    lam_hi = min(lam_hi, lam_cut * (1.0 - 1e-9))
    lam = optimize.brentq(mismatch, lam_lo * (1.0 + 1e-12), lam_hi, xtol=1e-9, rtol=1e-14)
    n_eff, gamma = slab_te0(lam, film_index, thickness_nm, substrate_index, cover_index)
    return DfbMode(wavelength_nm=float(lam), n_eff=float(n_eff), confinement=float(gamma))


def dfb_mode(dfb: DfbParams, order: int = BRAGG_ORDER) -> DfbMode:
    """The lasing mode of the grating: self-consistent Bragg wavelength, n_eff and Gamma_dfb (cached)."""
    if order not in (1, 2, 3):
        raise ParameterError(f"Bragg order {order!r} is not supported; allowed: 1, 2 or 3")
    return _bragg_solution(
        float(dfb.grating_period_nm),
        float(dfb.film_index),
        float(dfb.film_thickness_nm),
        float(dfb.substrate_index),
        float(dfb.cover_index),
        int(order),
    )


def bragg_wavelength_nm(dfb: DfbParams, order: int = BRAGG_ORDER) -> float:
    """Lasing wavelength (nm) of the grating: m lambda = 2 n_eff(lambda) Lambda, solved self-consistently."""
    return dfb_mode(dfb, order).wavelength_nm


def dfb_kappa(dfb: DfbParams) -> float:
    """kappa = <N>/F of the DFB film, excitons/dot per uJ/cm^2."""
    return excitons_per_fluence(
        dfb.absorbed_fraction_1030, dfb.film_thickness_nm, dfb.packing_fraction, dfb.dot_diameter_nm
    )


def dfb_mean_excitons(fluence_uJ_cm2, sample: Sample) -> np.ndarray:
    """Nominal <N> (excitons/dot) on the DFB at a (uniform) pump fluence in uJ/cm^2."""
    return check_fluence(fluence_uJ_cm2) * dfb_kappa(_dfb_of(sample))


def _doping(doping, sample: Sample) -> np.ndarray:
    return check_doping(sample.doping_ne if doping is None else doping, sample)


def _gain_and_loss(fluence, sample: Sample, doping):
    """(g_0, alpha_tot, <N> nominal) at broadcast fluence and doping; g_0 is Gamma_dfb g_mat."""
    dfb = _dfb_of(sample)
    f = check_fluence(fluence)
    d = _doping(doping, sample)
    f, d = np.broadcast_arrays(f, d)
    mode = dfb_mode(dfb)
    mean_n = f * dfb_kappa(dfb)
    if np.any(mean_n * sample.exciton_yield > MAX_MEAN_EXCITONS):
        f_max = MAX_MEAN_EXCITONS / (dfb_kappa(dfb) * sample.exciton_yield)
        raise ParameterError(
            f"pump fluence {float(f.max()):g} uJ/cm^2 gives more than {MAX_MEAN_EXCITONS:g} excitons/dot on "
            f"this DFB; allowed: 0 to {f_max:.4g} uJ/cm^2"
        )
    b, s = gain_table(sample.degeneracy, sample.doping_distribution).weights(mean_n * sample.exciton_yield, d)
    lam = mode.wavelength_nm
    film = sample.film
    g_mat = film.alpha0_per_cm * (s * emission_shape(lam, sample.spectra) - b * absorption_shape(lam, sample.spectra))
    loss = film.waveguide_loss_per_cm + intraband_loss_per_cm(d, sample) + dfb.grating_loss_per_cm
    return mode.confinement * g_mat, loss, mean_n


def _out(a: np.ndarray):
    return float(a) if np.ndim(a) == 0 else a


def dfb_modal_gain_per_cm(fluence_uJ_cm2, sample: Sample, doping=None):
    """Net modal gain of the lasing mode before the grating loss, 1/cm: Gamma_dfb g_mat - wg - intraband.

    Lasing starts where it reaches ``dfb.grating_loss_per_cm``.
    """
    g0, loss, _ = _gain_and_loss(fluence_uJ_cm2, sample, doping)
    return _out(g0 - (loss - _dfb_of(sample).grating_loss_per_cm))


def dfb_pump_ratio(fluence_uJ_cm2, sample: Sample, doping=None):
    """Pump ratio x = g_0/alpha_tot of the rate equations (dimensionless): 0 at transparency, 1 at threshold."""
    g0, loss, _ = _gain_and_loss(fluence_uJ_cm2, sample, doping)
    return _out(g0 / loss)


def laser_photon_number(pump_ratio, beta: float):
    """Steady-state photon number S(x) = [(x-1) + sqrt((x-1)^2 + 4 beta x)]/(2 beta); 0 for x <= 0.

    Written in a form free of cancellation far below threshold (x < 1).
    """
    if not (0.0 < beta < 1.0):
        raise ParameterError(f"spontaneous coupling beta = {beta!r} must be between 0 and 1 (exclusive)")
    x = np.asarray(pump_ratio, dtype=float)
    xp = np.maximum(x, 0.0)
    root = np.sqrt((xp - 1.0) ** 2 + 4.0 * beta * xp)
    above = xp >= 1.0
    # below threshold: (x-1) + root = 4 beta x / (root - (x-1)), no cancellation
    s = np.where(above, ((xp - 1.0) + root) / (2.0 * beta), 2.0 * xp / (root + (1.0 - xp)))
    return _out(np.where(x > 0.0, s, 0.0))


def _threshold_mean_excitons(sample: Sample, d: np.ndarray) -> np.ndarray:
    """Nominal <N> at threshold for each doping (0 where the device never lases)."""
    values, inverse = np.unique(d, return_inverse=True)
    f_th = np.asarray([_threshold_scalar(sample, float(v)) for v in values])
    n_th = np.where(np.isfinite(f_th), f_th, 0.0) * dfb_kappa(_dfb_of(sample))
    return n_th[inverse].reshape(d.shape)


def _components(fluence, sample: Sample, doping):
    """(lasing output, PL background, photon number S), broadcast over fluence and doping."""
    dfb = _dfb_of(sample)
    g0, loss, mean_n = _gain_and_loss(fluence, sample, doping)
    d = np.broadcast_to(_doping(doping, sample), np.shape(g0))
    s = np.asarray(laser_photon_number(g0 / loss, dfb.spontaneous_coupling))
    n_th = _threshold_mean_excitons(sample, d)
    spont_th = -np.expm1(-n_th * sample.exciton_yield)
    lasing = dfb.spontaneous_coupling * s * spont_th
    background = dfb.pl_collection * -np.expm1(-mean_n * sample.exciton_yield)
    return lasing, background, s


def _linewidth(dfb: DfbParams, photon_number: np.ndarray) -> np.ndarray:
    return dfb.cavity_linewidth_nm / (1.0 + dfb.spontaneous_coupling * photon_number)


def dfb_output(fluence_uJ_cm2, sample: Sample, doping=None):
    """Emission collected normal to the DFB (lasing line + PL background) at a fluence in uJ/cm^2.

    Units: the spontaneous emission of the fully excited pump spot (arb.). Vectorised.
    """
    lasing, background, _ = _components(fluence_uJ_cm2, sample, doping)
    return _out(lasing + background)


def dfb_linewidth_nm(fluence_uJ_cm2, sample: Sample, doping=None):
    """Intrinsic FWHM (nm) of the lasing line: cavity_linewidth_nm / (1 + beta S)."""
    dfb = _dfb_of(sample)
    _, _, s = _components(fluence_uJ_cm2, sample, doping)
    return _out(_linewidth(dfb, s))


def _pl_density_per_nm(wavelength_nm: np.ndarray, sample: Sample) -> np.ndarray:
    """Gaussian PL band (in energy), as a density per nm with unit area."""
    sp = sample.spectra
    e = HC_EV_NM / wavelength_nm
    e_pl = HC_EV_NM / sp.abs_peak_nm - sp.pl_stokes_shift_meV * 1e-3
    sigma = sp.pl_linewidth_meV * 1e-3 * _FWHM_TO_SIGMA
    per_ev = np.exp(-0.5 * ((e - e_pl) / sigma) ** 2) / (sigma * math.sqrt(2.0 * math.pi))
    return per_ev * e / wavelength_nm  # |dE/dlambda| = hc/lambda^2 = E/lambda


def dfb_spectrum(wavelength_nm, fluence_uJ_cm2, sample: Sample, doping=None):
    """Emission spectrum normal to the DFB, per nm (units of ``dfb_output`` per nm).

    Result shape: ``broadcast(fluence, doping).shape + wavelength.shape``. A Lorentzian
    lasing line at the Bragg wavelength (FWHM ``dfb_linewidth_nm``) on the PL band;
    its integral over all wavelengths is ``dfb_output``.
    """
    lam = np.asarray(wavelength_nm, dtype=float)
    if not np.all(np.isfinite(lam)) or np.any(lam <= 0):
        raise ParameterError("wavelengths must be finite and positive, in nm")
    dfb = _dfb_of(sample)
    lasing, background, s = _components(fluence_uJ_cm2, sample, doping)
    expand = (Ellipsis,) + (None,) * lam.ndim
    hw = (0.5 * _linewidth(dfb, s))[expand]
    line = (hw / math.pi) / ((lam - bragg_wavelength_nm(dfb)) ** 2 + hw**2)
    return _out(lasing[expand] * line + background[expand] * _pl_density_per_nm(lam, sample))


def dfb_polarized_output(angle_deg, fluence_uJ_cm2, sample: Sample, doping=None):
    """Output through an analyser at ``angle_deg`` from the lasing polarisation (same units as ``dfb_output``).

    I(theta) = P_las [cos^2 theta + eps sin^2 theta]/(1 + eps) + background/2. Angle,
    fluence and doping broadcast together.
    """
    theta = np.deg2rad(np.asarray(angle_deg, dtype=float))
    if not np.all(np.isfinite(theta)):
        raise ParameterError("analyser angle must be a finite number of degrees")
    dfb = _dfb_of(sample)
    lasing, background, _ = _components(fluence_uJ_cm2, sample, doping)
    eps = dfb.polarization_extinction
    c2 = np.cos(theta) ** 2
    return _out(lasing * (c2 + eps * (1.0 - c2)) / (1.0 + eps) + 0.5 * background)


@functools.lru_cache(maxsize=256)
def _threshold_scalar(sample: Sample, d: float) -> float:
    dfb = _dfb_of(sample)
    f_max = MAX_MEAN_EXCITONS / (dfb_kappa(dfb) * sample.exciton_yield)

    def excess(f):
        g0, loss, _ = _gain_and_loss(f, sample, d)
        return g0 - loss

    if float(excess(0.0)) >= 0.0:
        return 0.0
    # the gain rises monotonically with <N>: bracket the root on a log grid, then refine
    grid = np.geomspace(1e-3, f_max, 64)
    vals = excess(grid)
    above = np.nonzero(vals >= 0.0)[0]
    if above.size == 0:
        return math.inf
    k = int(above[0])
    lo = 0.0 if k == 0 else float(grid[k - 1])
    return float(optimize.brentq(lambda f: float(excess(f)), lo, float(grid[k]), xtol=1e-9, rtol=1e-12))


def dfb_threshold_uJ_cm2(sample: Sample, doping=None):
    """Lasing threshold (uJ/cm^2, model truth): net modal gain = ``dfb.grating_loss_per_cm``.

    ``inf`` where no fluence reaches it (the gain saturates below the losses); 0 where
    the unpumped film already has gain. Scalar doping gives a float, arrays an array.
    """
    d = _doping(doping, sample)
    out = np.empty(d.shape)
    for idx, value in np.ndenumerate(d):
        out[idx] = _threshold_scalar(sample, float(value))
    return _out(out)


def grating_loss_for_threshold(sample: Sample, threshold_uJ_cm2: float, doping=None) -> float:
    """Grating loss (1/cm) that puts the model threshold at ``threshold_uJ_cm2`` (calibration helper).

    It is the net modal gain (before grating loss) at that fluence; an error if the
    film's own losses exceed the gain there (the device cannot lase at that fluence).
    """
    f = float(check_fluence(threshold_uJ_cm2))
    d = _doping(doping, sample)
    if d.ndim:
        raise ParameterError("grating_loss_for_threshold takes one doping value")
    g = float(dfb_modal_gain_per_cm(f, sample, float(d)))
    if g < 0:
        raise ParameterError(
            f"at {f:g} uJ/cm^2 the DFB's gain is {g:.4g} 1/cm below its waveguide + intraband losses: "
            f"no grating loss >= 0 puts the threshold there; allowed: a higher threshold fluence"
        )
    return g
