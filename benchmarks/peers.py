"""Peer optimisers for ``benchmarks/campaign_lab_time.py``, on the same twin, plans and search space as ours.

* ``AxPeer`` -- Ax's ``Client`` (ax-platform 1.3.1, its default generation strategy:
  centre + Sobol, then BoTorch), ``objective="-threshold"``;
* ``XoptPeer`` -- Xopt's ``ExpectedImprovementGenerator`` (xopt 3.2.2) over a ``VOCS``,
  driven through its ``generate`` / ``add_data`` API (random initial points first: the
  generator needs data to build its model);
* ``blop_campaign`` -- blop 1.2's own ``blop.plans.optimize`` plan (``blop.ax.Agent``:
  Ax under the hood) with an acquisition plan that mounts the film and runs the same
  ``ase_fluence_scan`` as the campaign plan.

``AxPeer`` and ``XoptPeer`` speak what ``plans.campaign.campaign`` calls (``strategy``,
``seed``, ``suggest()``, ``ingest(results)``, ``history()``, ``best()``, ``state()``), so
they run through exactly the campaign plan ours runs through. Every peer sees the same
search space (``PEER_SPACE``): stripe length 100-4000 um (log), doping 0-7.9 electrons/dot
(continuous: a doping without a film costs a new film), one adaptive fluence scan per
trial (nested). Peers are told the threshold and (Ax) its fit error; a trial without
lasing (``infeasible``) or a failed one is reported to them as a failed trial (Ax), a
missing value (Xopt: NaN, dropped from its model) or a trial without data (blop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.trial import Proposal

__all__ = ["PEERS", "PEER_SPACE", "AxPeer", "PeerResult", "XoptPeer", "blop_campaign"]

LENGTH, DOPING = "stripe_length_um", "doping"
#: The search space every peer gets (ours gets the same through ``gainloop.campaign.campaign_optimizer``).
PEER_SPACE = {LENGTH: (100.0, 4000.0), DOPING: (0.0, 7.9)}
PEERS = ("ax", "xopt", "blop")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class PeerResult:
    """What the campaign plan reads of a result (``status``, ``reason``)."""

    trial_index: int
    params: dict
    status: str
    outcome: dict
    reason: str = ""
    lab_time_s: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PeerResult:
        status = str(d.get("status", "completed"))
        outcome = dict(d.get("outcome") or {})
        reason = str(d.get("reason") or "")
        if status == "completed" and _num(outcome.get("threshold_uJ_cm2")) is None:
            status, reason = "failed", reason or "completed result without a finite threshold"
        return cls(int(d["trial_index"]), dict(d["params"]), status, outcome, reason, float(d.get("lab_time_s", 0.0)))


class _Peer:
    """Bookkeeping shared by the peers: history, pending proposals, best, state."""

    strategy = "peer"

    def __init__(self, *, seed: int) -> None:
        self.seed = int(seed)
        self._results: dict[int, PeerResult] = {}
        self._pending: dict[int, Proposal] = {}
        self.suggest_wall_s = 0.0

    def suggest(self, n: int | None = None) -> list[Proposal]:
        import time

        t0 = time.perf_counter()
        out = [
            Proposal(idx, {LENGTH: float(p[LENGTH]), DOPING: float(p[DOPING])}, strategy=self.strategy)
            for idx, p in self._ask(1 if n is None else int(n))
        ]
        self.suggest_wall_s += time.perf_counter() - t0
        for p in out:
            self._pending[p.trial_index] = p
        return out

    def ingest(self, results) -> None:
        if isinstance(results, Mapping):
            results = [results]
        for r in results:
            res = r if isinstance(r, PeerResult) else PeerResult.from_dict(r if isinstance(r, Mapping) else r.as_dict())
            self._pending.pop(res.trial_index, None)
            self._results[res.trial_index] = res
            self._tell(res)

    def history(self) -> list[PeerResult]:
        return [self._results[k] for k in sorted(self._results)]

    def pending(self) -> list[Proposal]:
        """Suggested, not yet ingested proposals (by trial index): what a campaign replays on start."""
        return [self._pending[k] for k in sorted(self._pending)]

    def best(self) -> dict | None:
        rows = [r for r in self.history() if r.status == "completed"]
        if not rows:
            return None
        r = min(rows, key=lambda r: (float(r.outcome["threshold_uJ_cm2"]), r.trial_index))
        return {
            "threshold_uJ_cm2": float(r.outcome["threshold_uJ_cm2"]),
            "threshold_err_uJ_cm2": float(r.outcome.get("threshold_err_uJ_cm2", math.nan)),
            "stripe_length_um": float(r.params[LENGTH]),
            "doping": float(r.params[DOPING]),
            "trial_index": r.trial_index,
        }

    def state(self) -> dict:
        counts: dict[str, int] = {}
        for r in self._results.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        return {
            "strategy": self.strategy,
            "seed": self.seed,
            "n_observations": len(self._results),
            "counts": counts,
            "n_pending": len(self._pending),
            "suggest_wall_s": self.suggest_wall_s,
        }

    # hooks
    def _ask(self, n: int) -> list[tuple[int, Mapping[str, float]]]:
        raise NotImplementedError

    def _tell(self, result: PeerResult) -> None:
        raise NotImplementedError


class AxPeer(_Peer):
    """Ax's ``Client`` with its default generation strategy."""

    strategy = "ax"

    def __init__(self, *, seed: int) -> None:
        super().__init__(seed=seed)
        from ax import Client, RangeParameterConfig

        self.client = Client(random_seed=self.seed)
        self.client.configure_experiment(
            parameters=[
                RangeParameterConfig(name=LENGTH, bounds=PEER_SPACE[LENGTH], parameter_type="float", scaling="log"),
                RangeParameterConfig(name=DOPING, bounds=PEER_SPACE[DOPING], parameter_type="float"),
            ],
            name="gainloop_threshold",
        )
        self.client.configure_optimization(objective="-threshold")

    def _ask(self, n):
        return list(self.client.get_next_trials(max_trials=n).items())

    def _tell(self, r: PeerResult) -> None:
        if r.status == "completed":
            thr = float(r.outcome["threshold_uJ_cm2"])
            err = _num(r.outcome.get("threshold_err_uJ_cm2"))
            self.client.complete_trial(r.trial_index, raw_data={"threshold": (thr, err) if err is not None else thr})
        else:
            self.client.mark_trial_failed(r.trial_index, failed_reason=f"{r.status}: {r.reason}"[:500])


