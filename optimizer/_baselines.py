"""Baselines with the same protocol: random search and a film-by-film grid (nested-type trials).

* ``random`` -- stripe length log-uniform, doping uniform (or a uniformly chosen library
  level), independent of the history; trial ``t`` is drawn from a generator seeded with
  ``(seed, t)``, so a resumed campaign repeats it exactly. Blind to cost: it asks for a
  new film nearly every trial, which is what makes it a baseline.
* ``grid`` -- a regular grid: ``n_lengths`` log-spaced stripe lengths x the library levels
  (discrete doping) or ``n_dopings`` evenly spaced dopings (continuous). Played film by
  film -- the mounted film first, then the others by distance from it -- with the stripe
  lengths snaking up and down so the slit moves little; the k-th trial (abandoned ones
  included: their points are not proposed again) takes the k-th grid point, wrapping round to repeat the grid.
"""

from __future__ import annotations

import numpy as np

from core.trial import Proposal

from ._base import Optimizer
from ._space import DOPING, LENGTH, NESTED_DIMS

__all__ = ["GridSearch", "RandomSearch"]


class _Baseline(Optimizer):
    joint = False

    def _attempted(self) -> int:
        return len(self._results) + len(self._pending)  # abandoned ones too: never proposed again


class RandomSearch(_Baseline):
    """Uniform random (stripe length in log, doping) per trial index."""

    strategy = "random"

    def __init__(self, space, **kwargs) -> None:
        super().__init__(space, **kwargs)

    def _propose(self, indices: list[int], seed: int) -> list[Proposal]:
        state = self.lab_state()
        out = []
        for idx in indices:
            rng = np.random.default_rng(self.trial_seed(idx))
            physical = self.space.from_unit(rng.random(2), NESTED_DIMS)
            if self.space.discrete:
                physical[DOPING] = float(self.space.doping[int(rng.integers(len(self.space.doping)))])
            out.append(self._proposal(idx, physical, state))
            state = state.after(out[-1].params)
        return out


class GridSearch(_Baseline):
    """A regular (stripe length x doping) grid, film by film (module docstring)."""

    strategy = "grid"

    def __init__(self, space, *, n_lengths: int = 6, n_dopings: int = 5, **kwargs) -> None:
        super().__init__(space, **kwargs)
        self.n_lengths = max(int(n_lengths), 1)
        self.n_dopings = max(int(n_dopings), 1)
        self._grid = self._build()

    def _build(self) -> list[dict[str, float]]:
        sp = self.space
        lengths = np.geomspace(*sp.stripe_length_um, self.n_lengths) if self.n_lengths > 1 else [sp.stripe_length_um[0]]
        if sp.discrete:
            dopings = list(sp.doping)
        else:
            lo, hi = sp.doping_bounds
            dopings = list(np.linspace(lo, hi, self.n_dopings)) if self.n_dopings > 1 else [0.5 * (lo + hi)]
        cur = self.initial_lab_state.current_doping
        if cur is not None:
            # the mounted film first (its doping replaces the nearest grid doping), then by distance
            k = int(np.argmin([abs(d - cur) for d in dopings]))
            lo, hi = sp.doping_bounds
            if sp.discrete or lo <= cur <= hi:
                dopings[k] = float(cur) if not sp.discrete else dopings[k]
            dopings.sort(key=lambda d: (abs(d - cur), d))
        grid = []
        for j, d in enumerate(dopings):
            ls = lengths if j % 2 == 0 else lengths[::-1]
            grid += [{LENGTH: float(length), DOPING: float(d)} for length in ls]
        return grid

    def _propose(self, indices: list[int], seed: int) -> list[Proposal]:
        state = self.lab_state()
        k = self._attempted()
        out = []
        for idx in indices:
            out.append(self._proposal(idx, self._grid[k % len(self._grid)], state))
            state = state.after(out[-1].params)
            k += 1
        return out
