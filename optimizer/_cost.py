"""Lab-time cost of a trial: what the optimiser divides its acquisition value by, and what it records.

A trial's cost (seconds of lab time) is the sum of

* a film: ``new_film_s`` (default 6 h: ligand exchange + ALD) plus ``film_measurement_s``
  (measuring the new film's doping from its absorption before its first trial; default 0,
  a campaign prices its bench's: ``gainloop.campaign.campaign_cost``) plus ``sample_change_s``
  when no film of the proposed doping exists yet, ``sample_change_s`` (20 s) when a
  different film exists but is not mounted, nothing when it is mounted;
* the slit move: ``|L - L_current| / slit_speed_um_per_s`` (nothing when unknown);
* the measurement: ``scan_points x acquisition_s`` for a nested trial (an adaptive
  fluence scan), ``acquisition_s`` for a joint trial (one acquisition).

``LabState`` is what the cost depends on: the mounted film's doping, the dopings of the
films that exist, the current stripe length. The optimiser derives it from its history
(every ingested trial's doping is a film that exists; the last trial's film and stripe
are mounted) on top of the state it was started with.

One model serves the decision and the record. ``CostModel.cost_s`` prices a batch of
trials as a float64 tensor: the strategies' cost-aware acquisitions divide by it (through
``Optimizer.expected_cost_s``, on unit-cube candidates), and ``trial_cost_s`` -- the
``expected_cost_s`` a ``Proposal`` records -- is the same computation on one trial's
parameters. No strategy keeps a copy of the formula.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch

from core.errors import ParameterError
from core.rows import Row

__all__ = ["CostModel", "LabState"]


@dataclass(frozen=True)
class LabState:
    """What the bench holds now: mounted film's doping, films made (dopings), stripe length (um)."""

    current_doping: float | None = None
    films: tuple[float, ...] = ()
    stripe_length_um: float | None = None

    def __post_init__(self) -> None:
        films = tuple(sorted({float(d) for d in self.films}))
        if self.current_doping is not None and not any(abs(self.current_doping - d) < 1e-12 for d in films):
            films = tuple(sorted({*films, float(self.current_doping)}))
        object.__setattr__(self, "films", films)

    def after(self, params: Mapping[str, Any]) -> LabState:
        """The state once a trial at ``params`` has run (its film exists and is mounted)."""
        d = float(params["doping"])
        length = params.get("stripe_length_um", self.stripe_length_um)
        return replace(
            self,
            current_doping=d,
            films=(*self.films, d),
            stripe_length_um=None if length is None else float(length),
        )

    def as_dict(self) -> dict:
        return {
            "current_doping": self.current_doping,
            "films": list(self.films),
            "stripe_length_um": self.stripe_length_um,
        }


