"""Occupancy statistics of the band-edge (1S) states of a doped CQD ensemble.

Model (state filling of a g-fold degenerate 1S level, electrons and holes alike):

* Photo-excited excitons per dot are Poisson distributed with mean ``<N>``
  (excitons/dot): ``P(N) = <N>^N exp(-<N>) / N!``.
* Permanent (doping) electrons per dot ``n_e`` follow a distribution ``Q(n_e)``
  chosen by ``kind``:

  - ``"fixed"``: a two-level mix of floor(<n_e>) and ceil(<n_e>) electrons;
  - ``"binomial"``: each of the g 1S states is filled with p = <n_e>/g;
  - ``"poisson"``: Poisson numbers of electrons; those beyond g spill into the 1P
    level. The doping coordinate ``<n_e>`` is the *1S filling* the lab measures
    from the bleach, <min(n, g)>, and the Poisson mean is solved from it.

* In a dot with N excitons and n_e doping electrons the 1S electron and hole
  fillings are f_e = min(n_e + N, g)/g and f_h = min(N, g)/g. Its absorption at
  the band edge, normalised to the unexcited neutral dot, is the absorbing
  weight minus the stimulated-emission weight::

      a(N, n_e) = (1 - f_e)(1 - f_h) - f_e f_h = 1 - f_e - f_h

* The ensemble's normalised absorption ``alpha/alpha0 = sum_ne Q sum_N P a`` and the
  normalised gain ``G = -alpha/alpha0`` runs from -1 (transparent pump) to +1 (full
  inversion). The gain threshold ``<N_th>`` is the ``<N>`` where G = 0.

With g = 8 the neutral threshold is 4.036 and a fixed n_e = 7 gives W(1) = 0.567.

``exciton_yield`` (dimensionless, 0-1] scales the nominal ``<N>`` (from the pump
fluence) to the excitons that reach the band edge (the rest are lost to traps).
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
from scipy import optimize, special

from core.errors import ParameterError

from ._xp import TORCH, is_tensor, to_numpy

__all__ = [
    "DOPING_KINDS",
    "DopingKind",
    "GainTable",
    "band_edge_weights",
    "doping_distribution",
    "doping_range",
    "exciton_distribution",
    "gain_table",
    "gain_threshold",
    "normalized_absorption",
    "normalized_gain",
    "per_dot_absorption",
    "poisson_mean_for_filling",
]

DopingKind = Literal["fixed", "binomial", "poisson"]
DOPING_KINDS: tuple[str, ...] = ("fixed", "binomial", "poisson")

#: Largest <N> (excitons/dot) the statistics are evaluated for.
MAX_MEAN_EXCITONS = 60.0
#: Largest 1S filling a Poisson doping distribution may have, as a fraction of g
#: (the Poisson mean diverges as the filling approaches g).
_POISSON_MAX_FILLING_FRACTION = 0.99


def doping_range(g: int, kind: str) -> tuple[float, float]:
    """Allowed doping <n_e> (1S electrons/dot) for a degeneracy g and distribution kind."""
    _check_kind(kind)
    if kind == "poisson":
        return 0.0, _POISSON_MAX_FILLING_FRACTION * g
    return 0.0, float(g)


def _check_kind(kind: str) -> None:
    if kind not in DOPING_KINDS:
        raise ParameterError(f"unknown doping distribution {kind!r}; allowed: {', '.join(DOPING_KINDS)}")


def _check_g(g: int) -> None:
    if not isinstance(g, (int, np.integer)) or g < 1:
        raise ParameterError(f"band-edge degeneracy g must be a positive integer, got {g!r}")


def _as_checked(name: str, value, lo: float, hi: float, unit: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise ParameterError(f"{name} must be finite (got NaN or inf); allowed: {lo:g} to {hi:g} {unit}")
    if np.any(arr < lo) or np.any(arr > hi):
        bad = arr[(arr < lo) | (arr > hi)].ravel()[0]
        raise ParameterError(f"{name} = {bad:g} {unit} is out of range; allowed: {lo:g} to {hi:g} {unit}")
    return arr


def _n_max_excitons(mean: np.ndarray | float) -> int:
    m = float(np.max(mean)) if np.size(mean) else 0.0
    return math.ceil(m + 10.0 * math.sqrt(m + 1.0) + 12.0)


def exciton_distribution(mean_excitons, n_max: int | None = None) -> np.ndarray:
    """Poisson probabilities P(N) for N = 0..n_max, shape ``mean.shape + (n_max+1,)``.

    ``mean_excitons`` is <N> in excitons/dot (>= 0).
    """
    mean = _as_checked("<N>", mean_excitons, 0.0, MAX_MEAN_EXCITONS * 4, "excitons/dot")
    if n_max is None:
        n_max = _n_max_excitons(mean)
    n = np.arange(n_max + 1, dtype=float)
    m = mean[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = special.xlogy(n, m) - m - special.gammaln(n + 1.0)
    p = np.exp(logp)
    # <N> = 0: all dots empty (0 * log 0 -> nan above).
    p = np.where(m == 0.0, (n == 0).astype(float), p)
    return p


@functools.lru_cache(maxsize=64)
def _filling_curve(g: int) -> tuple[np.ndarray, np.ndarray]:
    """Tabulated 1S filling <min(n, g)> versus the Poisson mean lambda (monotonic)."""
    lam = np.concatenate([np.linspace(0.0, 4.0 * g, 4001)[:-1], np.linspace(4.0 * g, 12.0 * g, 2001)])
    n_max = int(12 * g + 20 * math.sqrt(12 * g) + 20)
    n = np.arange(n_max + 1)
    p = exciton_distribution(lam, n_max)
    filling = p @ np.minimum(n, g)
    return filling, lam


def poisson_mean_for_filling(filling, g: int):
    """Poisson mean lambda (electrons/dot) whose 1S filling <min(n, g)> equals ``filling``."""
    f_tab, lam_tab = _filling_curve(g)
    if is_tensor(filling):  # the differentiable twin: the same linear interpolation in torch
        return TORCH.interp(filling, f_tab, lam_tab)
    return np.interp(np.asarray(filling, dtype=float), f_tab, lam_tab)


def doping_distribution(doping, g: int, kind: str, n_max: int | None = None) -> np.ndarray:
    """Probabilities Q(n_e) of n_e = 0..n_max permanent electrons per dot.

    ``doping`` is the 1S filling <n_e> in electrons/dot (what the bleach measures),
    scalar or array; the result has shape ``doping.shape + (n_max+1,)``.
    """
    _check_g(g)
    _check_kind(kind)
    lo, hi = doping_range(g, kind)
    ne = _as_checked("doping <n_e>", doping, lo, hi, "electrons/dot")
    if kind == "poisson":
        lam = poisson_mean_for_filling(ne, g)
        if n_max is None:
            n_max = _n_max_excitons(lam)
        return exciton_distribution(lam, n_max)
    if n_max is None:
        n_max = g
    if n_max < g:
        raise ParameterError(f"n_max = {n_max} must be at least g = {g}")
    k = np.arange(n_max + 1)
    if kind == "fixed":
        lo_n = np.floor(ne)
        frac = ne - lo_n
        q = (k == lo_n[..., None]) * (1.0 - frac[..., None]) + (k == lo_n[..., None] + 1) * frac[..., None]
        return q
    # binomial over the g states of the 1S level
    p = (ne / g)[..., None]
    kk = np.minimum(k, g)
    with np.errstate(divide="ignore", invalid="ignore"):
        logq = (
            special.gammaln(g + 1.0)
            - special.gammaln(kk + 1.0)
            - special.gammaln(g - kk + 1.0)
            + special.xlogy(kk, p)
            + special.xlog1py(g - kk, -p)
        )
    q = np.where(k <= g, np.exp(logq), 0.0)
    return q


def per_dot_absorption(n_excitons, n_electrons, g: int) -> np.ndarray:
    """a(N, n_e) = 1 - [min(n_e + N, g) + min(N, g)] / g: a dot's 1S absorption / alpha0."""
    n_x = np.asarray(n_excitons, dtype=float)
    n_e = np.asarray(n_electrons, dtype=float)
    return 1.0 - (np.minimum(n_e + n_x, g) + np.minimum(n_x, g)) / g


