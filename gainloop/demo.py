"""The main job's yardstick: how close a campaign on the twin came to the twin's true optimum.

The twin knows what no bench does: the threshold it would measure anywhere
(``twin.landscape``). ``twin_goal`` is the lowest ASE threshold of the material new films
are made of (the twin bench file's ``[twin].new_film_preset``) over stripe length x doping,
and the demo campaign's target (``GOAL_FRACTION`` above it); ``judge`` puts a campaign's
best measurement beside it, with the twin's own threshold at the same conditions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twin.landscape import Optimum, feasible_threshold, find_optimum

__all__ = ["GOAL_FRACTION", "Goal", "judge", "twin_goal"]

#: The demo's goal: a measured threshold within 5 % of the twin's optimum.
GOAL_FRACTION = 0.05


@dataclass(frozen=True)
class Goal(Optimum):
    """The twin's optimum (uJ/cm^2 at a stripe length in um and a doping in electrons/dot) and the target."""

    @property
    def target_uJ_cm2(self) -> float:
        return self.threshold_uJ_cm2 * (1.0 + GOAL_FRACTION)


def twin_goal(presets=None) -> Goal:
    """The twin's optimum for the material its new films are made of (``presets``: a ``PresetFile``, or the shipped)."""
    from devices import load_bench
    from sim.devices import default_twin_bench_path
    from twin.presets import load_presets

    pf = presets if presets is not None else load_presets()
    name = load_bench(default_twin_bench_path()).twin.new_film_preset
    return Goal(**find_optimum(pf.get(name), pf.setup, name).as_dict())


def judge(best: dict | None, goal: Goal, presets=None) -> dict:
    """The campaign's best beside the goal: ``within_fraction`` of the optimum (measured), whether the goal
    was reached, and the twin's own threshold at the best conditions (``true_threshold_uJ_cm2``)."""
    from twin.presets import load_presets

    out = {
        "optimum": {
            "threshold_uJ_cm2": goal.threshold_uJ_cm2,
            "stripe_length_um": goal.stripe_length_um,
            "doping": goal.doping,
        },
        "goal_fraction": GOAL_FRACTION,
        "reached": False,
        "within_fraction": None,
        "true_threshold_uJ_cm2": None,
    }
    if not best:
        return out
    pf = presets if presets is not None else load_presets()
    measured = float(best["threshold_uJ_cm2"])
    out["within_fraction"] = measured / goal.threshold_uJ_cm2 - 1.0
    out["reached"] = measured <= goal.target_uJ_cm2
    true = float(
        feasible_threshold(float(best["stripe_length_um"]), float(best["doping"]), pf.get(goal.sample), pf.setup)
    )
    out["true_threshold_uJ_cm2"] = true if math.isfinite(true) else None
    return out
