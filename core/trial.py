"""The suggest/ingest protocol's records: ``Proposal`` (what to measure) and ``TrialResult`` (what came back).

Both are plain frozen dataclasses with ``as_dict()`` (JSON-able: non-finite numbers become
``None``) so that a campaign can record them as event data and rebuild them from the
catalog with ``from_dict``.

Statuses of a result:

* ``completed`` -- measured; the outcome is usable when its numbers are finite (else the
  optimiser records it as ``failed`` with the reason, and it never reaches a model);
* ``failed`` -- the measurement went wrong (device fault, NaN data, analysis error);
* ``infeasible`` -- measured correctly but nothing to fit: no lasing up to the safe-set
  fluence cap (nested), or the bench could not deliver the fluence (joint). It enters
  the models as constraint information, never as a made-up threshold;
* ``abandoned`` -- not measured (stopped, skipped, aborted by the operator); its conditions
  are spent: the initial design moves past them rather than proposing them again.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ParameterError

__all__ = ["STATUSES", "Proposal", "TrialResult"]

STATUSES = ("completed", "failed", "infeasible", "abandoned")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


def _index(value: Any) -> int:
    integral = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral or int(value) < 0:
        raise ParameterError(f"trial_index must be an integer >= 0, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Proposal:
    """Conditions to measure next.

    ``params``: ``stripe_length_um`` (um), ``doping`` (electrons/dot), ``fluence_uJ_cm2``
    (joint trials only) and the space's fixed parameters. ``predicted``: the model's
    prediction there (e.g. ``threshold_uJ_cm2`` and its ``threshold_err_uJ_cm2``; empty for
    design points). ``expected_cost_s``: lab seconds from the state before it.
    ``acquisition_value``: the cost-weighted acquisition value (log units; NaN for design
    points and baselines).
    """

    trial_index: int
    params: dict
    predicted: dict = field(default_factory=dict)
    expected_cost_s: float = 0.0
    acquisition_value: float = math.nan
    strategy: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial_index", _index(self.trial_index))
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "predicted", dict(self.predicted))

    def as_dict(self) -> dict:
        return {
            "trial_index": self.trial_index,
            "params": _jsonable(self.params),
            "predicted": _jsonable(self.predicted),
            "expected_cost_s": _jsonable(float(self.expected_cost_s)),
            "acquisition_value": _jsonable(float(self.acquisition_value)),
            "strategy": self.strategy,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Proposal:
        def num(v: Any, default: float) -> float:
            return default if v is None else float(v)

        return cls(
            trial_index=d["trial_index"],
            params=dict(d["params"]),
            predicted=dict(d.get("predicted") or {}),
            expected_cost_s=num(d.get("expected_cost_s"), 0.0),
            acquisition_value=num(d.get("acquisition_value"), math.nan),
            strategy=str(d.get("strategy", "")),
        )


@dataclass(frozen=True)
class TrialResult:
    """What one trial gave.

    ``outcome`` -- nested trials: ``threshold_uJ_cm2``, ``threshold_err_uJ_cm2`` and
    optionally ``gnet_per_cm`` (with ``gnet_err_per_cm``); joint trials:
    ``counts_per_s`` (spectrally integrated), optionally ``fwhm_nm``, ``exposure_s``.
    ``reason`` says why a trial is not ``completed``. ``lab_time_s``: lab seconds it took.
    """

    trial_index: int
    params: dict
    status: str = "completed"
    outcome: dict = field(default_factory=dict)
    reason: str = ""
    lab_time_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial_index", _index(self.trial_index))
        if self.status not in STATUSES:
            raise ParameterError(f"trial status {self.status!r} is not one of {list(STATUSES)}")
        if not isinstance(self.params, Mapping):
            raise ParameterError(f"trial params must be a mapping, got {type(self.params).__name__}")
        if not isinstance(self.outcome, Mapping):
            raise ParameterError(f"trial outcome must be a mapping, got {type(self.outcome).__name__}")
        object.__setattr__(self, "params", dict(self.params))
        object.__setattr__(self, "outcome", dict(self.outcome))
        object.__setattr__(self, "reason", str(self.reason or ""))
        try:
            lab = float(self.lab_time_s if self.lab_time_s is not None else math.nan)
        except (TypeError, ValueError):
            lab = math.nan
        object.__setattr__(self, "lab_time_s", lab)

    def as_dict(self) -> dict:
        return {
            "trial_index": self.trial_index,
            "params": _jsonable(self.params),
            "status": self.status,
            "outcome": _jsonable(self.outcome),
            "reason": self.reason,
            "lab_time_s": _jsonable(self.lab_time_s),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialResult:
        """Inverse of ``as_dict`` (``None`` outcome values read back as NaN)."""
        outcome = {k: (math.nan if v is None else v) for k, v in dict(d.get("outcome") or {}).items()}
        return cls(
            trial_index=d["trial_index"],
            params=dict(d["params"]),
            status=d.get("status", "completed"),
            outcome=outcome,
            reason=d.get("reason", ""),
            lab_time_s=d.get("lab_time_s", 0.0),
        )
