"""The peers of ``benchmarks/campaign_lab_time.py`` go through the same campaign plan as ours:
each must be a ``core.protocols.Optimizer`` (the plan checks it with ``isinstance``) (one stop's benchmark lost Ax and
Xopt to a method the plan had started to call)."""

from __future__ import annotations

import importlib.util
import sys

from .conftest import REPO


def _peers_module():
    spec = importlib.util.spec_from_file_location("gainloop_bench_peers", REPO / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # Ax and Xopt are imported only when a peer is made
    return module


def test_every_peer_is_an_optimizer_the_campaign_plan_accepts():
    from core.protocols import OPTIMIZER_METHODS, Optimizer
    from optimizer import GridSearch, NestedOptimizer, RandomSearch

    peers = _peers_module()
    for cls in (peers.AxPeer, peers.XoptPeer, NestedOptimizer, RandomSearch, GridSearch):
        missing = sorted(m for m in OPTIMIZER_METHODS if not callable(getattr(cls, m, None)))
        assert not missing, f"{cls.__name__} lacks {missing}"

    class Fixed(peers._Peer):
        strategy = "fixed"

    class Incomplete(peers._Peer):  # a peer that lost a method the plan calls
        strategy = "incomplete"
        state = None

    assert isinstance(Fixed(seed=0), Optimizer)
    assert not isinstance(Incomplete(seed=0), Optimizer)


def test_a_peer_holds_its_suggestions_as_pending_until_ingested():
    peers = _peers_module()

    class Fixed(peers._Peer):
        strategy = "fixed"

        def _ask(self, n):
            return [(i, {"stripe_length_um": 500.0 + i, "doping": 7.4}) for i in range(n)]

        def _tell(self, result):
            pass

    peer = Fixed(seed=0)
    assert peer.pending() == []
    proposals = peer.suggest(2)
    assert [p.trial_index for p in peer.pending()] == [0, 1] == [p.trial_index for p in proposals]
    peer.ingest([{"trial_index": 0, "params": proposals[0].params, "status": "failed", "reason": "test"}])
    assert [p.trial_index for p in peer.pending()] == [1]


def test_a_peer_runs_trials_through_the_campaign_plan_on_the_twin(RE):
    """The campaign plan records a peer's proposals as trial records (one stop's benchmark lost Ax and Xopt to a
    proposal type the record refused: every seed ended at its first suggestion)."""
    from plans.campaign import campaign
    from sim.devices import default_twin_bench_path, twin_bench_devices

    peers = _peers_module()

    class Fixed(peers._Peer):
        strategy = "fixed"

        def _ask(self, n):
            start = len(self._results) + len(self._pending)
            return [(start + i, {"stripe_length_um": 600.0 + 300.0 * (start + i), "doping": 7.4}) for i in range(n)]

        def _tell(self, result):
            pass

    bench = twin_bench_devices(default_twin_bench_path(), seed=0)
    peer = Fixed(seed=0)
    summary = RE(
        campaign(
            bench,
            peer,
            campaign_uid="peer-test",
            lab_clock=bench.lab_time_s,
            max_trials=2,
            films=["cas_doped-film"],
        )
    ).plan_result
    assert summary["stopped_by"] == "trial budget"
    assert [r.status for r in peer.history()] == ["completed", "completed"]
    assert 50.0 < peer.best()["threshold_uJ_cm2"] < 200.0
