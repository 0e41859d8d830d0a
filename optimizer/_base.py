"""The optimiser protocol every strategy shares: ``suggest(n)`` / ``ingest(results)``.

Bookkeeping done here, the same for every strategy:

* **History.** One row per ``trial_index`` (ingesting a trial again replaces its row:
  idempotent). Each result is checked before it is stored: parameters outside the search
  space, a ``completed`` result whose outcome is NaN/inf/missing, are stored as ``failed``
  with the reason. Only rows that pass reach a model, and only as what they are
  (``infeasible`` as constraint information).
* **Pending.** Proposals suggested and not yet ingested are pending; the strategies
  fantasise them (``X_pending``) so that batch and resumed suggestions do not repeat
  them. ``mark_pending`` re-registers proposals (e.g. read back from the catalog).
* **Trial indices and seeds.** The next index is one past the largest known (history or
  pending). Every ``suggest`` call runs under a seed derived from ``(seed, first trial
  index)`` alone, and models are refitted from scratch on the history sorted by trial
  index, so an optimiser rebuilt by re-ingesting a campaign's history proposes exactly
  what the uninterrupted one would.
* **What was measured.** A result's ``observed`` parameters (``TrialResult.observed_params``,
  e.g. a film's doping as its absorption measured it) are what the models are trained on,
  with their uncertainty (``observed_err``) as input noise, and what the lab state records
  as the film that exists; the requested ``params`` are checked against the search space.
  A result whose observed doping is NaN (a film never measured) gives no film and no data.
* **Lab state and cost.** Films that exist and what is mounted follow from the history
  (and the pending proposals) on top of the state the optimiser was started with. One
  cost model prices from it both what a strategy weighs (``expected_cost_s`` on
  unit-cube candidates) and what a proposal records (its ``expected_cost_s``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from core.errors import GainloopError, ParameterError
from core.trial import Proposal, TrialResult

from ._cost import CostModel, LabState
from ._space import DOPING, FLUENCE, LENGTH, SearchSpace

__all__ = ["NotEnoughDataError", "Optimizer"]


class NotEnoughDataError(GainloopError, ValueError):
    """A model was asked for while the history holds fewer usable observations than it needs."""


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, or None."""
    if isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _positive_reason(outcome: Mapping[str, Any], key: str) -> str | None:
    """Why ``outcome[key]`` is unusable: missing, or not a finite positive number (None when it is one)."""
    value = outcome.get(key)
    if value is None:
        return f"completed result without {key}"
    if _finite(value) is None or float(value) <= 0:
        return f"{key} is {value!r} (not a finite positive number)"
    return None


