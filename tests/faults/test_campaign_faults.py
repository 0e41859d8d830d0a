"""Campaign process faults (issue 7, items 1, 2, 8) and the resume-time fluence checks.

The scenarios live in ``harness/faults/campaign.py``; these tests run each once
and assert on its figures and on the behaviour it observed.
"""

from __future__ import annotations

import json

import pytest

from harness.faults import ServiceMissing
from harness.faults.campaign import (
    KILL_POINTS,
    scenario_abort,
    scenario_pause_resume,
    scenario_resume_fluence,
    scenario_sigkill,
    scenario_three_sigints,
)

pytestmark = pytest.mark.slow(seconds=180)  # one of the longest modules: it runs early (tests/conftest.py)


@pytest.fixture(scope="module")
def sigkill(fault_env, tmp_path_factory):
    """The four-point SIGKILL chain, run once for items 1 and 2."""
    try:
        return scenario_sigkill(tmp_path_factory.mktemp("sigkill"), fault_env)
    except ServiceMissing as exc:
        pytest.skip(str(exc))


def test_sigkill_at_four_points_loses_and_doubles_nothing(sigkill):
    fig = sigkill
    assert fig.ok, (fig.checks, fig.detail)
    assert (fig.trials_lost, fig.trials_doubled, fig.documents_lost) == (0, 0, 0)
    killed = [k for k in fig.checks if k.endswith("killed by SIGKILL")]
    assert [k.split(":")[0] for k in killed] == list(KILL_POINTS)
    trials = fig.observed["trials"]
    # proposed:0 -> replayed as trial 0, killed measuring -> failed; measured:1, recording:2 -> completed
    assert [t["trial_index"] for t in trials] == [0, 1, 2, 3]
    assert [t["status"] for t in trials] == ["failed", "completed", "completed", "completed"]
    assert trials[0]["reason"] == "interrupted: the run has no stop document"
    runs = fig.observed["runs"]
    assert sorted(r["trial_index"] for r in runs) == [0, 1, 2, 3]  # one run per index, none re-measured
    assert sorted((r["trial_index"], r["stop"]) for r in runs)[0] == (0, None)
    assert fig.observed["summary"]["trials"] == 4 and fig.observed["summary"]["failures"] == 1
    assert fig.recovery_s > 0


def test_a_run_without_stop_document_is_failed_never_fed_and_readable(sigkill):
    readers = sigkill.observed["readers"]
    assert readers["status"]["returncode"] == 0
    assert readers["status"]["json"]["failures"] == 1
    assert readers["replay"]["returncode"] == 2, readers["replay"]
    assert "Traceback" not in readers["replay"]["stderr"]
    assert "stop document" in readers["replay"]["stderr"]
    assert readers["report"]["returncode"] == 0, readers["report"]
    completed = [t for t in sigkill.observed["trials"] if t["status"] == "completed"]
    assert sigkill.observed["gp_rows"] == len(completed) == 3
    assert sigkill.checks["the GP trains on the completed trials only"]


def test_pause_then_resume_gives_the_uninterrupted_data(run_scenario):
    fig = run_scenario(scenario_pause_resume)
    assert fig.ok, (fig.checks, fig.detail)
    assert fig.observed["state_when_paused"] == "paused"
    assert fig.observed["trials_when_paused"] == {0: None}  # paused inside trial 0's scan
    a, b = fig.observed["uninterrupted"], fig.observed["paused"]
    assert sorted(a) == sorted(b) == [0, 1]
    for i in a:
        assert b[i]["params"] == a[i]["params"]
        assert b[i]["analysis"] == pytest.approx(a[i]["analysis"], rel=0, abs=0, nan_ok=True)
        assert len(b[i]["primary"]["pump_fluence"]) == len(a[i]["primary"]["pump_fluence"]) > 0
        assert b[i]["primary"]["pump_fluence"] == a[i]["primary"]["pump_fluence"]


def test_abort_leaves_the_trial_abandoned_and_its_index_spent(run_scenario):
    fig = run_scenario(scenario_abort)
    assert fig.ok, (fig.checks, fig.detail)
    assert fig.observed["abort_result"]["exit_status"] == "abort"
    assert fig.observed["aborted_run_stop"]["exit_status"] == "abort"
    trials = fig.observed["trials"]
    assert [t["trial_index"] for t in trials] == [0, 1, 2]
    assert trials[1]["status"] == "abandoned" and "operator abort" in trials[1]["reason"]
    assert fig.observed["proposed_after_resume"] == [2]
    assert fig.observed["aborted_params_proposed_again"] == []


@pytest.mark.parametrize("keep_pressing_s", [None, 0.02], ids=["three", "held-down"])
def test_three_sigints_end_the_campaign_cleanly(run_scenario, keep_pressing_s):
    fig = run_scenario(scenario_three_sigints, keep_pressing_s=keep_pressing_s)
    assert fig.ok, (fig.checks, fig.detail, fig.observed.get("stderr"))
    assert fig.observed["returncode"] == 130
    assert fig.observed["stops"] == {"record": "abort", 0: "abort"}
    assert "Traceback" not in fig.observed["stderr"]


def test_resume_never_sends_a_stored_fluence_above_the_limit(run_scenario):
    fig = run_scenario(scenario_resume_fluence)
    assert fig.ok, (fig.checks, json.dumps(fig.observed, default=str)[-3000:])
    refusals = fig.observed["refusals"]
    limit = fig.observed["limit_uJ_cm2"]
    assert len(refusals) == 4
    for name, r in refusals.items():
        assert r["runs"] == 0, name
        assert "nothing was sent" in r["message"], name
    assert (
        f"exceeds the bench's fluence limit {limit:g}"
        in refusals["stored config fluence_max above the limit"]["message"]
    )
    assert "trial 0" in refusals["stored proposal carrying a fluence above the limit"]["message"]
    assert len(fig.observed["replayed"]["runs"]) == 1
