"""Coupled-mode theory of a second-order DFB grating on a slab waveguide (pure functions, no presets).

Structure (x normal to the surface, z along the grating vector)::

    cover (air, n_c)                                  x > d + t
    CQD film (n_f, thickness t)                       d < x < d + t
    grating layer: TiO2 teeth (n_g, fraction D) and   0 < x < d
        CQD in the grooves (n_f, fraction 1 - D)
    substrate (sapphire, n_s)                         x < 0

Guided modes
    The TE (E along the grating lines, y) and TM modes of the unperturbed stack, whose
    grating layer has the average permittivity eps_bar = D eps_g + (1 - D) eps_f
    (TE; zeroth-order effective medium), come from a transfer-matrix dispersion relation
    (``slab_modes``). For a three-layer stack it is the same equation as
    ``twin.waveguide.slab_te0`` (tested to 1e-9).

Fourier coefficients of the rectangular grating (teeth fraction D)::

    eps(x, z) = eps_bar + sum_{m != 0} Delta_eps_m exp(i m K z),  K = 2 pi / Lambda,
    Delta_eps_m = (eps_g - eps_f) sin(pi m D) / (pi m)   inside 0 < x < d.

Coupled-wave equations of a second-order grating (Kazarinov & Henry, IEEE JQE 21, 144
(1985); Streifer, Scifres & Burnham, IEEE JQE 12, 422 (1976)). With R e^{+i beta z} and
S e^{-i beta z} the forward and backward waves, gamma0 the net modal amplitude gain
(power gain 2 gamma0 = Gamma g_mat - alpha_int) and delta = beta - K the detuning::

     R' = (gamma0 + i delta) R + i kappa S - h (R + S)
    -S' = (gamma0 + i delta) S + i kappa R - h (R + S)

* kappa = (k0^2 / 2 beta) Delta_eps_2 Gamma_g: direct (second-harmonic) Bragg coupling,
  Kogelnik & Shank (J. Appl. Phys. 43, 2327 (1972)); Gamma_g is the share of the mode's
  power in the grating layer. It vanishes at D = 1/2.
* h: the first harmonic scatters both waves into a field radiated normal to the surface
  (out-coupling of a second-order grating); that field couples back into both waves:
  h = i (k0^4 Delta_eps_1^2 / 2 beta) integral integral E(x) G(x, x') E(x') dx dx' over the
  grating layer, with G the outgoing Green's function of the stack at normal incidence
  (G'' + k0^2 eps_bar G = delta). Re h > 0 is the radiation loss (per unit length, amplitude).

Finite grating (pumped length L, no end reflections: R(0) = S(L) = 0). With
a = gamma0 + i delta - h, c = i kappa - h and Gamma^2 = a^2 - c^2 the threshold condition
is the eigenvalue equation::

    cosh(Gamma L) - a sinh(Gamma L) / Gamma = 0

(Kogelnik-Shank's ``gamma coth(gamma L) = alpha - i delta`` for h = 0), solved in the complex
plane for (gamma0, delta) by Newton's method (``coupled_mode_threshold``). Its lowest-gain root is the
lasing mode: the DFB's threshold "mirror" loss is 2 gamma0 (power, 1/cm), its wavelength is
offset from the Bragg wavelength by delta (lambda = lambda_B - lambda^2 delta / (2 pi n_g)).
Limits (tested): for h = 0 and kappa L >> 1, 2 gamma0 -> 2 pi^2 / (kappa^2 L^3) and
delta -> +-kappa (band edges); for kappa L << 1 the coupling gives no feedback:
gamma0 L -> ln(1 / (kappa L)) grows without bound. With radiation the two band-edge modes
split: the one whose waves radiate in phase (symmetric) loses 2 Re h more than the other.

Cavity Q and linewidth
    The cold-cavity photon loss rate is v_g (alpha_int + 2 gamma0), so
    Q = 2 pi n_g / (lambda alpha_tot) and the cold-cavity FWHM is lambda^2 alpha_tot / (2 pi n_g)
    (n_g the group index of the guided mode).

Every parameter the DFB twin uses, with its physical range and source, is in
``DFB_PARAMETER_RANGES`` (the structure the presets loader validates against).
"""

from __future__ import annotations

import cmath
import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import optimize

from core.errors import ParameterError

from ._xp import namespace

__all__ = [
    "DFB_PARAMETER_RANGES",
    "DFB_SHARED_VALUES",
    "CoupledModeResult",
    "DfbCavity",
    "DfbDesign",
    "GuidedMode",
    "ParameterRange",
    "bragg_condition_nm",
    "check_dfb_ranges",
    "coupled_mode_threshold",
    "dfb_cavity",
    "fourier_coefficient",
    "sapphire_ordinary_index",
    "slab_modes",
]