@dataclass(frozen=True)
class CostModel(Row):
    """Seconds of lab time per step; ``film_doping_tol`` (electrons/dot): two dopings closer are one film."""

    new_film_s: float = 6 * 3600.0
    sample_change_s: float = 20.0
    film_measurement_s: float = 0.0
    slit_speed_um_per_s: float = 500.0
    acquisition_s: float = 3.5
    scan_points: int = 28
    film_doping_tol: float = 0.02

    def __post_init__(self) -> None:
        for name in ("new_film_s", "sample_change_s", "film_measurement_s", "acquisition_s", "film_doping_tol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ParameterError(f"CostModel.{name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(self.slit_speed_um_per_s) and self.slit_speed_um_per_s > 0):
            raise ParameterError(f"CostModel.slit_speed_um_per_s must be > 0, got {self.slit_speed_um_per_s!r}")
        if not (isinstance(self.scan_points, int) and self.scan_points >= 1):
            raise ParameterError(f"CostModel.scan_points must be an integer >= 1, got {self.scan_points!r}")
        if self.acquisition_s <= 0:
            raise ParameterError(f"CostModel.acquisition_s must be > 0 s, got {self.acquisition_s!r}")

    # ---- the cost, vectorised -------------------------------------------------------
    def film_cost_s(self, doping: torch.Tensor | float, state: LabState) -> torch.Tensor:
        """Seconds to have the film of each ``doping`` (electrons/dot) mounted, from ``state``.

        Zero for the mounted film, ``sample_change_s`` for another existing film,
        ``new_film_s + film_measurement_s + sample_change_s`` for a doping with no film (a
        new film is made, measured, then mounted) -- whether or not anything is mounted now. Two dopings within
        ``film_doping_tol`` are one film. Returns a float64 tensor of ``doping``'s shape;
        it is piecewise constant (no gradient in doping).
        """
        d = torch.as_tensor(doping, dtype=torch.float64)
        films = torch.tensor(state.films, dtype=torch.float64)  # (k,), possibly empty
        exists = ((d.unsqueeze(-1) - films).abs() <= self.film_doping_tol).any(-1)
        change = torch.full_like(d, self.sample_change_s)
        new = torch.full_like(d, self.new_film_s + self.film_measurement_s + self.sample_change_s)
        film = torch.where(exists, change, new)
        if state.current_doping is not None:
            mounted = (d - state.current_doping).abs() <= self.film_doping_tol
            film = torch.where(mounted, torch.zeros_like(d), film)
        return film

    def slit_cost_s(self, stripe_length_um: torch.Tensor | float, state: LabState) -> torch.Tensor:
        """Seconds to move the slit to each ``stripe_length_um`` (um); zero when its position is unknown.

        A float64 tensor of ``stripe_length_um``'s shape, differentiable in the stripe
        length (except where it equals the current one).
        """
        length = torch.as_tensor(stripe_length_um, dtype=torch.float64)
        if state.stripe_length_um is None:
            return torch.zeros_like(length)
        return (length - state.stripe_length_um).abs() / self.slit_speed_um_per_s

    def measurement_s(self, joint: bool) -> float:
        """Seconds of one acquisition (``joint``) or of one adaptive fluence scan (nested)."""
        return self.acquisition_s if joint else self.scan_points * self.acquisition_s

    def cost_s(
        self,
        stripe_length_um: torch.Tensor | float,
        doping: torch.Tensor | float,
        state: LabState | None = None,
        *,
        joint: bool,
    ) -> torch.Tensor:
        """Lab seconds of a trial at each (``stripe_length_um`` in um, ``doping`` in electrons/dot).

        The one cost formula: film + slit move + measurement (module docstring), each trial
        priced from ``state`` (default: nothing mounted, no film, slit position unknown).
        ``joint`` selects the measurement: one acquisition (True) or an adaptive fluence
        scan (False). The two inputs broadcast against each other; the result is a
        float64 tensor of their broadcast shape, differentiable in the stripe length,
        so it can weight an acquisition function that is optimised by gradient.
        """
        state = state or LabState()
        return self.film_cost_s(doping, state) + self.slit_cost_s(stripe_length_um, state) + self.measurement_s(joint)

    # ---- one trial, a sequence of trials ------------------------------------------------
    def trial_cost_s(self, params: Mapping[str, Any], state: LabState | None = None) -> float:
        """Lab seconds for a trial at ``params`` (joint when it carries a fluence) from ``state``.

        ``cost_s`` on one trial: the figure a proposal records as ``expected_cost_s``.
        """
        joint = "fluence_uJ_cm2" in params
        cost = self.cost_s(float(params["stripe_length_um"]), float(params["doping"]), state, joint=joint)
        return float(cost)

    def batch_cost_s(self, params_list: Iterable[Mapping[str, Any]], state: LabState | None = None) -> float:
        """Lab seconds for trials run in this order (each changes the state for the next)."""
        state = state or LabState()
        total = 0.0
        for p in params_list:
            total += self.trial_cost_s(p, state)
            state = state.after(p)
        return total
