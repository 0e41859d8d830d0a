"""Fault 9: the queueserver's RE Manager killed mid-plan and Redis restarted (see
``scenarios/queueserver.py``): queue and history intact, the killed item not counted as a
success until its runs are checked against the catalog's stop documents.

Real processes: a private ``redis-server`` keeping its data on disk, ``gainloop qserver
start`` on the twin, a ``gainloop catalog serve`` on PostgreSQL. Skipped (naming it) without
PostgreSQL or a ``redis-server`` binary.
"""

from __future__ import annotations

import json

from .scenarios.queueserver import scenario_manager_killed_redis_restarted


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
