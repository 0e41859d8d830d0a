"""Slab waveguide TE0 solver: known limits and an independent finite-difference mode solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, optimize

from core.errors import ParameterError
from twin.waveguide import slab_te0, te0_cutoff_thickness_nm


def _fd_te0(wavelength_nm, film_index, thickness_nm, substrate_index, cover_index, step_nm=1.0, margin_nm=4000.0):
    """Fundamental TE mode by finite differences: E'' + k0^2 n(x)^2 E = beta^2 E on a uniform grid.

    Interfaces sit half-way between nodes; the field vanishes at the box walls.
    """
    x = np.arange(-margin_nm + 0.5 * step_nm, thickness_nm + margin_nm, step_nm)
    n = np.where(x < 0, cover_index, np.where(x < thickness_nm, film_index, substrate_index))
    k0 = 2 * math.pi / wavelength_nm
    diag = -2.0 / step_nm**2 + (k0 * n) ** 2
    off = np.full(x.size - 1, 1.0 / step_nm**2)
    w, v = linalg.eigh_tridiagonal(diag, off, select="i", select_range=(x.size - 1, x.size - 1))
    field = v[:, 0]
    in_film = (x > 0) & (x < thickness_nm)
    return math.sqrt(w[0]) / k0, float(np.sum(field[in_film] ** 2) / np.sum(field**2))


@pytest.mark.parametrize(
    ("lam", "nf", "t", "ns", "nc"),
    [
        (1660.0, 2.6885, 160.0, 1.75, 1.0),  # the cas DFB
        (1550.0, 3.5, 220.0, 1.444, 1.0),  # silicon slab on oxide
        (1660.0, 2.4, 300.0, 1.45, 1.33),  # weak asymmetry, water cover
        (1000.0, 1.6, 2000.0, 1.5, 1.5),  # symmetric, weakly guiding
    ],
)
def test_matches_finite_difference_mode_solver(lam, nf, t, ns, nc):
    n_eff, gamma = slab_te0(lam, nf, t, ns, nc)
    n_fd, gamma_fd = _fd_te0(lam, nf, t, ns, nc)
    assert n_eff == pytest.approx(n_fd, abs=5e-5)
    assert gamma == pytest.approx(gamma_fd, abs=1e-4)


def test_symmetric_slab_even_mode_condition():
    # symmetric guide: TE0 obeys tan(kappa t / 2) = gamma / kappa, solved here independently in the
    # normalised variable u = kappa t / 2 with V = k0 t / 2 sqrt(nf^2 - n^2): u tan u = sqrt(V^2 - u^2)
    lam, nf, ns, t = 1550.0, 2.0, 1.5, 400.0
    v = math.pi * t / lam * math.sqrt(nf**2 - ns**2)
    u = optimize.brentq(lambda u: u * math.tan(u) - math.sqrt(v**2 - u**2), 1e-12, min(v, math.pi / 2) - 1e-12)
    n_expected = math.sqrt(nf**2 - (u * lam / (math.pi * t)) ** 2)
    w = math.sqrt(v**2 - u**2)
    # closed-form power fraction in the core of a symmetric slab
    gamma_expected = (1 + math.sin(2 * u) / (2 * u)) / (1 + math.sin(2 * u) / (2 * u) + math.cos(u) ** 2 / w)
    n_eff, gamma = slab_te0(lam, nf, t, ns, ns)
    assert n_eff == pytest.approx(n_expected, abs=1e-10)
    assert gamma == pytest.approx(gamma_expected, abs=1e-10)


def test_thick_film_limit_index_and_confinement():
    n_thick, g_thick = slab_te0(1660.0, 2.6, 20000.0, 1.75)
    assert 2.6 - n_thick < 1e-3
    assert g_thick > 0.99
    thicknesses = [120.0, 200.0, 400.0, 1000.0, 5000.0]
    out = np.array([slab_te0(1660.0, 2.6, t, 1.75) for t in thicknesses])
    assert np.all(np.diff(out[:, 0]) > 0)
    assert np.all(np.diff(out[:, 1]) > 0)
    assert np.all((out[:, 0] > 1.75) & (out[:, 0] < 2.6))


def test_cover_and_substrate_roles_are_symmetric():
    a = slab_te0(1660.0, 2.6, 200.0, 1.75, 1.0)
    b = slab_te0(1660.0, 2.6, 200.0, 1.0, 1.75)
    assert a == pytest.approx(b, abs=1e-12)


def test_cutoff_is_a_clear_error():
    t_c = te0_cutoff_thickness_nm(1660.0, 2.6, 1.75, 1.0)
    assert 50.0 < t_c < 150.0
    n_eff, gamma = slab_te0(1660.0, 2.6, t_c * 1.01, 1.75, 1.0)
    assert 1.75 < n_eff < 1.76
    assert gamma < 0.1
    with pytest.raises(ParameterError, match=r"cut off.*allowed: thickness above the cut-off"):
        slab_te0(1660.0, 2.6, t_c * 0.99, 1.75, 1.0)
    assert te0_cutoff_thickness_nm(1660.0, 2.6, 1.5, 1.5) == 0.0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1660.0, 1.7, 160.0, 1.75, 1.0), "must exceed both the substrate"),
        ((float("nan"), 2.6, 160.0, 1.75, 1.0), "wavelength must be a finite positive"),
        ((1660.0, 2.6, -5.0, 1.75, 1.0), "thickness must be a finite positive"),
        ((1660.0, 2.6, 160.0, 0.5, 1.0), "substrate index must be a finite refractive index"),
    ],
)
def test_invalid_inputs(args, match):
    with pytest.raises(ParameterError, match=match):
        slab_te0(*args)