# ============================================================================================
# DFB PARAMETER RANGES (the presets loader validates the [sample.<id>.dfb] tables against these)
# ============================================================================================


@dataclass(frozen=True)
class ParameterRange:
    """Physical range of one DFB parameter: lo <= value <= hi (in ``unit``), and where it comes from."""

    lo: float
    hi: float
    unit: str
    source: str

    def check(self, name: str, value: float) -> float:
        v = float(value)
        if not (math.isfinite(v) and self.lo <= v <= self.hi):
            raise ParameterError(
                f"dfb.{name} = {value!r} is outside its physical range; allowed: {self.lo:g} to {self.hi:g} "
                f"{self.unit} ({self.source})"
            )
        return v


#: Every parameter of a ``[sample.<id>.dfb]`` table: physical range, unit and source.
DFB_PARAMETER_RANGES: dict[str, ParameterRange] = {
    "grating_period_nm": ParameterRange(
        600.0,
        1300.0,
        "nm",
        "second order (Lambda = lambda / n_eff, n_eff 1.8-2.0) across the PbS/PbSSe emission "
        "1.2-2.4 um; paper Methods: 860 and 870 nm",
    ),
    "grating_depth_nm": ParameterRange(
        30.0, 70.0, "nm", "paper Methods: 50 nm ALD TiO2 grown between PMMA lines (+-20 nm for ALD/lift-off)"
    ),
    "duty_cycle": ParameterRange(
        0.2, 0.8, "1", "TiO2 fraction of the period; not given in the paper (e-beam lines: 0.3-0.7 typical)"
    ),
    "grating_index": ParameterRange(
        2.15,
        2.45,
        "1",
        "ALD TiO2 at 1.5-1.7 um: 2.27 (Alasaarela et al., Appl. Opt. 49, 4321 (2010)); "
        "amorphous 2.2 to anatase 2.45 (Aarik et al., Thin Solid Films 305, 270 (1997))",
    ),
    "film_thickness_nm": ParameterRange(
        100.0,
        220.0,
        "nm",
        "paper Methods: 160 nm of CQDs spin-coated on the grating (+-60 nm: spin-coating and the groove fill)",
    ),
    "film_index": ParameterRange(
        2.2,
        3.2,
        "1",
        "CQD film at 1.66 um, Bruggeman mix of PbS(Se) dots (n 4.0-4.4, bulk PbS) and "
        "iodide/MPA ligands + voids (n 1.0-1.5) at packing 0.45-0.74; PbS NC films measure 2.2-2.7 "
        "(Chu et al., hal-03539861; Grinolds et al., Nano Lett. 15, 21 (2015))",
    ),
    "substrate_index": ParameterRange(
        1.73, 1.76, "1", "sapphire, ordinary ray, 1.5-1.8 um: 1.744 at 1.66 um (Malitson, JOSA 52, 1377 (1962))"
    ),
    "cover_index": ParameterRange(1.0, 1.7, "1", "air (1.0), or an ALD alumina/polymer overcoat (<= 1.7)"),
    "grating_length_um": ParameterRange(
        100.0,
        1000.0,
        "um",
        "pumped length of the grating = pump spot on the DFB; not given in the paper "
        "(Fig. 4c scale bar 0.5 mm; a focused 1030 nm spot is 0.1-1 mm)",
    ),
    "packing_fraction": ParameterRange(
        0.3, 0.74, "1", "dot volume fraction; 0.74 is the paper's assumption (close packing), the upper bound"
    ),
    "absorbed_fraction_1030": ParameterRange(
        0.01, 0.5, "1", "pump (1030 nm) absorption of the DFB film; paper: 19 % measured on the doped device"
    ),
    "dot_diameter_nm": ParameterRange(
        4.0,
        8.0,
        "nm",
        "diameter used for the dot density n_area = phi t / (pi d^3 / 6); C/A-S dots: 4.85 nm "
        "core + 2 x 1.1 nm shell = 7.05 nm (paper, TEM); the paper's <N> values count dots of about "
        "the core's volume (4.85 nm, Fig. 1; its 0.87 at 160 uJ/cm^2 implies 5.0 nm)",
    ),
    "spontaneous_coupling": ParameterRange(
        1e-5,
        1e-3,
        "1",
        "beta of a broad-area DFB with a 100-meV-wide gain band (Bjork & Yamamoto, "
        "IEEE JQE 27, 2386 (1991): 1e-5 to 1e-3 for mm-size DFB/VCSEL-like cavities)",
    ),
    "pl_collection": ParameterRange(
        0.005,
        0.1,
        "1",
        "share of the (isotropic, 100-meV-wide) PL the normal-incidence fibre port sees relative "
        "to the directional lasing beam: geometric NA ratio x spectral window",
    ),
    "threshold_narrowing": ParameterRange(
        0.05,
        1.0,
        "1",
        "KNOB: the lasing line at threshold is narrower than the cold cavity (width = "
        "lambda^2 alpha_tot / (2 pi n_g) from the Q) by gain narrowing; the pulsed-laser value is not "
        "predicted by the rate equations (1 = no narrowing)",
    ),
    "polarization_extinction": ParameterRange(
        1e-4,
        1e-2,
        "1",
        "analyser leakage I_perp/I_par for fully polarised light: NIR polariser datasheets "
        "(extinction 100:1 to 10000:1 at 1.6 um)",
    ),
}

