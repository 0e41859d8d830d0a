"""The records of a trial: ``Proposal`` (what to measure), ``TrialResult`` (what came back) and
``TrialRecord`` (the whole trial: its proposal, result, film, run and lab time).

``Proposal`` and ``TrialResult`` are what the optimiser's ``suggest`` / ``ingest`` speak;
``TrialRecord`` is the one record of a trial that every layer shares: the campaign plan
builds it, the catalog stores it as one event of the campaign run's ``outcomes`` stream
(``TrialRecord.to_row`` / ``TrialRecord.from_row``: typed columns, one per parameter and
outcome, that a Tiled user reads as a table), and resume, status and the report read it
back (``gainloop.records``). A proposal is stored likewise in the ``proposals`` stream
(``proposal_row`` / ``proposal_from_row``). These four functions are the only place a
trial is converted to or from event data.

All are plain frozen dataclasses; ``as_dict()`` is JSON-able (non-finite numbers become
``None``) and ``from_dict`` its inverse.

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

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import ParameterError

__all__ = [
    "FILM_COLUMNS",
    "FILM_NOT_MEASURED",
    "OUTCOME_COLUMNS",
    "PARAM_COLUMNS",
    "PREDICTED_COLUMNS",
    "STATUSES",
    "FilmDoping",
    "Proposal",
    "TrialRecord",
    "TrialResult",
    "proposal_from_row",
    "proposal_row",
]

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

    ``observed_params`` -- the conditions as they were measured, where they differ from the
    requested ``params`` (e.g. ``{"doping": 7.71}``: the film's doping as its absorption
    measured it, electrons/dot); a NaN value means "not known" (a new film whose absorption
    could not be measured: the trial gives no film and no data point). Empty: as requested.
    ``observed_err`` -- one standard uncertainty per observed parameter, in its units
    (e.g. ``{"doping": 0.03}``); a parameter without one is taken as exact.
    ``observed`` merges the two views: what the optimiser models.
    """

    trial_index: int
    params: dict
    status: str = "completed"
    outcome: dict = field(default_factory=dict)
    reason: str = ""
    lab_time_s: float = 0.0
    observed_params: dict = field(default_factory=dict)
    observed_err: dict = field(default_factory=dict)

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
        for name in ("observed_params", "observed_err"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise ParameterError(f"trial {name} must be a mapping, got {type(value).__name__}")
            object.__setattr__(self, name, {str(k): _number(v) for k, v in value.items()})

    @property
    def observed(self) -> dict:
        """The parameters as measured: ``params`` with ``observed_params`` on top (NaN: not known)."""
        return {**self.params, **self.observed_params}

    def observed_sd(self, name: str) -> float:
        """Standard uncertainty of the observed ``name`` (0 when exact or as requested; NaN stays NaN)."""
        v = self.observed_err.get(name, 0.0)
        return 0.0 if v is None else float(v)

    def as_dict(self) -> dict:
        out = {
            "trial_index": self.trial_index,
            "params": _jsonable(self.params),
            "status": self.status,
            "outcome": _jsonable(self.outcome),
            "reason": self.reason,
            "lab_time_s": _jsonable(self.lab_time_s),
        }
        if self.observed_params or self.observed_err:  # as before when nothing was observed apart
            out["observed_params"] = _jsonable(self.observed_params)
            out["observed_err"] = _jsonable(self.observed_err)
        return out

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
            observed_params={
                k: (math.nan if v is None else v) for k, v in dict(d.get("observed_params") or {}).items()
            },
            observed_err={k: (math.nan if v is None else v) for k, v in dict(d.get("observed_err") or {}).items()},
        )


