"""Fault scenarios: each injects one fault into real processes and measures what was lost.

Shared by the fault tests (``tests/faults/test_*.py``, which assert on the figures) and
``benchmarks/fault_matrix.py`` (which repeats them and prints the matrix). A scenario
is a plain function ``scenario(workdir: Path, env: FaultEnv, **options) -> FaultFigures``;
it never calls pytest (a missing service raises ``ServiceMissing``, which the tests turn
into a skip naming the service and the benchmark reports as not run).

Modules: ``campaign`` (faults 1, 2, 8), ``catalog`` (3, 4, 10), ``devices`` (5, 6, 7),
``queueserver`` (9).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ._env import FaultEnv, ServiceMissing

__all__ = ["FaultEnv", "FaultFigures", "ServiceMissing"]


@dataclass
class FaultFigures:
    """What one run of a fault scenario lost (every count must be zero) and how long recovery took.

    ``trials_lost``: trials of the campaign with no outcome after recovery;
    ``trials_doubled``: (campaign_uid, trial_index) completed more than once;
    ``documents_lost``: documents emitted that are in neither the catalog nor a re-uploaded backup;
    ``recovery_s``: wall seconds from the fault's end (or injection) until the work went on
    (NaN when the scenario has no recovery step); ``checks``: named booleans the scenario
    verified (all must be True); ``detail``: free text for the table.
    """

    fault: str
    trials_lost: int = 0
    trials_doubled: int = 0
    documents_lost: int = 0
    recovery_s: float = math.nan
    checks: dict[str, bool] = field(default_factory=dict)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not (self.trials_lost or self.trials_doubled or self.documents_lost) and all(self.checks.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}
