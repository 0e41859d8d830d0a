"""Asymmetric three-layer slab waveguide: the fundamental TE mode (TE0).

Geometry: cover (index n_c, x < 0) | film (n_f, 0 < x < t) | substrate (n_s, x > t),
with n_f > n_s >= n_c for a guided mode (the roles of cover and substrate are
symmetric; the larger of the two sets the cut-off). For a mode index n_eff
between max(n_s, n_c) and n_f, with k0 = 2 pi / lambda::

    kappa   = k0 sqrt(n_f^2 - n_eff^2)      (transverse wavenumber in the film)
    gamma_s = k0 sqrt(n_eff^2 - n_s^2)      (decay constant in the substrate)
    gamma_c = k0 sqrt(n_eff^2 - n_c^2)      (decay constant in the cover)

and the TE dispersion relation of mode m (m = 0 here) is::

    kappa t = m pi + arctan(gamma_s / kappa) + arctan(gamma_c / kappa)

solved for n_eff by Brent's method (the left side minus the right side falls
monotonically from > 0 at n_eff = max(n_s, n_c) to -pi at n_eff = n_f).

The TE field E_y is ``cos(phi) exp(gamma_c x)`` in the cover, ``cos(kappa x - phi)``
in the film and ``cos(psi) exp(-gamma_s (x - t))`` in the substrate, with
tan(phi) = gamma_c/kappa and psi = kappa t - phi (so tan(psi) = gamma_s/kappa). The
guided power density of a TE mode is proportional to |E_y|^2 in every layer, so
the confinement factor (fraction of the modal power in the film) is::

    Gamma = I_f / (I_c + I_f + I_s),
    I_c = cos^2(phi) / (2 gamma_c),  I_s = cos^2(psi) / (2 gamma_s),
    I_f = t/2 + [sin(2 psi) + sin(2 phi)] / (4 kappa).

An asymmetric guide cuts TE0 off below the thickness
``t_c = arctan(sqrt((n_s^2 - n_c^2)/(n_f^2 - n_s^2))) / (k0 sqrt(n_f^2 - n_s^2))``;
asking for a thinner film is an error that says so.
"""

from __future__ import annotations

import math

from scipy import optimize

from core.errors import ParameterError

__all__ = ["slab_te0", "te0_cutoff_thickness_nm"]


def _check_positive(name: str, value: float, unit: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ParameterError(f"{name} must be a finite positive number of {unit}, got {value!r}")
    return v


def _check_index(name: str, value: float) -> float:
    v = float(value)
    if not math.isfinite(v) or v < 1.0:
        raise ParameterError(f"{name} must be a finite refractive index >= 1, got {value!r}")
    return v


def _check_guide(film_index: float, substrate_index: float, cover_index: float) -> None:
    if film_index <= max(substrate_index, cover_index):
        raise ParameterError(
            f"no guided mode: the film index {film_index:g} must exceed both the substrate index "
            f"{substrate_index:g} and the cover index {cover_index:g}"
        )


def te0_cutoff_thickness_nm(wavelength_nm: float, film_index: float, substrate_index: float, cover_index: float = 1.0):
    """Thinnest film (nm) that guides TE0 at this wavelength (0 for a symmetric guide)."""
    lam = _check_positive("wavelength", wavelength_nm, "nm")
    nf = _check_index("film index", film_index)
    ns = _check_index("substrate index", substrate_index)
    nc = _check_index("cover index", cover_index)
    _check_guide(nf, ns, nc)
    n_hi, n_lo = max(ns, nc), min(ns, nc)
    k0 = 2.0 * math.pi / lam
    root = math.sqrt(nf**2 - n_hi**2)
    return math.atan(math.sqrt(n_hi**2 - n_lo**2) / root) / (k0 * root)


def slab_te0(
    wavelength_nm: float,
    film_index: float,
    thickness_nm: float,
    substrate_index: float,
    cover_index: float = 1.0,
) -> tuple[float, float]:
    """Effective index and confinement factor of the TE0 mode of a slab waveguide.

    ``wavelength_nm``: vacuum wavelength (nm); ``thickness_nm``: film thickness (nm);
    indices are real refractive indices (>= 1). Returns ``(n_eff, confinement)``,
    both dimensionless, confinement = fraction of the modal power in the film.
    Scalars only. Raises ``ParameterError`` for invalid inputs, for a film index not
    above the substrate and cover, and for a film thinner than the TE0 cut-off.
    """
    lam = _check_positive("wavelength", wavelength_nm, "nm")
    t = _check_positive("film thickness", thickness_nm, "nm")
    nf = _check_index("film index", film_index)
    ns = _check_index("substrate index", substrate_index)
    nc = _check_index("cover index", cover_index)
    _check_guide(nf, ns, nc)
    k0 = 2.0 * math.pi / lam
    n_lo = max(ns, nc)

    def consts(n):
        kap = k0 * math.sqrt(max(nf * nf - n * n, 0.0))
        gs = k0 * math.sqrt(max(n * n - ns * ns, 0.0))
        gc = k0 * math.sqrt(max(n * n - nc * nc, 0.0))
        return kap, gs, gc

    def mismatch(n):
        kap, gs, gc = consts(n)
        return kap * t - math.atan2(gs, kap) - math.atan2(gc, kap)

    if mismatch(n_lo) <= 0.0:
        t_c = te0_cutoff_thickness_nm(lam, nf, ns, nc)
        raise ParameterError(
            f"the TE0 mode is cut off: a {t:g} nm film (index {nf:g}) on substrate {ns:g} under cover {nc:g} "
            f"guides no mode at {lam:g} nm; allowed: thickness above the cut-off {t_c:.4g} nm"
        )
    n_eff = optimize.brentq(mismatch, n_lo, nf, xtol=1e-14, rtol=1e-15, maxiter=200)
    kap, gs, gc = consts(n_eff)
    if gs <= 0.0 or gc <= 0.0:
        # numerically at the cut-off (symmetric guide with a vanishing film): no power in the film
        return float(n_eff), 0.0
    phi = math.atan2(gc, kap)
    psi = kap * t - phi
    i_cover = math.cos(phi) ** 2 / (2.0 * gc)
    i_sub = math.cos(psi) ** 2 / (2.0 * gs)
    i_film = 0.5 * t + (math.sin(2.0 * psi) + math.sin(2.0 * phi)) / (4.0 * kap)
    return float(n_eff), float(i_film / (i_cover + i_film + i_sub))
