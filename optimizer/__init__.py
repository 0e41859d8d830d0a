"""The optimiser: search space, cost model, strategies behind ``suggest(n)`` / ``ingest(results)``.

Knows nothing of bluesky, devices or the twin (import-linter enforces it): a campaign
turns a ``Proposal`` into a measurement plan and the plan's analysis into a
``TrialResult``.

Strategies (``STRATEGIES``, in this order; ``make_optimizer`` builds one by name):

* ``"nested"`` -- a trial is (stripe length, doping) measured by an adaptive fluence scan;
  GP on ln threshold with heteroscedastic noise, cost-aware qLogNEI (``_nested``); optionally
  twin-guided: the twin's threshold map as the GP's prior mean (``PriorMap``, ``_prior``);
* ``"random"``, ``"grid"`` -- baselines with the same protocol (``_baselines``).

Models train on the conditions as measured (``TrialResult.observed_params``: a new film's
doping from its absorption), the measurement error entering as input noise (``_models.
fit_gp_input_noise``, NIGP); the requested ``params`` are what is checked against the space.

Every strategy prices trials with one ``CostModel``: the cost-aware acquisitions divide by
``Optimizer.expected_cost_s`` and each ``Proposal`` records the same figure. The nested
strategy's threshold model is open to readers through ``NestedOptimizer.posterior``.
"""

from __future__ import annotations

from typing import Any

from core.errors import ParameterError
from core.protocols import STRATEGIES
from core.trial import STATUSES, Proposal, TrialResult

from . import _imports  # noqa: F401  (first: BoTorch's stack, see its docstring)
from ._base import NotEnoughDataError, Optimizer
from ._baselines import GridSearch, RandomSearch
from ._cost import CostModel, LabState
from ._nested import NestedOptimizer
from ._prior import PriorMap
from ._space import SearchSpace

__all__ = [
    "STATUSES",
    "STRATEGIES",
    "CostModel",
    "GridSearch",
    "LabState",
    "NestedOptimizer",
    "NotEnoughDataError",
    "Optimizer",
    "PriorMap",
    "Proposal",
    "RandomSearch",
    "SearchSpace",
    "TrialResult",
    "make_optimizer",
]

_CLASSES: dict[str, type[Optimizer]] = {cls.strategy: cls for cls in (NestedOptimizer, RandomSearch, GridSearch)}

if tuple(_CLASSES) != STRATEGIES:  # the names are declared in the leaf; each must be a class here
    raise ImportError(f"optimizer strategies {tuple(_CLASSES)} differ from core.protocols.STRATEGIES {STRATEGIES}")


def make_optimizer(strategy: str, space: SearchSpace, **kwargs: Any) -> Optimizer:
    """An optimiser of the named strategy (one of ``STRATEGIES``) over ``space``.

    Keywords every strategy takes (``Optimizer``): ``seed`` (required, an integer >= 0;
    the same seed and history give the same proposals), ``cost`` (default
    ``CostModel()``), ``objectives`` (``("threshold",)`` or ``("threshold", "gnet")``),
    ``batch_size`` and ``lab_state`` (the bench when the campaign starts). Any other
    keyword is the strategy's tuning knob (e.g. ``n_init``, ``cost_aware``).

    Raises:
        ParameterError: an unknown strategy (the message lists ``STRATEGIES``) or a bad argument.
    """
    if strategy not in _CLASSES:
        raise ParameterError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    return _CLASSES[strategy](space, **kwargs)