#: A trial's parameters, one column each in the ``proposals`` and ``outcomes`` streams
#: (um, electrons/dot, uJ/cm^2; NaN where a trial has none, e.g. a nested trial's fluence).
PARAM_COLUMNS = ("stripe_length_um", "doping", "fluence_uJ_cm2")
#: What a measurement gives, one column each in the ``outcomes`` stream (NaN where absent):
#: nested trials' fitted threshold (uJ/cm^2) and net gain (1/cm), joint trials' integrated
#: count rate (counts/s), linewidth (nm), measured fluence (uJ/cm^2) and exposure (s).
OUTCOME_COLUMNS = (
    "threshold_uJ_cm2",
    "threshold_err_uJ_cm2",
    "gnet_per_cm",
    "gnet_err_per_cm",
    "counts_per_s",
    "fwhm_nm",
    "measured_fluence_uJ_cm2",
    "exposure_s",
)
#: A trial's film doping (electrons/dot), one column each in the ``outcomes`` stream (NaN where
#: absent): requested, measured by the film's absorption, and the measurement's standard uncertainty.
FILM_COLUMNS = ("requested_doping", "measured_doping", "measured_doping_err")
#: The model's predictions at a proposal, columns ``predicted_<name>`` of the ``proposals`` stream.
PREDICTED_COLUMNS = ("threshold_uJ_cm2", "threshold_err_uJ_cm2", "p_lasing")


