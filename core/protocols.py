"""The optimiser protocol the campaign plan drives (``plans.campaign.campaign``).

Any object with these members can run a campaign: the project's strategies
(``optimizer.NestedOptimizer`` and friends) and the benchmark's peers (Ax, Xopt, blop
adapters) alike. It is ``runtime_checkable``, so the plan and the benchmarks check a
candidate with ``isinstance`` before a run opens (members present; signatures are the
documented ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from core.trial import Proposal, TrialResult

__all__ = ["OPTIMIZER_METHODS", "STRATEGIES", "Optimizer"]

STRATEGIES = ("nested", "random", "grid")
"""The strategy names a campaign may name, ours first (``optimizer.make_optimizer`` builds each;
here, in the leaf, so that a config is checked without importing BoTorch). A joint strategy (one
acquisition per trial over fluence, stripe length and doping) was removed: it never reached the
optimum (0/10 seeds in 48 lab h, ``benchmarks/campaign_lab_time.py``)."""

OPTIMIZER_METHODS = ("suggest", "ingest", "history", "best", "state", "pending")
"""The methods the campaign plan calls on its optimiser (the members of ``Optimizer`` besides its names)."""


@runtime_checkable
class Optimizer(Protocol):
    """Suggest conditions, ingest what they gave, say the best so far and the model's state.

    ``strategy`` and ``seed`` name the run in its start document; ``suggest(n)`` returns
    proposals with fresh trial indices (``n=None``: the strategy's batch); ``ingest``
    takes ``TrialResult`` objects (or their ``as_dict`` form); ``history()`` is every
    ingested result in trial order; ``best()`` is ``{"threshold_uJ_cm2": ..., ...}`` or
    None; ``state()`` is a JSON-able snapshot of the model; ``pending()`` lists proposals
    recorded but never measured (a resumed campaign measures them first).
    """

    strategy: str
    seed: int

    def suggest(self, n: int | None = None) -> list[Proposal]: ...

    def ingest(self, results: Iterable[TrialResult | Mapping[str, Any]]) -> None: ...

    def history(self) -> list[TrialResult]: ...

    def best(self) -> dict | None: ...

    def state(self) -> dict: ...

    def pending(self) -> list[Proposal]: ...
