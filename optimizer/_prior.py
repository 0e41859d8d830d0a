"""A physics prior for the nested threshold GP: the twin's map of -ln threshold as the GP's mean.

The optimiser knows nothing of the twin (import-linter): the service computes the twin's predicted
threshold on a grid of (stripe length, doping) and hands it over as a ``PriorMap``. The map may be
a *family*: one map per value of one physical parameter of the twin (e.g. the 1P intraband
absorption, which sets where in doping the threshold turns up), the presets' own value among them.
The GP's mean is the map, interpolated (bilinear in ln stripe length and doping, linear along the
family), with a learnable affine correction, a learnable position in the family and a learnable
shift of stripe length:

    m(L, n) = (offset + ref + scale * (prior_t(ln L - shift_ln_length, n) - ref) - y_mean) / y_sd

in the GP's standardised units (``y_mean``, ``y_sd``: the mean and spread of the training outcomes
that ``Standardize`` uses; ``ref``: the best value of the presets' own map). ``offset`` (ln units)
0 and ``scale`` 1 is "the twin is right, level and depth": the *absolute* thresholds the campaign
measures on the films it has (seconds of lab time each) inform the family parameter before a new
film is committed. ``offset``, ``scale`` (> 0), ``t`` (the family
parameter) and the length shift are fitted with the kernel's hyperparameters by maximum marginal
likelihood: the campaign's own scans recalibrate the twin (its level, its depth, the family
parameter) at every suggestion. The family parameter starts from the best of a few points along
the family (the likelihood is not convex in it). Weak priors keep the fit sane on a handful of
points: ``offset`` normal around 0 (sd ``level_sd``, 0.5 in ln threshold: a factor 1.65),
``scale`` log-normal around 1 (sd 1 in ln), ``t`` normal around the presets' own value
(sd: a quarter of the family's range), the length shift normal (sd 0.5 in ln um). When the map is wrong,
``scale`` drops towards 0 and the GP is the plain GP (a constant mean): the data win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from gpytorch.constraints import Interval, Positive
from gpytorch.means import Mean
from gpytorch.priors import LogNormalPrior, NormalPrior

from core.errors import ParameterError

from ._space import DOPING, LENGTH, SearchSpace

__all__ = ["PriorMap", "TwinPriorMean"]

DTYPE = torch.float64


@dataclass(frozen=True)
class PriorMap:
    """The twin's predicted ``-ln(threshold_uJ_cm2)`` on a regular grid, optionally a family of maps.

    ``stripe_length_um``: (nL,) increasing, log-spaced (um); ``doping``: (nD,) increasing, evenly
    spaced (electrons/dot); ``neg_ln_threshold``: (nP, nD, nL) finite values of -ln of the
    threshold in uJ/cm^2 (where the twin reaches no threshold, the caller puts a large one), one
    map per value of ``family`` (nP values of the parameter ``family_name``, in its units; nP = 1
    and ``family`` empty: one map). ``family_index``: the fractional index of the presets' own
    value in ``family``. ``source``: what it was computed from, for the record.
    """

    stripe_length_um: tuple[float, ...]
    doping: tuple[float, ...]
    neg_ln_threshold: tuple
    family: tuple[float, ...] = ()
    family_name: str = ""
    family_index: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        lengths = np.asarray(self.stripe_length_um, dtype=float)
        dopings = np.asarray(self.doping, dtype=float)
        values = np.asarray(self.neg_ln_threshold, dtype=float)
        if lengths.ndim != 1 or dopings.ndim != 1 or lengths.size < 2 or dopings.size < 2:
            raise ParameterError("PriorMap needs at least 2 stripe lengths and 2 dopings (1-D)")
        n_p = max(len(self.family), 1)
        if values.shape != (n_p, dopings.size, lengths.size):
            raise ParameterError(
                f"PriorMap values must be (n_family, n_doping, n_length) = ({n_p}, {dopings.size}, {lengths.size}),"
                f" got {values.shape}"
            )
        if not (np.all(np.isfinite(values)) and np.all(lengths > 0)):
            raise ParameterError("PriorMap values must be finite and stripe lengths > 0")
        if not 0.0 <= self.family_index <= n_p - 1:
            raise ParameterError(f"PriorMap family_index must be 0 to {n_p - 1}, got {self.family_index!r}")
        for name, axis in (("ln stripe length", np.log(lengths)), ("doping", dopings)):
            step = np.diff(axis)
            if not (np.all(step > 0) and np.allclose(step, step[0], rtol=1e-6, atol=1e-12)):
                raise ParameterError(f"PriorMap's {name} axis must be increasing and evenly spaced")

    @classmethod
    def from_arrays(
        cls, stripe_length_um, doping, neg_ln_threshold, *, family=(), family_name="", family_index=0.0, source=""
    ) -> PriorMap:
        """From numpy arrays; ``neg_ln_threshold`` (nD, nL) for one map or (nP, nD, nL) for a family."""
        values = np.asarray(neg_ln_threshold, dtype=float)
        if values.ndim == 2:
            values = values[None]
        return cls(
            tuple(float(v) for v in np.ravel(stripe_length_um)),
            tuple(float(v) for v in np.ravel(doping)),
            tuple(tuple(tuple(float(v) for v in row) for row in m) for m in values),
            tuple(float(v) for v in family),
            family_name,
            float(family_index),
            source,
        )

    def family_value(self, index: float) -> float | None:
        """The family parameter's value at a fractional index (linear between the family's values)."""
        if not self.family:
            return None
        return float(np.interp(index, np.arange(len(self.family)), self.family))

    def predict(self, stripe_length_um, doping, family_index: float | None = None) -> np.ndarray:
        """The map at physical points (clamped to the grid): -ln threshold (float64 array); the presets' own
        member of the family unless ``family_index`` is given."""
        length = torch.as_tensor(np.asarray(stripe_length_um, dtype=float))
        d = torch.as_tensor(np.asarray(doping, dtype=float))
        length, d = torch.broadcast_tensors(length, d)
        t = torch.tensor(self.family_index if family_index is None else family_index, dtype=DTYPE)
        G, axes = _grid(self)
        return _interp(G, axes, torch.log(length).to(DTYPE), d.to(DTYPE), t).numpy()


def _grid(prior: PriorMap) -> tuple[torch.Tensor, tuple[float, float, float, float]]:
    ln = np.log(np.asarray(prior.stripe_length_um))
    dop = np.asarray(prior.doping)
    G = torch.tensor(prior.neg_ln_threshold, dtype=DTYPE)
    return G, (float(ln[0]), float(ln[1] - ln[0]), float(dop[0]), float(dop[1] - dop[0]))


def _interp(G: torch.Tensor, axes, ln_length: torch.Tensor, doping: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Trilinear interpolation of ``G`` (nP x nD x nL) at fractional family index ``t`` (a scalar tensor)."""
    ln0, dln, d0, dd = axes
    nP, nD, nL = G.shape
    fl = ((ln_length - ln0) / dln).clamp(0.0, nL - 1 - 1e-9)
    fd = ((doping - d0) / dd).clamp(0.0, nD - 1 - 1e-9)
    il, idp = fl.detach().floor().long(), fd.detach().floor().long()
    tl, td = fl - il, fd - idp

    def plane(k: int) -> torch.Tensor:
        g = G[k]
        return (1 - td) * ((1 - tl) * g[idp, il] + tl * g[idp, il + 1]) + td * (
            (1 - tl) * g[idp + 1, il] + tl * g[idp + 1, il + 1]
        )

    if nP == 1:
        return plane(0)
    tc = t.clamp(0.0, nP - 1 - 1e-9)
    k = int(tc.detach().floor())
    w = tc - k
    return (1 - w) * plane(k) + w * plane(k + 1)