class XoptPeer(_Peer):
    """Xopt's expected-improvement generator; stripe length as its log10 (the same log scale as the others)."""

    strategy = "xopt"
    N_INIT = 5  # random points before the first model (Ax's default initialisation: centre + 4 Sobol)

    def __init__(self, *, seed: int, n_init: int = N_INIT) -> None:
        super().__init__(seed=seed)
        import numpy as np
        from xopt import VOCS
        from xopt.generators.bayesian import ExpectedImprovementGenerator

        lo, hi = PEER_SPACE[LENGTH]
        self._bounds = ((math.log10(lo), math.log10(hi)), PEER_SPACE[DOPING])
        self.vocs = VOCS(
            variables={"log10_stripe_length_um": [math.log10(lo), math.log10(hi)], DOPING: list(PEER_SPACE[DOPING])},
            objectives={"threshold": "MINIMIZE"},
        )
        self.generator = ExpectedImprovementGenerator(vocs=self.vocs)
        self.n_init = int(n_init)
        self._rng = np.random.default_rng(self.seed)
        self._next = 0
        self._n_data = 0

    def _ask(self, n):
        import torch

        out = []
        for _ in range(n):
            if self._next < self.n_init or self._n_data == 0:
                u = self._rng.random(2)
                (l_lo, l_hi), (d_lo, d_hi) = self._bounds
                x = {"log10_stripe_length_um": l_lo + u[0] * (l_hi - l_lo), DOPING: d_lo + u[1] * (d_hi - d_lo)}
            else:
                torch.manual_seed(self.seed * 100_003 + self._next)
                x = self.generator.generate(1)[0]
            length = min(max(10.0 ** float(x["log10_stripe_length_um"]), PEER_SPACE[LENGTH][0]), PEER_SPACE[LENGTH][1])
            doping = min(max(float(x[DOPING]), PEER_SPACE[DOPING][0]), PEER_SPACE[DOPING][1])
            out.append((self._next, {LENGTH: length, DOPING: doping}))
            self._next += 1
        return out

    def _tell(self, r: PeerResult) -> None:
        import pandas as pd

        thr = float(r.outcome["threshold_uJ_cm2"]) if r.status == "completed" else math.nan
        row = {
            "log10_stripe_length_um": math.log10(float(r.params[LENGTH])),
            DOPING: float(r.params[DOPING]),
            "threshold": thr,
        }
        self.generator.add_data(pd.DataFrame([row]))
        self._n_data += int(math.isfinite(thr))