def _number(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return math.nan
    return f


def _split(values: Mapping[str, Any], columns: tuple[str, ...], prefix: str = "") -> tuple[dict, dict]:
    """(one float per column, NaN where absent; the keys that have no column)."""
    typed = {f"{prefix}{c}": _number(values[c]) if c in values else math.nan for c in columns}
    extra = {k: v for k, v in values.items() if k not in columns}
    return typed, extra


def _join(row: Mapping[str, Any], columns: tuple[str, ...], extra: Any, prefix: str = "") -> dict:
    """Inverse of ``_split``: the columns that hold a number (NaN means absent), then the extras."""
    out = {}
    for c in columns:
        v = row.get(f"{prefix}{c}")
        if v is not None and math.isfinite(_number(v)):
            out[c] = float(v)
    out.update(_loads(extra))
    return out


def _dumps(values: Mapping[str, Any]) -> str:
    return json.dumps(_jsonable(values), sort_keys=True)


def _loads(text: Any) -> dict:
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    return dict(json.loads(str(text)))


def proposal_row(proposal: Proposal, *, replayed: bool = False) -> dict:
    """One event of the ``proposals`` stream: typed columns (``PARAM_COLUMNS``, ``predicted_*``,
    ``expected_cost_s``, ``acquisition_value``), anything else as JSON in ``params_extra`` /
    ``predicted_extra``; ``replayed``: a resumed campaign's stored proposal measured again (0/1)."""
    params, params_extra = _split(proposal.params, PARAM_COLUMNS)
    predicted, predicted_extra = _split(proposal.predicted, PREDICTED_COLUMNS, "predicted_")
    return {
        "trial_index": proposal.trial_index,
        **params,
        **predicted,
        "expected_cost_s": _number(proposal.expected_cost_s),
        "acquisition_value": _number(proposal.acquisition_value),
        "strategy": proposal.strategy,
        "replayed": int(bool(replayed)),
        "params_extra": _dumps(params_extra),
        "predicted_extra": _dumps(predicted_extra),
    }


def proposal_from_row(row: Mapping[str, Any]) -> Proposal:
    """Inverse of ``proposal_row`` (also reads the JSON ``params`` / ``predicted`` of older records)."""
    if "params" in row:  # a record written before typed columns
        params, predicted = _loads(row["params"]), _loads(row.get("predicted"))
    else:
        params = _join(row, PARAM_COLUMNS, row.get("params_extra"))
        predicted = _join(row, PREDICTED_COLUMNS, row.get("predicted_extra"), "predicted_")
    return Proposal(
        trial_index=int(row["trial_index"]),
        params=params,
        predicted=predicted,
        expected_cost_s=_number(row.get("expected_cost_s", 0.0)),
        acquisition_value=_number(row.get("acquisition_value", math.nan)),
        strategy=str(row.get("strategy", "") or ""),
    )


#: The start of a failed trial's reason when its new film's doping could not be measured.
FILM_NOT_MEASURED = "film not measured"


@dataclass(frozen=True)
class FilmDoping:
    """A film's doping as its absorption measured it: ``doping`` and its standard uncertainty
    ``doping_err`` (electrons/dot), the doping ``requested`` when it was made (NaN if unknown) and
    the absorption run's uid."""

    doping: float
    doping_err: float
    requested: float = math.nan
    absorption_uid: str = ""

    def as_dict(self) -> dict:
        """The ``TrialRecord`` fields it fills (JSON-able: a non-finite number is left out)."""
        out = {
            "requested_doping": _number(self.requested),
            "measured_doping": _number(self.doping),
            "measured_doping_err": _number(self.doping_err),
        }
        return {**{k: v for k, v in out.items() if math.isfinite(v)}, "absorption_uid": str(self.absorption_uid)}


@dataclass(frozen=True)
class TrialRecord:
    """One trial, whole: what was proposed, what came back, on which film, in which run, at what lab time.

    ``proposal`` -- the optimiser's ``Proposal`` (its ``params`` are what was measured);
    ``status``, ``outcome``, ``reason`` -- as in ``TrialResult``; ``lab_time_s`` -- lab seconds
    the trial took (mounting or making its film included); ``sample_id`` -- the film it was
    measured on ("" if none was mounted); ``new_film`` -- the film was made for it;
    ``run_uid`` -- its measurement run ("" if none opened); ``campaign_lab_time_s`` -- the
    campaign's lab seconds used when the trial ended; ``best_threshold_uJ_cm2`` -- the
    campaign's best measured threshold then (NaN if none yet).

    The film's doping (electrons/dot), ``FILM_COLUMNS``: ``requested_doping`` -- what the
    campaign asked the film to have (the proposal's doping; NaN in records older than these
    columns); ``measured_doping`` and ``measured_doping_err`` -- what the film's absorption
    measured, with its standard uncertainty (NaN when not measured: a library film of known
    doping, or a new film whose measurement failed); ``absorption_uid`` -- the absorption run
    that measured it ("" if none; a film measured for an earlier trial carries that run's uid).

    ``result`` is what the optimiser ingests: a measured doping is its ``observed_params``
    (with ``observed_err``); a new film of a record with a requested doping but no measured
    one was never measured, so its doping is unknown (NaN): it gives no film and no data point.
    """

    proposal: Proposal
    status: str = "completed"
    outcome: dict = field(default_factory=dict)
    reason: str = ""
    lab_time_s: float = 0.0
    sample_id: str = ""
    new_film: bool = False
    run_uid: str = ""
    campaign_lab_time_s: float = math.nan
    best_threshold_uJ_cm2: float = math.nan
    requested_doping: float = math.nan
    measured_doping: float = math.nan
    measured_doping_err: float = math.nan
    absorption_uid: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.proposal, Proposal):
            raise ParameterError(f"a trial record's proposal must be a Proposal, got {type(self.proposal).__name__}")
        result = self.result  # validates status, outcome and lab time like a TrialResult
        object.__setattr__(self, "outcome", result.outcome)
        object.__setattr__(self, "reason", result.reason)
        object.__setattr__(self, "lab_time_s", result.lab_time_s)
        object.__setattr__(self, "sample_id", str(self.sample_id or ""))
        object.__setattr__(self, "new_film", bool(self.new_film))
        object.__setattr__(self, "run_uid", str(self.run_uid or ""))
        object.__setattr__(self, "campaign_lab_time_s", _number(self.campaign_lab_time_s))
        object.__setattr__(self, "best_threshold_uJ_cm2", _number(self.best_threshold_uJ_cm2))
        for name in ("requested_doping", "measured_doping", "measured_doping_err"):
            object.__setattr__(self, name, _number(getattr(self, name)))
        object.__setattr__(self, "absorption_uid", str(self.absorption_uid or ""))

    @property
    def doping_measured(self) -> bool:
        """The film's doping was measured (a finite ``measured_doping``)."""
        return math.isfinite(self.measured_doping)

    @property
    def trial_index(self) -> int:
        return self.proposal.trial_index

    @property
    def params(self) -> dict:
        return dict(self.proposal.params)

    @property
    def result(self) -> TrialResult:
        """What the optimiser ingests: the measured doping, when there is one, as observed (class doc)."""
        observed, err = {}, {}
        if self.doping_measured:
            observed["doping"] = self.measured_doping
            err["doping"] = self.measured_doping_err if math.isfinite(self.measured_doping_err) else 0.0
        elif self.new_film and math.isfinite(self.requested_doping):
            observed["doping"] = math.nan  # made and never measured: its doping is not known
        return TrialResult(
            trial_index=self.proposal.trial_index,
            params=self.proposal.params,
            status=self.status,
            outcome=self.outcome,
            reason=self.reason,
            lab_time_s=self.lab_time_s,
            observed_params=observed,
            observed_err=err,
        )

    def as_dict(self) -> dict:
        """JSON-able: the result's fields (``trial_index``, ``params``, ``status``, ``outcome``,
        ``reason``, ``lab_time_s``) and the record's own."""
        return {
            **self.result.as_dict(),
            "proposal": self.proposal.as_dict(),
            "sample_id": self.sample_id,
            "new_film": self.new_film,
            "run_uid": self.run_uid,
            "campaign_lab_time_s": _jsonable(self.campaign_lab_time_s),
            "best_threshold_uJ_cm2": _jsonable(self.best_threshold_uJ_cm2),
            **{c: _jsonable(getattr(self, c)) for c in FILM_COLUMNS},
            "absorption_uid": self.absorption_uid,
        }

    def to_row(self) -> dict:
        """One event of the ``outcomes`` stream: typed columns (``PARAM_COLUMNS``, ``OUTCOME_COLUMNS``,
        status, reason, film, run, lab times, ``FILM_COLUMNS`` and ``absorption_uid``), anything else as
        JSON in ``params_extra`` / ``outcome_extra``. Every record gives the same keys, so the stream has
        one descriptor."""
        params, params_extra = _split(self.proposal.params, PARAM_COLUMNS)
        outcome, outcome_extra = _split(self.outcome, OUTCOME_COLUMNS)
        return {
            "trial_index": self.trial_index,
            "status": self.status,
            "reason": self.reason,
            **params,
            **outcome,
            "sample_id": self.sample_id,
            "new_film": int(self.new_film),
            "run_uid": self.run_uid,
            "lab_time_s": self.lab_time_s,
            "campaign_lab_time_s": self.campaign_lab_time_s,
            "best_threshold_uJ_cm2": self.best_threshold_uJ_cm2,
            **{c: getattr(self, c) for c in FILM_COLUMNS},
            "absorption_uid": self.absorption_uid,
            "params_extra": _dumps(params_extra),
            "outcome_extra": _dumps(outcome_extra),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], proposal: Proposal | None = None) -> TrialRecord:
        """Inverse of ``to_row``; ``proposal``: the stored proposal of this trial, if the
        ``proposals`` stream has it (its predictions and cost), else one rebuilt from the row.
        Also reads the records of older versions (JSON ``params`` / ``outcome``, ``trial_lab_time_s``
        and ``lab_time_used_s``; no ``FILM_COLUMNS``: NaN, nothing measured)."""
        if "params" in row:  # a record written before typed columns
            params, outcome = _loads(row["params"]), _loads(row.get("outcome"))
            outcome = {k: (math.nan if v is None else v) for k, v in outcome.items()}
            lab_s, used_s = row.get("trial_lab_time_s", 0.0), row.get("lab_time_used_s", math.nan)
        else:
            params = _join(row, PARAM_COLUMNS, row.get("params_extra"))
            outcome = _join(row, OUTCOME_COLUMNS, row.get("outcome_extra"))
            lab_s, used_s = row.get("lab_time_s", 0.0), row.get("campaign_lab_time_s", math.nan)
        index = int(row["trial_index"])
        if proposal is None or proposal.trial_index != index:
            proposal = Proposal(trial_index=index, params=params)
        elif proposal.params != params:
            proposal = Proposal(**{**_fields(proposal), "params": params})
        return cls(
            proposal=proposal,
            status=str(row.get("status", "completed")),
            outcome=outcome,
            reason=str(row.get("reason", "") or ""),
            lab_time_s=_number(lab_s),
            sample_id=str(row.get("sample_id", "") or ""),
            new_film=bool(int(_number(row.get("new_film", 0)) or 0)),
            run_uid=str(row.get("run_uid", "") or ""),
            campaign_lab_time_s=_number(used_s),
            best_threshold_uJ_cm2=_number(row.get("best_threshold_uJ_cm2", math.nan)),
            **{c: _number(row.get(c, math.nan)) for c in FILM_COLUMNS},
            absorption_uid=str(row.get("absorption_uid", "") or ""),
        )


def _fields(proposal: Proposal) -> dict:
    return {
        "trial_index": proposal.trial_index,
        "params": proposal.params,
        "predicted": proposal.predicted,
        "expected_cost_s": proposal.expected_cost_s,
        "acquisition_value": proposal.acquisition_value,
        "strategy": proposal.strategy,
    }