class Optimizer:
    """Base class: history, pending proposals, seeds and lab state; strategies implement ``_propose``."""

    strategy: str = "base"
    #: True when a trial is one acquisition at a fluence (joint), False for a fluence scan (nested).
    joint: bool = False

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int,
        cost: CostModel | None = None,
        objectives: Sequence[str] = ("threshold",),
        batch_size: int = 1,
        lab_state: LabState | None = None,
    ) -> None:
        if not isinstance(space, SearchSpace):
            raise ParameterError(f"space must be a SearchSpace, got {type(space).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ParameterError(f"seed must be an integer >= 0, got {seed!r}")
        objectives = tuple(objectives)
        if objectives not in (("threshold",), ("threshold", "gnet")):
            raise ParameterError(f"objectives must be ('threshold',) or ('threshold', 'gnet'), got {objectives!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.space = space
        self.seed = int(seed)
        self.cost = cost if cost is not None else CostModel()
        self.objectives = objectives
        self.batch_size = batch_size
        self.initial_lab_state = self._initial_state(lab_state)
        self._results: dict[int, TrialResult] = {}
        self._warm: list[TrialResult] = []
        self._pending: dict[int, Proposal] = {}
        self._last: dict[str, Any] = {}

    def _initial_state(self, lab_state: LabState | None) -> LabState:
        """A fixed film library means every level's film exists."""
        state = lab_state or LabState()
        if self.space.discrete:
            state = replace(state, films=(*state.films, *self.space.doping))
        return state

    # ---- protocol ---------------------------------------------------------------------
    def suggest(self, n: int | None = None) -> list[Proposal]:
        """``n`` (default ``batch_size``) new proposals; they become pending until ingested."""
        n = self.batch_size if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParameterError(f"suggest needs n >= 1 proposals, got {n!r}")
        first = self.next_trial_index()
        indices = list(range(first, first + n))
        proposals = self._propose(indices, self.trial_seed(first))
        for p in proposals:
            self.space.validate(p.params, joint=self.joint)  # never hand out a proposal outside the safe set
            self._pending[p.trial_index] = p
        return proposals

    def ingest(self, results: Iterable[TrialResult | Mapping[str, Any]]) -> None:
        """Record results (``TrialResult`` or its ``as_dict`` form); idempotent per trial index."""
        if isinstance(results, TrialResult | Mapping):
            results = [results]
        for r in results:
            res = r if isinstance(r, TrialResult) else TrialResult.from_dict(r)
            res = self._sanitise(res)
            self._results[res.trial_index] = res
            self._pending.pop(res.trial_index, None)
        self._on_ingest()

    def warm_start(self, results: Iterable[TrialResult | Mapping[str, Any]]) -> None:
        """Completed trials of earlier campaigns on the same material: the models train on them, but they
        are not this campaign's history (no trial index of it, no film on the bench, not its best, never
        proposed or measured again). Results that are not ``completed`` are left out."""
        if isinstance(results, TrialResult | Mapping):
            results = [results]
        for r in results:
            res = self._sanitise(r if isinstance(r, TrialResult) else TrialResult.from_dict(r))
            if res.status == "completed":
                self._warm.append(res)
        self._on_ingest()

    def warm_data(self) -> list[TrialResult]:
        """The warm-start results (``warm_start``), as given."""
        return list(self._warm)

    def pending(self) -> list[Proposal]:
        """Suggested, not yet ingested proposals (by trial index)."""
        return [self._pending[k] for k in sorted(self._pending)]

    def mark_pending(self, proposals: Iterable[Proposal | Mapping[str, Any]]) -> None:
        """Register proposals as pending (e.g. suggestions read back from the catalog after a crash)."""
        if isinstance(proposals, Proposal | Mapping):
            proposals = [proposals]
        for p in proposals:
            prop = p if isinstance(p, Proposal) else Proposal.from_dict(p)
            self.space.validate(prop.params, joint=self.joint)
            if prop.trial_index not in self._results:
                self._pending[prop.trial_index] = prop

    def clear_pending(self, trial_indices: Iterable[int] | None = None) -> None:
        """Forget pending proposals (all, or those trial indices) that will not be measured."""
        if trial_indices is None:
            self._pending.clear()
        for k in trial_indices or ():
            self._pending.pop(int(k), None)

    def history(self) -> list[TrialResult]:
        """Every ingested result as recorded (failed ones with their reason), by trial index."""
        return [self._results[k] for k in sorted(self._results)]

    def best(self) -> dict | None:
        """Best measured threshold: ``threshold_uJ_cm2``, ``threshold_err_uJ_cm2``, stripe, doping (as measured;
        ``requested_doping`` beside it when the film's doping was measured), trial index."""
        rows = [r for r in self.history() if r.status == "completed" and "threshold_uJ_cm2" in r.outcome]
        if not rows:
            return None
        r = min(rows, key=lambda r: (float(r.outcome["threshold_uJ_cm2"]), r.trial_index))
        return {
            "threshold_uJ_cm2": float(r.outcome["threshold_uJ_cm2"]),
            "threshold_err_uJ_cm2": float(r.outcome.get("threshold_err_uJ_cm2", math.nan)),
            "stripe_length_um": float(r.params[LENGTH]),
            "doping": float(r.observed[DOPING]),
            "trial_index": r.trial_index,
            **({"requested_doping": float(r.params[DOPING])} if DOPING in r.observed_params else {}),
        }

    def state(self) -> dict:
        """JSON-able summary: counts, lab state, model hyperparameters, last acquisition values."""
        counts = {s: 0 for s in ("completed", "failed", "infeasible", "abandoned")}
        for r in self._results.values():
            counts[r.status] += 1
        out = {
            "strategy": self.strategy,
            "seed": self.seed,
            "n_observations": len(self._results),
            "n_usable": self._n_usable(),
            "counts": counts,
            "n_pending": len(self._pending),
            "next_trial_index": self.next_trial_index(),
            "lab_state": self.lab_state().as_dict(),
            "objectives": list(self.objectives),
        }
        if self._warm:
            out["n_warm_start"] = len(self._warm)
        out.update(self._last)
        return _clean(out)

    # ---- helpers ----------------------------------------------------------------------
    def next_trial_index(self) -> int:
        known = [*self._results, *self._pending]
        return max(known) + 1 if known else 0

    def trial_seed(self, trial_index: int) -> int:
        """The seed of a suggestion whose first proposal has this trial index."""
        return int(np.random.SeedSequence([self.seed, int(trial_index)]).generate_state(1)[0] & 0x7FFFFFFF)

    def lab_state(self, *, include_pending: bool = True) -> LabState:
        """Films that exist and what is mounted, after the history (and pending proposals) in index order."""
        state = self.initial_lab_state
        rows: list[tuple[int, Mapping[str, Any]]] = [
            (r.trial_index, r.observed) for r in self._results.values() if r.status != "abandoned"
        ]  # the film as measured; a film never measured (NaN doping) is skipped below: it is never used
        if include_pending:
            rows += [(p.trial_index, p.params) for p in self._pending.values()]
        for _, params in sorted(rows, key=lambda t: t[0]):
            d, length = _finite(params.get(DOPING)), _finite(params.get(LENGTH))
            if d is None or length is None:
                continue
            state = state.after({DOPING: d, LENGTH: length})
        return state

    #: How far (unit-cube units) a measured input may lie outside the cube in a model's training
    #: data: BoTorch's own tolerance for inputs it takes as min-max scaled.
    MODEL_CUBE_MARGIN = 0.01

    def model_inputs(self, r: TrialResult) -> tuple[list[float], list[float]] | None:
        """A result's model inputs, as measured: (unit-cube point, its standard uncertainties), in
        ``space.dims(self.joint)`` order; None when an observed input is not known (NaN).

        The observed parameters (``TrialResult.observed``: a film's measured doping) are mapped
        like any point; one outside the search space by more than ``MODEL_CUBE_MARGIN`` (e.g. a
        film that came out above the doping range) is modelled at that margin. The uncertainty of
        a linear (doping) column is its error over the range; log columns have none observed.
        """
        names = self.space.dims(self.joint)
        observed = r.observed
        if any(_finite(observed.get(n)) is None for n in names):
            return None
        u = np.clip(self.space.to_unit(observed, names), -self.MODEL_CUBE_MARGIN, 1.0 + self.MODEL_CUBE_MARGIN)
        sd = []
        for n in names:
            e = _finite(r.observed_sd(n)) if n in r.observed_err else 0.0
            lo, hi = self.space.bounds(n)
            sd.append(abs(e) / (hi - lo) if n == DOPING and e and hi > lo else 0.0)
        return u.tolist(), sd

    def expected_cost_s(self, X: torch.Tensor, state: LabState | None = None) -> torch.Tensor:
        """Lab seconds of a trial at each unit-cube point of ``X``, from ``state``.

        Args:
            X: ``... x d`` unit-cube points in this strategy's columns,
                ``space.dims(self.joint)`` (``b x q x d`` for a q-batch acquisition).
            state: the lab state the trials start from; default ``lab_state()``, the state
                after the history and the pending proposals.

        Returns:
            A float64 tensor of shape ``...`` in seconds: ``CostModel.cost_s`` at the
            points' stripe lengths and dopings, each priced from ``state`` (a q-batch's
            points are not chained). The cost-aware strategies divide their acquisition by
            this, and it is the figure a proposal at that point records as ``expected_cost_s``.
        """
        state = self.lab_state() if state is None else state
        physical = self.space.from_unit_tensor(X, self.space.dims(self.joint))
        return self.cost.cost_s(physical[LENGTH], physical[DOPING], state, joint=self.joint)

    def _snap(self, params: dict[str, float], state: LabState) -> dict[str, float]:
        """A free doping within the film tolerance of an existing film is that film's doping."""
        if self.space.discrete:
            return params
        d = params[DOPING]
        near = [f for f in state.films if abs(f - d) <= self.cost.film_doping_tol]
        lo, hi = self.space.doping_bounds
        if near:
            f = min(near, key=lambda f: abs(f - d))
            if lo <= f <= hi:
                params = {**params, DOPING: f}
        return params

    def _params_reason(self, params: Mapping[str, Any]) -> str | None:
        """Why these params cannot be used by this space (None when they can)."""
        names = (FLUENCE, LENGTH, DOPING) if self.joint else (LENGTH, DOPING)
        for name in names:
            if name not in params:
                return f"params lack {name!r}"
            try:
                self.space._check(name, params[name])
            except ParameterError as err:
                return f"params outside the search space: {err}"
        return None

    def _sanitise(self, r: TrialResult) -> TrialResult:
        if r.status in ("failed", "abandoned"):
            return r if r.reason else replace(r, reason=f"{r.status} (no reason given)")
        why = self._params_reason(r.params)
        if why is None and r.status == "completed":
            why = self._outcome_reason(r.outcome)
        if why is not None:
            return replace(r, status="failed", reason=why if not r.reason else f"{why}; {r.reason}")
        if r.status == "infeasible" and not r.reason:
            return replace(r, reason="infeasible (no reason given)")
        return r

    def _n_usable(self) -> int:
        return sum(1 for r in self._results.values() if r.status in ("completed", "infeasible"))

    # ---- strategy hooks ---------------------------------------------------------------
    def _outcome_reason(self, outcome: Mapping[str, Any]) -> str | None:
        """Why a completed outcome is unusable (None when usable). Nested default: threshold and its error."""
        reason = _positive_reason(outcome, "threshold_uJ_cm2")
        if reason is not None:
            return reason
        err = outcome.get("threshold_err_uJ_cm2")
        if err is not None and (_finite(err) is None or float(err) < 0):
            return f"threshold_err_uJ_cm2 is {err!r} (not a finite number >= 0)"
        if "gnet" in self.objectives and "gnet_per_cm" in outcome and _finite(outcome["gnet_per_cm"]) is None:
            return f"gnet_per_cm is {outcome['gnet_per_cm']!r} (not finite)"
        return None

    def _on_ingest(self) -> None:
        """Called after every ingest (drop cached models, ...)."""

    def _propose(self, indices: list[int], seed: int) -> list[Proposal]:
        raise NotImplementedError

    def _params(self, physical: Mapping[str, float]) -> dict:
        """Proposal params: the optimised values plus the space's fixed parameters."""
        return {**{k: float(v) for k, v in physical.items()}, **self.space.fixed}

    def _as_made(self, physical: Mapping[str, float]) -> dict[str, float]:
        """``physical`` with a doping asked for before replaced by the doping its film came out with.

        A design or a grid plays several trials on one film by repeating its doping; once that
        film has been made and measured (its ``observed`` doping differs from the request), the
        next trials ask for the film as measured -- the film that exists -- not for a new one.
        The latest measured film of that request counts; a film never measured (NaN) does not.
        """
        out = dict(physical)
        d = _finite(out.get(DOPING))
        if d is None or self.space.discrete:
            return out
        for r in sorted(self._results.values(), key=lambda r: -r.trial_index):
            req, got = _finite(r.params.get(DOPING)), _finite(r.observed.get(DOPING))
            if req is not None and got is not None and abs(req - d) <= 1e-9 and DOPING in r.observed_params:
                lo, hi = self.space.doping_bounds
                if lo <= got <= hi:  # a film outside the search space cannot be proposed: ask again
                    out[DOPING] = got
                break
        return out

    def _proposal(self, trial_index: int, physical: Mapping[str, float], state: LabState, **fields: Any) -> Proposal:
        """A proposal at ``physical`` (fixed parameters added; a doping asked for before: the film it made,
        ``_as_made``) recording its cost from ``state``.

        ``fields`` are the proposal's other fields (``predicted``, ``acquisition_value``).
        """
        params = self._params(self._as_made(physical))
        return Proposal(
            trial_index=trial_index,
            params=params,
            expected_cost_s=self.cost.trial_cost_s(params, state),
            strategy=self.strategy,
            **fields,
        )


def _clean(value: Any) -> Any:
    """JSON-able copy: non-finite floats -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bool | str | int) or value is None:
        return value
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return str(value)
