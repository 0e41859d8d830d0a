"""A physics prior for the nested threshold GP: the twin's map of -ln threshold as the GP's mean.

The optimiser knows nothing of the twin (import-linter): the service computes the twin's predicted
threshold on a grid of (stripe length, doping) and hands it over as a ``PriorMap``; the GP's mean
is that map, bilinearly interpolated (in ln stripe length and doping), with a learnable affine
correction and a learnable shift of the map:

    m(L, n) = offset + scale * prior(ln L - shift_ln_length, n - shift_doping) / y_sd

in the GP's standardised units (``y_sd``: the spread of the training outcomes, so ``scale`` = 1
is "the twin's landscape has the right depth"). ``offset``, ``scale`` (> 0) and the two shifts
are fitted with the kernel's hyperparameters by maximum marginal likelihood: the campaign's own
scans recalibrate the map (its level, its depth, where its basin lies in doping and length) at
every suggestion. Weak priors keep the fit sane on a handful of points: ``scale`` log-normal
around 1 (sd 1 in ln), the doping shift normal with sd ``shift_doping_sd`` (0.3 electrons/dot)
and the length shift normal with sd ``shift_ln_length_sd`` (0.5 in ln um). When the map is
wrong, ``scale`` drops towards 0 and the GP is the plain GP (a constant mean): the data win.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from gpytorch.constraints import Positive
from gpytorch.means import Mean
from gpytorch.priors import LogNormalPrior, NormalPrior

from core.errors import ParameterError

from ._space import DOPING, LENGTH, SearchSpace

__all__ = ["PriorMap", "TwinPriorMean"]

DTYPE = torch.float64


@dataclass(frozen=True)
class PriorMap:
    """The twin's predicted ``-ln(threshold_uJ_cm2)`` on a regular grid.

    ``stripe_length_um``: (nL,) increasing, log-spaced (um); ``doping``: (nD,) increasing,
    evenly spaced (electrons/dot); ``neg_ln_threshold``: (nD, nL) finite values of -ln of the
    threshold in uJ/cm^2 (where the twin reaches no threshold, the caller puts a large one).
    ``source``: what it was computed from (e.g. the presets file and sample), for the record.
    """

    stripe_length_um: tuple[float, ...]
    doping: tuple[float, ...]
    neg_ln_threshold: tuple[tuple[float, ...], ...]
    source: str = ""

    def __post_init__(self) -> None:
        lengths = np.asarray(self.stripe_length_um, dtype=float)
        dopings = np.asarray(self.doping, dtype=float)
        values = np.asarray(self.neg_ln_threshold, dtype=float)
        if lengths.ndim != 1 or dopings.ndim != 1 or lengths.size < 2 or dopings.size < 2:
            raise ParameterError("PriorMap needs at least 2 stripe lengths and 2 dopings (1-D)")
        if values.shape != (dopings.size, lengths.size):
            raise ParameterError(
                f"PriorMap values must be (n_doping, n_length) = ({dopings.size}, {lengths.size}), got {values.shape}"
            )
        if not (np.all(np.isfinite(values)) and np.all(lengths > 0)):
            raise ParameterError("PriorMap values must be finite and stripe lengths > 0")
        ln = np.log(lengths)
        for name, axis in (("ln stripe length", ln), ("doping", dopings)):
            step = np.diff(axis)
            if not (np.all(step > 0) and np.allclose(step, step[0], rtol=1e-6, atol=1e-12)):
                raise ParameterError(f"PriorMap's {name} axis must be increasing and evenly spaced")

    @classmethod
    def from_arrays(cls, stripe_length_um, doping, neg_ln_threshold, source: str = "") -> PriorMap:
        return cls(
            tuple(float(v) for v in np.ravel(stripe_length_um)),
            tuple(float(v) for v in np.ravel(doping)),
            tuple(tuple(float(v) for v in row) for row in np.asarray(neg_ln_threshold, dtype=float)),
            source,
        )

    def predict(self, stripe_length_um, doping) -> np.ndarray:
        """The map (bilinear, clamped to the grid) at physical points: -ln threshold (float64 array)."""
        length = torch.as_tensor(np.asarray(stripe_length_um, dtype=float))
        d = torch.as_tensor(np.asarray(doping, dtype=float))
        length, d = torch.broadcast_tensors(length, d)
        return _bilinear(self, torch.log(length), d).numpy()


def _grid(prior: PriorMap) -> tuple[torch.Tensor, float, float, float, float]:
    ln = np.log(np.asarray(prior.stripe_length_um))
    dop = np.asarray(prior.doping)
    G = torch.tensor(prior.neg_ln_threshold, dtype=DTYPE)
    return G, float(ln[0]), float(ln[1] - ln[0]), float(dop[0]), float(dop[1] - dop[0])


def _interp(G: torch.Tensor, ln0: float, dln: float, d0: float, dd: float, ln_length, doping) -> torch.Tensor:
    nD, nL = G.shape
    fl = ((ln_length - ln0) / dln).clamp(0.0, nL - 1 - 1e-9)
    fd = ((doping - d0) / dd).clamp(0.0, nD - 1 - 1e-9)
    il, idp = fl.detach().floor().long(), fd.detach().floor().long()
    tl, td = fl - il, fd - idp
    g00 = G[idp, il]
    g01 = G[idp, il + 1]
    g10 = G[idp + 1, il]
    g11 = G[idp + 1, il + 1]
    return (1 - td) * ((1 - tl) * g00 + tl * g01) + td * ((1 - tl) * g10 + tl * g11)


def _bilinear(prior: PriorMap, ln_length: torch.Tensor, doping: torch.Tensor) -> torch.Tensor:
    return _interp(*_grid(prior), ln_length.to(DTYPE), doping.to(DTYPE))


class TwinPriorMean(Mean):
    """GPyTorch mean: the twin's map with a learnable offset, scale and shift (module docstring).

    Args:
        prior: the map (physical units).
        space: the search space (unit-cube inputs -> stripe length um, doping e/dot).
        y_sd: the spread of the training outcomes (-ln threshold) that ``Standardize`` divides by.
        offset0: the starting offset (standardised units).
    Input ``x``: ``... x n x 2`` unit-cube (stripe length, doping); output ``... x n``.
    """

    def __init__(
        self,
        prior: PriorMap,
        space: SearchSpace,
        y_sd: float,
        offset0: float = 0.0,
        shift_doping_sd: float = 0.3,
        shift_ln_length_sd: float = 0.5,
    ) -> None:
        super().__init__()
        G, ln0, dln, d0, dd = _grid(prior)
        self.register_buffer("grid", G)
        self._axes = (ln0, dln, d0, dd)
        self.space = space
        self.register_buffer("y_sd", torch.tensor(max(float(y_sd), 1e-8), dtype=DTYPE))
        self.register_parameter("offset", torch.nn.Parameter(torch.tensor(float(offset0), dtype=DTYPE)))
        self.register_parameter("raw_scale", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
        self.register_constraint("raw_scale", Positive())
        self.initialize(scale=1.0)
        self.register_parameter("shift_doping", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
        self.register_parameter("shift_ln_length", torch.nn.Parameter(torch.tensor(0.0, dtype=DTYPE)))
        self.register_prior("scale_prior", LogNormalPrior(0.0, 1.0), lambda m: m.scale, lambda m, v: m._set_scale(v))
        self.register_prior("shift_doping_prior", NormalPrior(0.0, shift_doping_sd), "shift_doping")
        self.register_prior("shift_ln_length_prior", NormalPrior(0.0, shift_ln_length_sd), "shift_ln_length")

    @property
    def scale(self) -> torch.Tensor:
        return self.raw_scale_constraint.transform(self.raw_scale)

    @scale.setter
    def scale(self, value) -> None:
        self._set_scale(value)

    def _set_scale(self, value) -> None:
        value = torch.as_tensor(value, dtype=DTYPE)
        self.initialize(raw_scale=self.raw_scale_constraint.inverse_transform(value))

    def map_at(self, x: torch.Tensor) -> torch.Tensor:
        """The shifted map (-ln threshold, physical units) at unit-cube ``x`` (``... x 2`` -> ``...``)."""
        phys = self.space.from_unit_tensor(x)
        ln_length = torch.log(phys[LENGTH]) - self.shift_ln_length
        doping = phys[DOPING] - self.shift_doping
        return _interp(self.grid, *self._axes, ln_length, doping)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset + self.scale * self.map_at(x) / self.y_sd

    def state(self) -> dict:
        """The fitted correction, plain numbers: offset (standardised), scale, shifts (e/dot, ln um)."""
        return {
            "offset": float(self.offset.detach()),
            "scale": float(self.scale.detach()),
            "shift_doping": float(self.shift_doping.detach()),
            "shift_ln_length": float(self.shift_ln_length.detach()),
            "shift_length_factor": math.exp(float(self.shift_ln_length.detach())),
        }