#: Physical constants of the materials the DFB uses (defaults of ``DfbDesign``), with sources.
TIO2_ALD_INDEX = 2.27  # Alasaarela et al., Appl. Opt. 49, 4321 (2010): ALD TiO2, 1.53 um
PAPER_GRATING_DEPTH_NM = 50.0  # paper Methods: "50 nm TiO2 gratings"

#: Values shared by both of the paper's DFB devices (same gratings, same bench). Defaults of
#: ``DfbDesign``; the two marked CALIBRATED are the DFB's free parameters.
DFB_SHARED_VALUES: dict[str, float] = {
    "grating_depth_nm": PAPER_GRATING_DEPTH_NM,  # paper Methods
    "grating_index": TIO2_ALD_INDEX,  # literature (ALD TiO2)
    "duty_cycle": 0.4,  # ASSUMED (not in the paper; 0.3-0.7 moves the calibrated length, not the fit)
    "grating_length_um": 220.0,  # CALIBRATED: pumped length, to the doped device's 160 uJ/cm^2 threshold
    "threshold_narrowing": 0.49,  # CALIBRATED: gain narrowing, to the doped device's 1.0 nm linewidth
}
_SHARED = dict(DFB_SHARED_VALUES)  # the class defaults (the dict above may be edited by a calibration)


def check_dfb_ranges(values: dict) -> None:
    """Refuse any known DFB parameter outside ``DFB_PARAMETER_RANGES`` (ParameterError naming it and the range)."""
    for name, value in values.items():
        if name in DFB_PARAMETER_RANGES and value is not None:
            DFB_PARAMETER_RANGES[name].check(name, value)