class _FailedAsFailed:
    """blop's ``AxOptimizer``, except that an outcome without a threshold is a failed Ax trial.

    ``AxOptimizer.ingest`` completes every trial with the data given; a NaN threshold
    leaves a completed trial without data, and once Ax's initial Sobol trials are all such
    trials its model step fails (no data to winsorize). Ax's own ``mark_trial_failed``
    (what ``AxPeer`` does) lets it keep sampling instead.
    """

    def __init__(self, inner) -> None:
        self._inner = inner
        self.suggest_wall_s = 0.0

    def suggest(self, num_points=None):
        import time

        t0 = time.perf_counter()
        try:
            return self._inner.suggest(num_points)
        finally:
            self.suggest_wall_s += time.perf_counter() - t0

    def ingest(self, points) -> None:
        ok = []
        for p in points:
            if _num(p.get("threshold")) is None:
                self._inner.ax_client.mark_trial_failed(p["_id"], failed_reason="no threshold")
            else:
                ok.append(p)
        if ok:
            self._inner.ingest(ok)

    def get_best_points(self):
        return self._inner.get_best_points()

    def register_failures(self, suggestions) -> None:
        self._inner.register_failures(suggestions)

    def should_stop(self):
        return self._inner.should_stop()


def blop_campaign(
    bench,
    *,
    seed: int,
    lab_clock: Callable[[], float],
    budget_lab_h: float,
    target_threshold_uJ_cm2: float | None = None,
    films: list[str] | None = None,
    film_doping_tol: float = 0.02,
    progress: Callable[[dict], None] | None = None,
):
    """blop's ``optimize`` plan on the bench: its Agent (Ax) proposes, our ``ase_fluence_scan`` measures.

    Stops (blop's ``should_stop``, checked after every step) at the lab-time budget or when a
    threshold at or below the target is measured. Returns a summary like the campaign plan's.
    """
    from blop.ax import Agent, RangeDOF
    from blop.ax.objective import Objective
    from blop.plans import optimize
    from blop.protocols import OptimizationProblem
    from bluesky import preprocessors as bpp
    from bluesky.utils import RequestAbort, RequestStop

    from plans.analysis import AnalysisError
    from plans.campaign import mount_film
    from plans.measurements import ase_fluence_scan

    eligible = set(films) if films is not None else None
    t0 = lab_clock()
    rows: list[PeerResult] = []
    wrapped = None  # blop's optimizer, wrapped below
    by_id: dict[Any, PeerResult] = {}
    summary: dict[str, Any] = {"trials": 0, "failures": 0, "lab_hours": 0.0, "stopped_by": ""}

    def used_h() -> float:
        return (lab_clock() - t0) / 3600.0

    def best() -> dict | None:
        done = [r for r in rows if r.status == "completed"]
        if not done:
            return None
        r = min(done, key=lambda r: float(r.outcome["threshold_uJ_cm2"]))
        return {"threshold_uJ_cm2": float(r.outcome["threshold_uJ_cm2"]), **r.params, "trial_index": r.trial_index}

    def should_stop() -> tuple[bool, str | None]:
        if used_h() >= budget_lab_h:
            summary["stopped_by"] = "lab-time budget"
        b = best()
        if target_threshold_uJ_cm2 is not None and b and b["threshold_uJ_cm2"] <= target_threshold_uJ_cm2:
            summary["stopped_by"] = "target reached"
        return bool(summary["stopped_by"]), summary["stopped_by"] or None

    def acquire(suggestions, actuators, sensors=None, md=None):
        """The campaign plan's nested trial for each suggestion: film, then an adaptive fluence scan."""
        for s in suggestions:
            t_start = lab_clock()
            params = {LENGTH: float(s[LENGTH]), DOPING: float(s[DOPING])}
            status, outcome, reason = "completed", {}, ""
            try:
                sample_id, _ = yield from mount_film(bench, params[DOPING], film_doping_tol, eligible, True)
                result = yield from bpp.set_run_key_wrapper(  # its own run beside blop's "optimize" run
                    ase_fluence_scan(
                        bench,
                        sample_id,
                        stripe_length_um=params[LENGTH],
                        md={"blop_id": s["_id"], "proposal": params, **(md or {})},
                    ),
                    f"blop-trial-{s['_id']}",
                )
                result.pop("uid")
                outcome = result
            except (RequestAbort, RequestStop):
                raise
            except AnalysisError as exc:
                status, reason = "infeasible", f"no ASE threshold found: {exc}"
            except Exception as exc:
                status, reason = "failed", f"{type(exc).__name__}: {exc}"
            rows.append(
                PeerResult.from_dict(
                    {
                        "trial_index": int(s["_id"]),
                        "params": params,
                        "status": status,
                        "outcome": outcome,
                        "reason": reason,
                        "lab_time_s": lab_clock() - t_start,
                    }
                )
            )
            by_id[s["_id"]] = rows[-1]
            summary["trials"] += 1
            summary["failures"] = sum(r.status == "failed" for r in rows)
            summary["lab_hours"] = used_h()
            summary["suggest_wall_s"] = wrapped.suggest_wall_s
            if progress is not None:
                progress({**summary, "best": best()})
        return [s["_id"] for s in suggestions]

    def evaluate(uid, suggestions):
        """Outcome per suggestion: the threshold (NaN without one: Ax keeps the trial without data)."""
        out = []
        for s in suggestions:
            r = by_id[s["_id"]]
            thr = float(r.outcome["threshold_uJ_cm2"]) if r.status == "completed" else math.nan
            out.append({"_id": s["_id"], "threshold": thr})
        return out

    lo, hi = PEER_SPACE[LENGTH]
    agent = Agent(
        sensors=[],
        dofs=[
            RangeDOF(name=LENGTH, bounds=(lo, hi), parameter_type="float", scaling="log"),
            RangeDOF(name=DOPING, bounds=PEER_SPACE[DOPING], parameter_type="float"),
        ],
        objectives=[Objective(name="threshold", minimize=True)],
        evaluation_function=evaluate,
        acquisition_plan=acquire,
        stopping_strategy=should_stop,
        client_kwargs={"random_seed": int(seed)},
    )
    problem = agent.to_optimization_problem()
    wrapped = _FailedAsFailed(problem.optimizer)
    problem = OptimizationProblem(
        optimizer=wrapped,
        actuators=problem.actuators,
        sensors=problem.sensors,
        evaluation_function=problem.evaluation_function,
        acquisition_plan=problem.acquisition_plan,
    )
    yield from optimize(problem, iterations=None, n_points=1)
    summary["lab_hours"] = used_h()
    summary["best"] = best()
    return summary