class TwinPriorMean(Mean):
    """GPyTorch mean: the twin's map with a learnable offset, scale, family parameter and length shift.

    Args:
        prior: the map (physical units).
        space: the search space (unit-cube inputs -> stripe length um, doping e/dot).
        y_mean, y_sd: the mean and spread of the training outcomes (-ln threshold) that ``Standardize`` uses.
        level_sd: the prior sd of ``offset`` (ln threshold).
    Input ``x``: ``... x n x 2`` unit-cube (stripe length, doping); output ``... x n``.
    """

    def __init__(
        self,
        prior: PriorMap,
        space: SearchSpace,
        y_mean: float,
        y_sd: float,
        level_sd: float = 0.3,
        shift_ln_length_sd: float = 0.5,
    ) -> None:
        super().__init__()
        G, axes = _grid(prior)
        self.register_buffer("grid", G)
        self._axes = axes
        self.prior_map = prior
        self.space = space
        self.n_family = int(G.shape[0])
        self.register_buffer("y_sd", torch.tensor(max(float(y_sd), 1e-8), dtype=DTYPE))
        self.register_buffer("y_mean", torch.tensor(float(y_mean), dtype=DTYPE))
        own = G[round(prior.family_index)]
        self.register_buffer("ref", own.max().detach().clone())
        self.register_parameter("offset", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
        self.register_parameter("raw_scale", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
        self.register_constraint("raw_scale", Positive())
        self.register_parameter("shift_ln_length", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
        self._set("raw_scale", self.raw_scale_constraint.inverse_transform(torch.tensor(1.0, dtype=DTYPE)))
        self.register_prior("scale_prior", LogNormalPrior(0.0, 1.0), lambda m: m.scale, lambda m, v: m._set_scale(v))
        self.register_prior("shift_ln_length_prior", NormalPrior(0.0, shift_ln_length_sd), "shift_ln_length")
        self.register_prior("offset_prior", NormalPrior(0.0, level_sd), "offset")
        if self.n_family > 1:
            top = float(self.n_family - 1)
            self.register_parameter("raw_family", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
            self.register_constraint("raw_family", Interval(0.0, top))
            self._set_family(prior.family_index)
            self.register_prior(
                "family_prior",
                NormalPrior(float(prior.family_index), 0.25 * top),
                lambda m: m.family_index,
                lambda m, v: m._set_family(v),
            )

    def _set(self, name: str, value) -> None:
        with torch.no_grad():
            getattr(self, name).copy_(torch.as_tensor(value, dtype=DTYPE))

    @property
    def scale(self) -> torch.Tensor:
        return self.raw_scale_constraint.transform(self.raw_scale)

    def _set_scale(self, value) -> None:
        self._set("raw_scale", self.raw_scale_constraint.inverse_transform(torch.as_tensor(value, dtype=DTYPE)))

    @property
    def family_index(self) -> torch.Tensor:
        if self.n_family == 1:
            return torch.tensor(0.0, dtype=DTYPE)
        return self.raw_family_constraint.transform(self.raw_family)

    def _set_family(self, value) -> None:
        top = float(self.n_family - 1)
        v = torch.as_tensor(value, dtype=DTYPE).clamp(1e-6, top - 1e-6)
        self._set("raw_family", self.raw_family_constraint.inverse_transform(v))

    def map_at(self, x: torch.Tensor) -> torch.Tensor:
        """The fitted member of the map (-ln threshold, physical units) at unit-cube ``x`` (``... x 2 -> ...``)."""
        phys = self.space.from_unit_tensor(x)
        ln_length = torch.log(phys[LENGTH]) - self.shift_ln_length
        return _interp(self.grid, self._axes, ln_length, phys[DOPING], self.family_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.offset + self.ref + self.scale * (self.map_at(x) - self.ref) - self.y_mean) / self.y_sd

    def family_starts(self, n: int = 5) -> list[float]:
        """Fractional family indices to start the fit from (the presets' own value first)."""
        if self.n_family == 1:
            return [0.0]
        top = self.n_family - 1
        return [float(self.prior_map.family_index), *np.linspace(0.0, top, n).tolist()]

    def state(self) -> dict:
        """The fitted correction, plain numbers: offset (ln threshold), scale, family value, length shift."""
        t = float(self.family_index.detach())
        out = {
            "offset_ln": float(self.offset.detach()),
            "scale": float(self.scale.detach()),
            "shift_ln_length": float(self.shift_ln_length.detach()),
            "shift_length_factor": math.exp(float(self.shift_ln_length.detach())),
        }
        if self.n_family > 1:
            out["family_parameter"] = self.prior_map.family_name
            out["family_value"] = self.prior_map.family_value(t)
            out["family_value_presets"] = self.prior_map.family_value(self.prior_map.family_index)
        return out