def _state_weights(n_x: np.ndarray, n_e: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    f_e = np.minimum(n_e + n_x, g) / g
    f_h = np.minimum(n_x, g) / g
    return (1.0 - f_e) * (1.0 - f_h), f_e * f_h


def band_edge_weights(mean_excitons, doping, g: int, kind: str, exciton_yield: float = 1.0):
    """Ensemble absorbing and emitting weights (B, S) of the 1S transition.

    ``alpha/alpha0 = B - S`` at the gain peak. B is the fraction of transitions that
    absorb (empty electron and hole state), S the fraction that can be stimulated
    (filled electron and hole state). Shapes broadcast between ``mean_excitons``
    (<N>, excitons/dot) and ``doping`` (<n_e>, electrons/dot).
    """
    _check_g(g)
    if not (0.0 < exciton_yield <= 1.0):
        raise ParameterError(f"exciton_yield = {exciton_yield!r} must be in (0, 1]")
    mean = _as_checked("<N>", mean_excitons, 0.0, MAX_MEAN_EXCITONS, "excitons/dot")
    ne = np.asarray(doping, dtype=float)
    mean, ne = np.broadcast_arrays(mean * exciton_yield, ne)
    q = doping_distribution(ne, g, kind)  # (..., Ne)
    p = exciton_distribution(mean)  # (..., Nx)
    n_x = np.arange(p.shape[-1], dtype=float)
    n_e = np.arange(q.shape[-1], dtype=float)
    w_abs, w_em = _state_weights(n_x[:, None], n_e[None, :], g)  # (Nx, Ne)
    b = np.sum(p * (q @ w_abs.T), axis=-1)
    s = np.sum(p * (q @ w_em.T), axis=-1)
    return b, s


def normalized_absorption(mean_excitons, doping, g: int = 8, kind: str = "fixed", exciton_yield: float = 1.0):
    """Ensemble 1S absorption alpha/alpha0 (dimensionless) at <N> excitons/dot and doping <n_e>."""
    b, s = band_edge_weights(mean_excitons, doping, g, kind, exciton_yield)
    return b - s


def normalized_gain(mean_excitons, doping, g: int = 8, kind: str = "fixed", exciton_yield: float = 1.0):
    """Normalised material gain G = -alpha/alpha0, from -1 (no pump, neutral) to +1."""
    return -normalized_absorption(mean_excitons, doping, g, kind, exciton_yield)


def gain_threshold(doping=0.0, g: int = 8, kind: str = "fixed", exciton_yield: float = 1.0):
    """Gain threshold <N_th> (excitons/dot, on the nominal <N> scale): G(<N_th>) = 0.

    Returns 0 where the unexcited ensemble already has gain (never for n_e <= g).
    Scalar in, float out; array in, array out.
    """
    ne = np.asarray(doping, dtype=float)
    out = np.empty(ne.shape)
    for idx, value in np.ndenumerate(ne):
        g0 = float(normalized_gain(0.0, value, g, kind, exciton_yield))
        if g0 >= 0.0:
            out[idx] = 0.0
            continue
        hi = MAX_MEAN_EXCITONS / 2
        if float(normalized_gain(hi, value, g, kind, exciton_yield)) <= 0.0:
            raise ParameterError(f"no gain below <N> = {hi} excitons/dot for doping {value}")
        out[idx] = optimize.brentq(
            lambda m, v=value: float(normalized_gain(m, v, g, kind, exciton_yield)), 0.0, hi, xtol=1e-10
        )
    return float(out) if out.ndim == 0 else out


class GainTable:
    """Tabulated band-edge weights B and S over a (doping, <N>) grid for fast batches.

    The exact statistics (``band_edge_weights``) cost O(N_max x n_e,max) per point;
    benchmarks and campaigns ask for millions of points, so the weights are
    tabulated once per (g, kind) on a grid of doping (step ``doping_step``
    electrons/dot) and band-edge <N> (uniform in sqrt(<N>), denser at low <N>) and
    interpolated bilinearly. B and S are stored as one complex table (B + iS) so
    that one gather fetches both. The fixed-mix distribution is exactly linear in
    doping between integers; the interpolation error in G is below 1e-5 for every
    kind (tested).
    """

    def __init__(self, g: int, kind: str, doping_step: float = 0.02, n_nodes: int = 1201):
        _check_g(g)
        _check_kind(kind)
        self.g = g
        self.kind = kind
        lo, hi = doping_range(g, kind)
        n_dop = max(round((hi - lo) / doping_step) + 1, 2)
        self.doping_grid = np.linspace(lo, hi, n_dop)
        self._u_max = math.sqrt(MAX_MEAN_EXCITONS)
        self.mean_grid = np.minimum(np.linspace(0.0, self._u_max, n_nodes) ** 2, MAX_MEAN_EXCITONS)
        q = doping_distribution(self.doping_grid, g, kind)  # (D, Ne)
        p = exciton_distribution(self.mean_grid)  # (M, Nx)
        n_x = np.arange(p.shape[-1], dtype=float)
        n_e = np.arange(q.shape[-1], dtype=float)
        w_abs, w_em = _state_weights(n_x[:, None], n_e[None, :], g)  # (Nx, Ne)
        b = (q @ w_abs.T) @ p.T  # (D, M)
        s = (q @ w_em.T) @ p.T
        self._table = np.ascontiguousarray(b + 1j * s).ravel()
        self._n_mean = n_nodes

    def weights(self, mean_excitons, doping) -> tuple[np.ndarray, np.ndarray]:
        """(B, S) at band-edge <N> (excitons/dot, clipped to the table) and doping <n_e>.

        torch tensors in: torch out (the same bilinear interpolation, differentiable in both)."""
        if is_tensor(mean_excitons) or is_tensor(doping):
            mean, dop = to_numpy(mean_excitons), to_numpy(doping)
            if mean is not None and dop is not None:
                self._check(mean, dop)
            return self._weights_torch(mean_excitons, doping)
        mean = np.asarray(mean_excitons, dtype=float)
        dop = np.asarray(doping, dtype=float)
        d_lo, d_hi = self._check(mean, dop)
        nu = self._n_mean - 1
        x = np.sqrt(np.minimum(mean, MAX_MEAN_EXCITONS)) * (nu / self._u_max)
        i = np.minimum(x.astype(np.int64), nu - 1)
        tx = x - i
        nd = len(self.doping_grid) - 1
        y = (dop - d_lo) * (nd / (d_hi - d_lo))
        j = np.minimum(y.astype(np.int64), nd - 1)
        ty = y - j
        k = j * self._n_mean + i
        tab = self._table
        v00 = tab[k]
        v01 = tab[k + 1]
        v10 = tab[k + self._n_mean]
        v11 = tab[k + self._n_mean + 1]
        top = v00 + (v01 - v00) * tx
        val = top + ((v10 + (v11 - v10) * tx) - top) * ty
        return val.real, val.imag

    def _check(self, mean: np.ndarray, dop: np.ndarray) -> tuple[float, float]:
        d_lo, d_hi = self.doping_grid[0], self.doping_grid[-1]
        if np.any(~np.isfinite(dop)) or np.any(dop < d_lo) or np.any(dop > d_hi):
            raise ParameterError(f"doping <n_e> outside {d_lo:g} to {d_hi:g} electrons/dot for kind {self.kind!r}")
        if np.any(~np.isfinite(mean)) or np.any(mean < 0):
            raise ParameterError("<N> must be finite and >= 0 excitons/dot")
        return d_lo, d_hi

    def _weights_torch(self, mean_excitons, doping):
        """``weights`` in torch: the same grid, indices and bilinear weights (B and S as two real tables)."""
        import torch

        xp = TORCH
        mean = xp.asarray(mean_excitons)
        dop = xp.asarray(doping)
        d_lo, d_hi = float(self.doping_grid[0]), float(self.doping_grid[-1])
        tables = getattr(self, "_torch_tables", None)
        if tables is None:
            tables = self._torch_tables = (
                torch.from_numpy(self._table.real.copy()),
                torch.from_numpy(self._table.imag.copy()),
            )
        nu = self._n_mean - 1
        x = torch.sqrt(torch.clamp(mean, max=MAX_MEAN_EXCITONS)) * (nu / self._u_max)
        i = torch.clamp(x.detach().to(torch.int64), max=nu - 1)
        tx = x - i
        nd = len(self.doping_grid) - 1
        y = (dop - d_lo) * (nd / (d_hi - d_lo))
        j = torch.clamp(y.detach().to(torch.int64), max=nd - 1)
        ty = y - j
        i, j, tx, ty = torch.broadcast_tensors(i, j, tx, ty)
        k = j * self._n_mean + i
        out = []
        for tab in tables:
            v00 = xp.gather(tab, k)
            v01 = xp.gather(tab, k + 1)
            v10 = xp.gather(tab, k + self._n_mean)
            v11 = xp.gather(tab, k + self._n_mean + 1)
            top = v00 + (v01 - v00) * tx
            out.append(top + ((v10 + (v11 - v10) * tx) - top) * ty)
        return out[0], out[1]

    def gain(self, mean_excitons, doping) -> np.ndarray:
        """Normalised gain G = S - B at band-edge <N> (excitons/dot) and doping <n_e>."""
        b, s = self.weights(mean_excitons, doping)
        return s - b


@functools.lru_cache(maxsize=16)
def gain_table(g: int, kind: str) -> GainTable:
    """Shared, cached ``GainTable`` for a degeneracy and doping distribution."""
    return GainTable(g, kind)
