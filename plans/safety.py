"""The plan-level fluence check: no plan may send a fluence above the limit.

``fluence_guard(plan, fluence_objects, limit_uJ_cm2)`` wraps any plan and
inspects every message before the RunEngine sees it: a ``set`` of one of the
fluence objects (the pump's fluence signal, or the pump device itself) with a
value that is not a finite number in [0, limit] raises ``FluenceLimitError``
inside the plan, so nothing reaches the device. It is one of three independent
layers (device soft limit, this check, the IOC's interlock); each alone stops an
over-limit fluence.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable

from bluesky import Msg
from bluesky.preprocessors import plan_mutator

from core.errors import GainloopError

__all__ = ["FluenceLimitError", "check_fluence", "fluence_guard"]


class FluenceLimitError(GainloopError, ValueError):
    """A plan asked for a fluence outside the allowed range."""


def check_fluence(value, limit_uJ_cm2: float) -> float:
    """``value`` as a float if it is a finite fluence in [0, limit] uJ/cm^2, else ``FluenceLimitError``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise FluenceLimitError(f"fluence {value!r} is not a number; allowed: 0 to {limit_uJ_cm2:g} uJ/cm^2") from None
    if not math.isfinite(f) or f < 0 or f > limit_uJ_cm2:
        raise FluenceLimitError(f"fluence {f:g} uJ/cm^2 refused by the plan; allowed: 0 to {limit_uJ_cm2:g} uJ/cm^2")
    return f


def fluence_guard(plan: Generator, fluence_objects: Iterable, limit_uJ_cm2: float) -> Generator:
    """Wrap ``plan`` so that every ``set`` of a fluence object is checked against the limit first."""
    if not (math.isfinite(limit_uJ_cm2) and limit_uJ_cm2 > 0):
        raise FluenceLimitError(f"the fluence limit must be a positive number of uJ/cm^2, got {limit_uJ_cm2!r}")
    guarded = {id(o) for o in fluence_objects}

    def check(msg: Msg):
        if msg.command == "set" and id(msg.obj) in guarded:
            value = msg.args[0] if msg.args else None
            check_fluence(value, limit_uJ_cm2)
        return None, None

    return plan_mutator(plan, check)