class DfbDesign(BaseModel):
    """A second-order DFB device: the ``[sample.<id>.dfb]`` table, every value inside its physical range.

    This is the schema the presets loader should use for the dfb table (``twin.presets`` can
    import it: this module does not import the presets). Ranges and sources:
    ``DFB_PARAMETER_RANGES``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    grating_period_nm: float = Field(description="grating period Lambda, nm")
    grating_depth_nm: float = Field(_SHARED["grating_depth_nm"], description="height of the TiO2 teeth, nm")
    duty_cycle: float = Field(_SHARED["duty_cycle"], description="TiO2 fraction of the period (dimensionless)")
    grating_index: float = Field(_SHARED["grating_index"], description="refractive index of the TiO2 teeth at 1.66 um")
    film_thickness_nm: float = Field(description="CQD film thickness above the teeth, nm")
    film_index: float = Field(description="refractive index of the CQD film at the lasing wavelength")
    substrate_index: float = Field(1.744, description="refractive index of the substrate (sapphire)")
    cover_index: float = Field(1.0, description="refractive index above the film (air = 1)")
    grating_length_um: float = Field(_SHARED["grating_length_um"], description="pumped length of the grating, um")
    packing_fraction: float = Field(description="volume fraction of dots in the film (for <N>)")
    absorbed_fraction_1030: float = Field(description="fraction of the 1030 nm pump absorbed by the film")
    dot_diameter_nm: float = Field(description="dot diameter for the dot density, nm")
    spontaneous_coupling: float = Field(1e-4, description="beta: share of the spontaneous emission in the mode")
    pl_collection: float = Field(0.02, description="PL share collected with the lasing beam (dimensionless)")
    polarization_extinction: float = Field(1e-3, description="analyser leakage I_perp/I_par (dimensionless)")
    threshold_narrowing: float = Field(
        _SHARED["threshold_narrowing"],
        description="width of the lasing line at threshold over the cold-cavity width (gain narrowing; "
        "phenomenological, dimensionless)",
    )

    @model_validator(mode="after")
    def _in_range(self) -> DfbDesign:
        try:
            check_dfb_ranges(self.model_dump())
        except ParameterError as exc:
            raise ValueError(str(exc)) from None
        return self


# ============================================================================================
# materials


def sapphire_ordinary_index(wavelength_nm: float) -> float:
    """Ordinary refractive index of sapphire (Al2O3), Sellmeier fit of Malitson, JOSA 52, 1377 (1962).

    Valid 0.2-5.5 um; 1.7442 at 1.66 um.
    """
    lam = float(wavelength_nm) * 1e-3
    if not (0.2 <= lam <= 5.5):
        raise ParameterError(f"sapphire Sellmeier: wavelength {wavelength_nm!r} nm outside 200-5500 nm")
    l2 = lam * lam
    n2 = 1.0
    for b, c in ((1.4313493, 0.0726631), (0.65054713, 0.1193242), (5.3414021, 18.028251)):
        n2 += b * l2 / (l2 - c * c)
    return math.sqrt(n2)


def fourier_coefficient(order: int, index_contrast_eps: float, duty_cycle: float) -> float:
    """Delta_eps_m = (eps_teeth - eps_grooves) sin(pi m D) / (pi m) of a rectangular grating."""
    if order == 0:
        raise ParameterError("the m = 0 coefficient is the average permittivity, not a coupling")
    return index_contrast_eps * math.sin(math.pi * order * duty_cycle) / (math.pi * order)


# ============================================================================================
# guided modes of a multilayer slab (transfer matrix)


@dataclass(frozen=True)
class GuidedMode:
    """Fundamental TE or TM mode of the layered stack at one wavelength.

    ``n_eff``: effective index; ``confinement``: share of the modal power in the CQD
    (film + grooves of the grating layer, i.e. in the gain medium); ``grating_overlap``:
    share in the grating layer (Gamma_g); ``group_index``: n_g = n_eff - lambda dn_eff/dlambda
    (waveguide dispersion, dispersion-free materials); ``radiation_integral``: the double
    integral of E G E over the grating layer (nm^2, for normalised E), complex;
    ``emission_integrals``: k |int u E / W|^2 towards the cover and the substrate (nm^2), the
    far fields of the same source (their sum is -2 Im of the radiation integral: optical theorem).
    """

    polarization: str
    wavelength_nm: float
    n_eff: float
    confinement: float
    grating_overlap: float
    group_index: float
    radiation_integral: complex
    emission_integrals: tuple[float, float]


def _layer_stack(design_eps, thicknesses):
    return list(zip(design_eps, thicknesses, strict=True))


def _propagate(u, w, q2, p, d):
    """Carry (u, w) = (F, F'/p) across a layer of thickness d where F'' = -q2 F."""
    if q2 > 0:
        q = math.sqrt(q2)
        c, s = math.cos(q * d), math.sin(q * d)
        return u * c + p * w * s / q, -u * q * s / p + w * c
    if q2 < 0:
        g = math.sqrt(-q2)
        c, s = math.cosh(g * d), math.sinh(g * d)
        return u * c + p * w * s / g, u * g * s / p + w * c
    return u + p * w * d, w


def _mismatch(n_eff, k0, eps_s, layers, eps_c, tm):
    b2 = (k0 * n_eff) ** 2
    gs = math.sqrt(max(b2 - k0 * k0 * eps_s, 0.0))
    gc = math.sqrt(max(b2 - k0 * k0 * eps_c, 0.0))
    ps, pc = (eps_s, eps_c) if tm else (1.0, 1.0)
    u, w = 1.0, gs / ps
    for eps, d in layers:
        p = eps if tm else 1.0
        u, w = _propagate(u, w, k0 * k0 * eps - b2, p, d)
        # keep the numbers bounded (evanescent growth)
        scale = max(abs(u), abs(w) / k0, 1e-300)
        u, w = u / scale, w / scale
    return (w + gc / pc * u) / math.hypot(u, w / k0)


def _profile(n_eff, k0, eps_s, layers, eps_c, tm, points=96):
    """Field F (E_y for TE, H_y for TM) sampled in each layer (Gauss-Legendre), and the tails' integrals."""
    b2 = (k0 * n_eff) ** 2
    gs = math.sqrt(b2 - k0 * k0 * eps_s)
    gc = math.sqrt(b2 - k0 * k0 * eps_c)
    ps = eps_s if tm else 1.0
    xg, wg = np.polynomial.legendre.leggauss(points)
    u, w = 1.0, gs / ps
    out = []
    for eps, d in layers:
        p = eps if tm else 1.0
        q2 = k0 * k0 * eps - b2
        xs = 0.5 * d * (xg + 1.0)
        vals = np.array([_propagate(u, w, q2, p, x)[0] for x in xs])
        out.append((xs, 0.5 * d * wg, vals))
        u, w = _propagate(u, w, q2, p, d)
    tail_s = 1.0 / (2.0 * gs)  # integral of F^2 in the substrate (F(0) = 1)
    tail_c = u * u / (2.0 * gc)
    return out, tail_s, tail_c, gs, gc


def _fundamental_n_eff(k0, eps_s, layers, eps_c, tm) -> float:
    n_lo = math.sqrt(max(eps_s, eps_c))
    n_hi = math.sqrt(max(e for e, _ in layers))
    if n_hi <= n_lo:
        raise ParameterError("no guided mode: no layer's index exceeds the substrate and the cover")
    grid = np.linspace(n_hi, n_lo, 400)[:-1]
    grid[-1] = n_lo + 1e-9 * (n_hi - n_lo)
    vals = [_mismatch(n, k0, eps_s, layers, eps_c, tm) for n in grid]
    for i in range(len(grid) - 1):
        if vals[i] == 0.0:
            return float(grid[i])
        if vals[i] * vals[i + 1] < 0:
            return float(
                optimize.brentq(
                    _mismatch, grid[i + 1], grid[i], args=(k0, eps_s, layers, eps_c, tm), xtol=1e-14, rtol=1e-15
                )
            )
    raise ParameterError(
        f"the {'TM' if tm else 'TE'}0 mode is cut off: the stack guides no mode at {2 * math.pi / k0:.1f} nm"
    )


def _green_integral(k0, eps_s, layers, eps_c, j, prof):
    """Double integral of F(x) G(x, x') F(x') over layer ``j``; G the outgoing normal-incidence Green's function.

    G = u_L(x<) u_R(x>) / W with u_L ~ exp(-i k_s x) (outgoing into the substrate), u_R ~
    exp(+i k_c x) (outgoing into the cover) and W = u_L u_R' - u_L' u_R (exp(-i omega t)).
    """
    ks = k0 * math.sqrt(eps_s)
    kc = k0 * math.sqrt(eps_c)

    def carry(u, w, eps, x):
        q = k0 * cmath.sqrt(eps)
        return u * cmath.cos(q * x) + w * cmath.sin(q * x) / q, -u * q * cmath.sin(q * x) + w * cmath.cos(q * x)

    u, w = 1.0 + 0j, -1j * ks  # u_L at x = 0
    for eps, d in layers[:j]:
        u, w = carry(u, w, eps, d)
    start_l = (u, w)
    u, w = 1.0 + 0j, 1j * kc  # u_R at the top of the stack
    for eps, d in reversed(layers[j + 1 :]):
        u, w = carry(u, w, eps, -d)
    end_r = (u, w)
    eps, d = layers[j]
    xs, ws, f = prof[j]
    ul = np.array([carry(*start_l, eps, x)[0] for x in xs])
    wl = np.array([carry(*start_l, eps, x)[1] for x in xs])
    ur = np.array([carry(*end_r, eps, x - d)[0] for x in xs])
    wr = np.array([carry(*end_r, eps, x - d)[1] for x in xs])
    wronskian = ul[0] * wr[0] - wl[0] * ur[0]
    lower = xs[:, None] <= xs[None, :]
    g = np.where(lower, ul[:, None] * ur[None, :], ul[None, :] * ur[:, None]) / wronskian
    fw = f * ws
    # far fields of a unit source distribution F: up u_R(x) / W * int u_L F, down u_L(x) / W * int u_R F
    return complex(fw @ g @ fw), kc * abs(fw @ ul / wronskian) ** 2, ks * abs(fw @ ur / wronskian) ** 2


@functools.lru_cache(maxsize=512)
def _modes_cached(wavelength_nm, eps_s, eps_layers, thicknesses, eps_c, tm, grating_layer):
    k0 = 2.0 * math.pi / wavelength_nm
    layers = _layer_stack(eps_layers, thicknesses)
    n_eff = _fundamental_n_eff(k0, eps_s, layers, eps_c, tm)
    prof, tail_s, tail_c, _, _ = _profile(n_eff, k0, eps_s, layers, eps_c, tm)
    # TE power ~ integral E_y^2; TM power ~ integral H_y^2 / eps
    weights = [(1.0 / eps if tm else 1.0) for eps, _ in layers]
    layer_power = [wt * float(np.sum(ws * f * f)) for (xs, ws, f), wt in zip(prof, weights, strict=True)]
    total = (tail_s / eps_s if tm else tail_s) + (tail_c / eps_c if tm else tail_c) + sum(layer_power)
    g_int, up, down = _green_integral(k0, eps_s, layers, eps_c, grating_layer, prof)
    # normalise the field to unit integral of F^2 (TE) for the radiation integrals
    norm_sq = tail_s + tail_c + sum(float(np.sum(ws * f * f)) for xs, ws, f in prof)
    return n_eff, layer_power, total, g_int / norm_sq, up / norm_sq, down / norm_sq


def slab_modes(
    wavelength_nm: float,
    film_index: float,
    film_thickness_nm: float,
    grating_index: float,
    grating_depth_nm: float,
    duty_cycle: float,
    substrate_index: float,
    cover_index: float = 1.0,
    polarization: Literal["TE", "TM"] = "TE",
) -> GuidedMode:
    """Fundamental TE or TM mode of substrate | grating layer | CQD film | cover (see the module docstring)."""
    if polarization not in ("TE", "TM"):
        raise ParameterError(f"polarization must be 'TE' or 'TM', got {polarization!r}")
    lam = float(wavelength_nm)
    if not (math.isfinite(lam) and lam > 0):
        raise ParameterError(f"wavelength must be a positive number of nm, got {wavelength_nm!r}")
    tm = polarization == "TM"
    eps_f, eps_g = film_index**2, grating_index**2
    d = float(grating_depth_nm)
    if tm:
        # TM: E_x normal to the teeth walls sees the series (harmonic) average of the layer
        eps_bar = 1.0 / (duty_cycle / eps_g + (1.0 - duty_cycle) / eps_f)
    else:
        eps_bar = duty_cycle * eps_g + (1.0 - duty_cycle) * eps_f
    if d > 0:
        eps_layers, thick, grating_layer = (eps_bar, eps_f), (d, float(film_thickness_nm)), 0
    else:
        eps_layers, thick, grating_layer = (eps_f,), (float(film_thickness_nm),), 0

    def solve(lam_):
        return _modes_cached(lam_, substrate_index**2, eps_layers, thick, cover_index**2, tm, grating_layer)

    n_eff, layer_power, total, g_int, up, down = solve(lam)
    dl = 1e-3 * lam
    n_plus = solve(lam + dl)[0]
    n_minus = solve(lam - dl)[0]
    n_g = n_eff - lam * (n_plus - n_minus) / (2 * dl)
    gamma_g = layer_power[0] / total if d > 0 else 0.0
    # gain medium: the film and the grooves (share 1 - D of the grating layer's power, TE)
    conf = (layer_power[-1] + ((1.0 - duty_cycle) * layer_power[0] if d > 0 else 0.0)) / total
    return GuidedMode(
        polarization=polarization,
        wavelength_nm=lam,
        n_eff=float(n_eff),
        confinement=float(conf),
        grating_overlap=float(gamma_g),
        group_index=float(n_g),
        radiation_integral=complex(g_int),
        emission_integrals=(float(up), float(down)),
    )


# ============================================================================================
# coupled-mode theory


@dataclass(frozen=True)
class CoupledModeResult:
    """A mode of the finite DFB: threshold amplitude gain gamma0 (1/cm), detuning delta (1/cm)."""

    gamma0_per_cm: float
    delta_per_cm: float

    @property
    def mirror_loss_per_cm(self) -> float:
        """2 gamma0: the power gain the grating needs beyond the internal losses, 1/cm."""
        return 2.0 * self.gamma0_per_cm


def _threshold_fn(a, c, length):
    """Threshold condition f(a) = cosh(Gamma L) - a sinh(Gamma L)/Gamma, its derivative in a, and its scale.

    f is even in Gamma = sqrt(a^2 - c^2), so analytic in a. Where Re(Gamma L) > 3 the function
    returned is 2 exp(-Gamma L) f (same roots), written with a/Gamma - 1 = c^2/(Gamma (a + Gamma))
    so that it has no cancellation: 2 E - c^2 (1 - E)/(Gamma (a + Gamma)), E = exp(-2 Gamma L).
    """
    g = cmath.sqrt(a * a - c * c)
    x = g * length
    if x.real > 3.0:
        e2 = cmath.exp(-2.0 * x)
        cc, ss = 1.0 + e2, 1.0 - e2  # 2 exp(-x) cosh x, 2 exp(-x) sinh x
        q = c * c / (g * (a + g))
        val = 2.0 * e2 - q * ss
        dscaled = (length * a / g) * (-2.0 * e2 - q * cc) + ss * c * c / g**3
        return val, dscaled - length * (a / g) * val, abs(cc) + abs(a * ss / g)
    ch = cmath.cosh(x)
    if abs(x) < 1e-3:
        sh_g = length * (1.0 + x * x / 6.0)  # sinh(x) / Gamma
        odd = -(length**3) * (1.0 / 3.0 + x * x / 30.0)  # (sinh x - x cosh x) / Gamma^3
    else:
        sh_g = cmath.sinh(x) / g
        odd = (cmath.sinh(x) - x * ch) / g**3
    val = ch - a * sh_g
    der = length * a * sh_g - sh_g + a * a * odd
    return val, der, abs(ch) + abs(a * sh_g)


def coupled_mode_threshold(
    kappa_per_cm: float, h_per_cm: complex, length_cm: float, n_guesses: int = 24
) -> list[CoupledModeResult]:
    """Modes of the finite DFB (lowest threshold first), from the eigenvalue equation in the module docstring.

    ``kappa_per_cm``: direct coupling (real, 1/cm); ``h_per_cm``: radiation coupling (complex,
    Re h >= 0, 1/cm); ``length_cm``: pumped grating length. Returns the distinct roots with
    gamma0 > 0 found from a grid of starting points around the stop band.
    """
    if not (length_cm > 0 and math.isfinite(length_cm)):
        raise ParameterError(f"grating length must be positive, got {length_cm!r} cm")
    h = complex(h_per_cm)
    c = 1j * kappa_per_cm - h
    span = max(abs(kappa_per_cm), abs(h), 1.0 / length_cm)
    roots: list[tuple[float, float]] = []
    deltas = np.linspace(-3.0 * span, 3.0 * span, n_guesses)
    weak = math.log(2.0 + 2.0 / max(abs(c) * length_cm, 1e-300)) / length_cm  # gamma0 of a weak grating
    starts = [complex(g0, dl) for g0 in (0.5 / length_cm, 3.0 / length_cm, abs(h), weak) for dl in deltas]
    # band-edge modes of a strong grating (Kogelnik-Shank): delta^2 ~ kappa^2 + (j pi / L)^2,
    # gamma0 ~ (j pi)^2 / (kappa^2 L^3)
    ka = max(abs(c), 1e-300)
    for j in (1, 2, 3):
        edge = math.hypot(ka, j * math.pi / length_cm)
        g0 = (j * math.pi) ** 2 / (ka * ka * length_cm**3) + h.real
        starts += [complex(g0, edge), complex(g0, -edge)]
    for z0 in starts:
        z = z0  # z = gamma0 + i delta

        ok = False
        for _ in range(80):
            val, der, scale = _threshold_fn(z - h, c, length_cm)
            if der == 0 or not cmath.isfinite(val):
                break
            dz = val / der
            lim = 2.0 * span + 10.0 / length_cm  # damp wild steps
            if abs(dz) > lim:
                dz *= lim / abs(dz)
            z -= dz
            if abs(dz) < 1e-12 * (abs(z) + 1.0 / length_cm):
                val, _, scale = _threshold_fn(z - h, c, length_cm)
                ok = abs(val) < 1e-9 * scale
                break
        if ok and z.real > 0:
            if not any(abs(z.real - r) + abs(z.imag - i) < 1e-6 * (abs(z) + 1.0) for r, i in roots):
                roots.append((z.real, z.imag))
    roots.sort()
    return [CoupledModeResult(r, i) for r, i in roots]


# ============================================================================================
# the lasing mode of a DFB design


@functools.lru_cache(maxsize=2048)
def _n_eff_only(wavelength_nm, eps_s, eps_layers, thicknesses, eps_c, tm):
    k0 = 2.0 * math.pi / wavelength_nm
    return _fundamental_n_eff(k0, eps_s, _layer_stack(eps_layers, thicknesses), eps_c, tm)


def _stack(design: DfbDesign, tm: bool):
    eps_f, eps_g, dc = design.film_index**2, design.grating_index**2, design.duty_cycle
    eps_bar = 1.0 / (dc / eps_g + (1.0 - dc) / eps_f) if tm else dc * eps_g + (1.0 - dc) * eps_f
    return (
        design.substrate_index**2,
        (eps_bar, eps_f),
        (float(design.grating_depth_nm), float(design.film_thickness_nm)),
        design.cover_index**2,
    )


def bragg_condition_nm(design: DfbDesign, order: int = 2, polarization: Literal["TE", "TM"] = "TE") -> float:
    """Bragg wavelength (nm): m lambda = 2 n_eff(lambda) Lambda, solved self-consistently (fixed point).

    ``ParameterError`` ("no Bragg resonance") if the stack guides no mode there.
    """
    tm = polarization == "TM"
    eps_s, eps_layers, thick, eps_c = _stack(design, tm)
    period = float(design.grating_period_nm)
    lam = 2.0 * math.sqrt(max(eps_layers)) * period / order
    try:
        for _ in range(100):
            new = 2.0 * _n_eff_only(lam, eps_s, eps_layers, thick, eps_c, tm) * period / order
            if abs(new - lam) < 1e-10 * lam:
                return float(new)
            lam = new
    except ParameterError as exc:
        raise ParameterError(
            f"no Bragg resonance: the {design.film_thickness_nm:g} nm film of index {design.film_index:g} on the "
            f"grating (period {period:g} nm, order {order}) guides no {polarization}0 mode near {lam:.1f} nm; "
            f"allowed: a thicker film or a higher film index ({exc})"
        ) from None
    raise ParameterError("the Bragg condition did not converge")  # pragma: no cover - contraction ~0.1


@dataclass(frozen=True)
class DfbCavity:
    """The lasing (lowest-threshold) mode of a DFB design, cold cavity.

    Lengths in nm, rates in 1/cm. ``wavelength_nm`` is the band-edge mode's wavelength,
    ``bragg_nm`` the Bragg wavelength; ``kappa_per_cm`` the direct coupling, ``radiation_per_cm``
    the complex radiation coupling h (0 for a first-order grating), ``emission_up_per_cm`` and
    ``emission_down_per_cm`` the power one guided wave radiates per cm into the cover (air, towards
    the collection optics) and into the substrate (their sum is 2 Re h),
    ``mirror_loss_per_cm`` = 2 gamma0 of the eigenvalue equation, ``detuning_per_cm`` its delta.
    """

    polarization: str
    order: int
    bragg_nm: float
    wavelength_nm: float
    n_eff: float
    group_index: float
    confinement: float
    grating_overlap: float
    kappa_per_cm: float
    radiation_per_cm: complex
    emission_up_per_cm: float
    emission_down_per_cm: float
    mirror_loss_per_cm: float
    detuning_per_cm: float

    def linewidth_nm(self, total_loss_per_cm):
        """Cold-cavity FWHM (nm) for a total modal loss in 1/cm: lambda^2 alpha / (2 pi n_g)."""
        lam_cm = self.wavelength_nm * 1e-7
        loss = namespace(total_loss_per_cm).asarray(total_loss_per_cm)  # numpy, or torch (differentiable)
        return loss * lam_cm * lam_cm / (2.0 * math.pi * self.group_index) * 1e7


@functools.lru_cache(maxsize=256)
def dfb_cavity(design: DfbDesign, order: int = 2, polarization: Literal["TE", "TM"] = "TE") -> DfbCavity:
    """Coupled-mode solution of a DFB design: Bragg wavelength, kappa, h, threshold mirror loss, band-edge shift.

    ``order`` 1 (coupling by the first harmonic, no surface radiation) or 2 (coupling by the
    second harmonic, radiation through the first). Cached per design. For TM the same
    scalar expressions are evaluated with the TM mode's H_y profile (the E_x/E_z corrections
    of Streifer et al. are left out): an estimate, enough to tell where TM is cut off or has
    no gain, as on the paper's films.
    """
    if order not in (1, 2):
        raise ParameterError(f"Bragg order {order!r} is not supported; allowed: 1 or 2")
    if polarization not in ("TE", "TM"):
        raise ParameterError(f"polarization must be 'TE' or 'TM', got {polarization!r}")
    lam_b = bragg_condition_nm(design, order, polarization)
    mode = slab_modes(
        lam_b,
        design.film_index,
        design.film_thickness_nm,
        design.grating_index,
        design.grating_depth_nm,
        design.duty_cycle,
        design.substrate_index,
        design.cover_index,
        polarization,
    )
    k0 = 2.0 * math.pi / lam_b  # 1/nm
    beta = k0 * mode.n_eff
    contrast = design.grating_index**2 - design.film_index**2
    kappa = k0 * k0 / (2.0 * beta) * fourier_coefficient(order, contrast, design.duty_cycle) * mode.grating_overlap
    if order == 2:
        e1 = fourier_coefficient(1, contrast, design.duty_cycle)
        h = 1j * (k0**4 * e1 * e1 / (2.0 * beta)) * mode.radiation_integral * 1e7
        up, down = (k0**4 * e1 * e1 / beta * x * 1e7 for x in mode.emission_integrals)
    else:
        h, up, down = 0j, 0.0, 0.0
    kappa *= 1e7  # 1/nm -> 1/cm
    modes = coupled_mode_threshold(kappa, h, design.grating_length_um * 1e-4)
    if not modes:
        raise ParameterError("the DFB eigenvalue equation has no lasing mode for this design")  # pragma: no cover
    m = modes[0]
    lam = lam_b - lam_b * lam_b * m.delta_per_cm * 1e-7 / (2.0 * math.pi * mode.group_index)
    return DfbCavity(
        polarization=polarization,
        order=order,
        bragg_nm=lam_b,
        wavelength_nm=float(lam),
        n_eff=mode.n_eff,
        group_index=mode.group_index,
        confinement=mode.confinement,
        grating_overlap=mode.grating_overlap,
        kappa_per_cm=float(kappa),
        radiation_per_cm=complex(h),
        emission_up_per_cm=float(up),
        emission_down_per_cm=float(down),
        mirror_loss_per_cm=m.mirror_loss_per_cm,
        detuning_per_cm=m.delta_per_cm,
    )
