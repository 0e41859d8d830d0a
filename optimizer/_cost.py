"""Lab-time cost of a trial: what the optimiser divides its acquisition value by.

A trial's cost (seconds of lab time) is the sum of

* a film: ``new_film_s`` (default 6 h: ligand exchange + ALD) when no film of the
  proposed doping exists yet, else ``sample_change_s`` (20 s) when a different film is
  mounted, else nothing;
* the slit move: ``|L - L_current| / slit_speed_um_per_s`` (nothing when unknown);
* the measurement: ``scan_points x acquisition_s`` for a nested trial (an adaptive
  fluence scan), ``acquisition_s`` for a joint trial (one acquisition).

``LabState`` is what the cost depends on: the mounted film's doping, the dopings of the
films that exist, the current stripe length. The optimiser derives it from its history
(every ingested trial's doping is a film that exists; the last trial's film and stripe
are mounted) on top of the state it was started with.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from core.errors import ParameterError

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
class CostModel:
    """Seconds of lab time per step; ``film_doping_tol`` (electrons/dot): two dopings closer are one film."""

    new_film_s: float = 6 * 3600.0
    sample_change_s: float = 20.0
    slit_speed_um_per_s: float = 500.0
    acquisition_s: float = 3.5
    scan_points: int = 28
    film_doping_tol: float = 0.02

    def __post_init__(self) -> None:
        for name in ("new_film_s", "sample_change_s", "acquisition_s", "film_doping_tol"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ParameterError(f"CostModel.{name} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(self.slit_speed_um_per_s) and self.slit_speed_um_per_s > 0):
            raise ParameterError(f"CostModel.slit_speed_um_per_s must be > 0, got {self.slit_speed_um_per_s!r}")
        if not (isinstance(self.scan_points, int) and self.scan_points >= 1):
            raise ParameterError(f"CostModel.scan_points must be an integer >= 1, got {self.scan_points!r}")
        if self.acquisition_s <= 0:
            raise ParameterError(f"CostModel.acquisition_s must be > 0 s, got {self.acquisition_s!r}")

    def as_dict(self) -> dict:
        return {
            "new_film_s": self.new_film_s,
            "sample_change_s": self.sample_change_s,
            "slit_speed_um_per_s": self.slit_speed_um_per_s,
            "acquisition_s": self.acquisition_s,
            "scan_points": self.scan_points,
            "film_doping_tol": self.film_doping_tol,
        }

    # ---- pieces -----------------------------------------------------------------------
    def film_exists(self, doping: float, films: Iterable[float]) -> bool:
        return any(abs(float(doping) - f) <= self.film_doping_tol for f in films)

    def film_cost_s(self, doping: float, state: LabState) -> float:
        """Cost of having the film of this doping mounted: 0, a sample change, or a new film."""
        if state.current_doping is not None and abs(float(doping) - state.current_doping) <= self.film_doping_tol:
            return 0.0
        if self.film_exists(doping, state.films):
            return self.sample_change_s
        return self.new_film_s + self.sample_change_s

    def slit_cost_s(self, stripe_length_um: float, state: LabState) -> float:
        if state.stripe_length_um is None:
            return 0.0
        return abs(float(stripe_length_um) - state.stripe_length_um) / self.slit_speed_um_per_s

    def measurement_s(self, joint: bool) -> float:
        """One acquisition (joint) or one adaptive fluence scan (nested)."""
        return self.acquisition_s if joint else self.scan_points * self.acquisition_s

    def trial_cost_s(self, params: Mapping[str, Any], state: LabState | None = None) -> float:
        """Lab seconds for a trial at ``params`` (joint when it carries a fluence) from ``state``."""
        state = state or LabState()
        joint = "fluence_uJ_cm2" in params
        return (
            self.film_cost_s(float(params["doping"]), state)
            + self.slit_cost_s(float(params["stripe_length_um"]), state)
            + self.measurement_s(joint)
        )

    def batch_cost_s(self, params_list: Iterable[Mapping[str, Any]], state: LabState | None = None) -> float:
        """Lab seconds for trials run in this order (each changes the state for the next)."""
        state = state or LabState()
        total = 0.0
        for p in params_list:
            total += self.trial_cost_s(p, state)
            state = state.after(p)
        return total
