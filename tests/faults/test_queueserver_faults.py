"""Fault 9: the queueserver's RE Manager killed mid-plan and Redis restarted (see
``scenarios/queueserver.py``): queue and history intact, the killed item not counted as a
success until its runs are checked against the catalog's stop documents.

Real processes: a private ``redis-server`` keeping its data on disk, ``gainloop qserver
start`` on the twin, a ``gainloop catalog serve`` on PostgreSQL. Skipped (naming it) without
PostgreSQL or a ``redis-server`` binary.
"""

from __future__ import annotations

import json

import pytest

from harness.faults import ServiceMissing
from harness.faults.queueserver import scenario_manager_killed_redis_restarted

pytestmark = pytest.mark.slow(seconds=45)  # one of the longest modules: it runs early (tests/conftest.py)


def test_a_killed_manager_and_a_restarted_redis_lose_nothing_and_the_lost_item_is_reconciled(run_scenario):
    figures = run_scenario(scenario_manager_killed_redis_restarted)
    seen = json.loads(figures.detail)
    failed = [name for name, ok in figures.checks.items() if not ok]
    assert not failed, (failed, seen)
    assert (figures.trials_lost, figures.trials_doubled) == (0, 0), seen
    # the queueserver alone would have taken the item as done ("unknown" = assume success)...
    assert seen["queueserver_exit_status"] == "unknown"
    # ...gainloop says it was cut off, names the campaign to resume, and counts one success only
    campaign = seen["reconcile"]["campaign"]
    assert campaign["outcome"] == "interrupted" and not campaign["counted_as_success"]
    assert "gainloop campaign resume " + campaign["campaign_uids"][0] in campaign["detail"]
    assert seen["reconcile"]["successes"] == 1 and seen["reconcile"]["exit_code"] == 1
    # the restarted manager said so at start-up
    assert seen["start_warning"]
    # the campaign's runs were not run again after the restart; each scan ran once
    runs = list(seen["runs_per_item"].values())
    assert runs[0] == 1 and runs[2] == 1 and runs[1] >= 2  # record run + at least one trial
    assert figures.recovery_s > 0
    print(f"fault 9: recovery {figures.recovery_s:.1f} s, runs per item {runs}")


def _item(uid: str, name: str, exit_status: str, run_uids=()) -> dict:
    return {"item_uid": uid, "name": name, "result": {"exit_status": exit_status, "run_uids": list(run_uids)}}


def test_reconcile_counts_an_unknown_item_a_success_only_when_its_runs_stopped_with_success(fault_env, tmp_path):
    """Every verdict of ``reconcile`` on runs written into the module's Tiled server (PostgreSQL)."""
    from bluesky import RunEngine
    from bluesky import plan_stubs as bps

    from gainloop.catalog import Catalog
    from gainloop.queueserver import ITEM_UID_KEY, reconcile

    try:
        server = fault_env.tiled_server(shared=True)
    except ServiceMissing as exc:
        pytest.skip(str(exc))

    def plan(fail: bool):
        yield from bps.open_run()
        if fail:
            raise RuntimeError("the sample burnt")
        yield from bps.close_run()

    with Catalog(server.url, data_dir_path=tmp_path, api_key=server.api_key) as cat:
        RE = RunEngine({})
        RE.subscribe(cat.writer())
        RE(plan(False), **{ITEM_UID_KEY: "done-but-unknown"})
        RE(plan(False), **{ITEM_UID_KEY: "done-but-unknown"})
        with pytest.raises(RuntimeError, match="burnt"):
            RE(plan(True), **{ITEM_UID_KEY: "failed-but-unknown"})
        history = [
            _item("done-but-unknown", "ase_point", "unknown"),
            _item("failed-but-unknown", "ase_point", "unknown"),
            _item("never-started", "ase_point", "unknown"),
            _item("completed", "ase_point", "completed", ["r1"]),
            _item("failed", "ase_point", "failed"),
            _item("stopped", "ase_point", "stopped"),
        ]
        outcomes = {o.item_uid: o for o in reconcile(history, cat)}
    got = {uid: (o.outcome, o.counted_as_success) for uid, o in outcomes.items()}
    assert got == {
        "done-but-unknown": ("success", True),
        "failed-but-unknown": ("failed", False),
        "never-started": ("unknown", False),
        "completed": ("success", True),
        "failed": ("failed", False),
        "stopped": ("stopped", False),
    }
    assert len(outcomes["done-but-unknown"].run_uids) == 2 and "all 2 runs stopped with success" in (
        outcomes["done-but-unknown"].detail
    )
    assert "stopped with fail" in outcomes["failed-but-unknown"].detail
    assert "no run of this item is in the catalog" in outcomes["never-started"].detail
