"""Campaigns on the twin: everything recorded, resumable from the catalog alone, even after SIGKILL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from gainloop.campaign import CampaignConfig, CampaignError, campaign_status, rebuild_trials, run_campaign
from gainloop.catalog import Catalog
from gainloop.replay import stream_columns

from .test_catalog_server import _clean_env, _start, _stop, database  # noqa: F401  (module fixture)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


def _runs_of(catalog, campaign_uid):
    from tiled.queries import Key

    return list(catalog.client.search(Key("start.campaign_uid") == campaign_uid).values())


@pytest.fixture(scope="module")
def three_trials(catalog):
    cfg = CampaignConfig(strategy="nested", seed=1, budget_lab_h=None, max_trials=3, twin_seed=1)
    return run_campaign(catalog, cfg)


def test_a_campaign_records_its_decisions_and_measurements(catalog, three_trials):
    summary = three_trials
    uid = summary["campaign_uid"]
    assert summary["trials"] == 3 and summary["stopped_by"] == "trial budget"
    runs = _runs_of(catalog, uid)
    record = [r for r in runs if r.start["plan_name"] == "campaign"]
    trials = [r for r in runs if r.start["plan_name"] != "campaign"]
    assert len(record) == 1 and record[0].stop["exit_status"] == "success"
    assert sorted(r.start["trial_index"] for r in trials) == [0, 1, 2]
    for r in trials:
        assert r.start["plan_name"] == "ase_fluence_scan"
        assert r.start["proposal"]["trial_index"] == r.start["trial_index"]
        assert r.stop["exit_status"] == "success"
    for stream in ("proposals", "outcomes", "model"):
        cols = stream_columns(record[0][stream])
        assert list(cols["trial_index"]) == [0, 1, 2], stream
    outcomes = stream_columns(record[0]["outcomes"])
    thresholds = [json.loads(o).get("threshold_uJ_cm2") for o in outcomes["outcome"]]
    best = summary["best"]
    assert best["threshold_uJ_cm2"] == pytest.approx(min(t for t in thresholds if t is not None))
    model = json.loads(stream_columns(record[0]["model"])["state"][-1])
    assert model["n_observations"] == 3


def test_status_is_rebuilt_from_the_catalog_alone(catalog, three_trials):
    status = campaign_status(catalog, three_trials["campaign_uid"])
    assert status["trials"] == 3 and status["failures"] == 0
    assert status["best"]["threshold_uJ_cm2"] == pytest.approx(three_trials["best"]["threshold_uJ_cm2"])
    assert status["lab_hours"] == pytest.approx(three_trials["lab_hours"], rel=1e-6)


def test_resume_proposes_what_the_uninterrupted_campaign_would(catalog, three_trials):
    cfg = CampaignConfig(strategy="nested", seed=1, budget_lab_h=None, max_trials=2, twin_seed=1)
    first = run_campaign(catalog, cfg)
    resumed = run_campaign(catalog, resume_uid=first["campaign_uid"], budgets={"max_trials": 3})
    assert resumed["campaign_uid"] == first["campaign_uid"] and resumed["trials"] == 3
    _, ref, _, _ = rebuild_trials(catalog, three_trials["campaign_uid"])
    _, got, _, _ = rebuild_trials(catalog, first["campaign_uid"])
    assert [t["trial_index"] for t in got] == [0, 1, 2]
    for a, b in zip(ref, got, strict=True):
        assert a["params"] == pytest.approx(b["params"])


def test_unknown_campaign_is_a_clear_error(catalog):
    with pytest.raises(CampaignError, match="no campaign 'nope'"):
        campaign_status(catalog, "nope")


# ---------------------------------------------------------------- SIGKILL against a real server
@pytest.fixture(scope="module")
def server(database, tmp_path_factory):  # noqa: F811
    postgres_uri, _ = database
    logs = tmp_path_factory.mktemp("server")
    proc, url, _out, _ = _start(postgres_uri, logs / "data", logs, _clean_env(GAINLOOP_TILED_API_KEY="k" * 32))
    try:
        yield url, "k" * 32
    finally:
        _stop(proc)


def _wait_for(predicate, timeout_s: float, what: str, proc):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the campaign exited before {what}: {proc.stderr.read()}")
        found = predicate()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("kill_point", ["mid-measurement", "between trials"])
def test_sigkill_then_resume_loses_and_doubles_nothing(kill_point, server, tmp_path):
    url, key = server
    env = _clean_env(TILED_API_KEY=key)
    args = ["--catalog", url, "--data-dir", str(tmp_path), "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gainloop.cli", "campaign", "run", "--seed", "2", "--max-trials", "3", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        with Catalog(url, data_dir_path=tmp_path, api_key=key) as cat:
            from tiled.queries import Key

            def campaign_uid():
                runs = list(cat.client.search(Key("start.plan_name") == "campaign").values())
                mine = [r for r in runs if r.start.get("config", {}).get("seed") == 2]
                return mine[-1].start["campaign_uid"] if mine else None

            uid = _wait_for(campaign_uid, 120, "the campaign's record run", proc)

            def trial_run(index, stopped):
                for r in _runs_of(cat, uid):
                    if r.start.get("trial_index") == index and (r.metadata.get("stop") is not None) == stopped:
                        return r
                return None

            if kill_point == "mid-measurement":
                _wait_for(lambda: trial_run(1, stopped=False), 180, "trial 1 to start", proc)
            else:
                _wait_for(lambda: trial_run(0, stopped=True), 180, "trial 0 to end", proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    resumed = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "campaign", "resume", uid, "--max-trials", "3", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert out["campaign_uid"] == uid and out["trials"] == 3
    with Catalog(url, data_dir_path=tmp_path, api_key=key) as cat:
        _, trials, _, _ = rebuild_trials(cat, uid)
        assert [t["trial_index"] for t in trials] == [0, 1, 2]  # none lost
        completed_runs = {}
        for r in _runs_of(cat, uid):
            if r.start["plan_name"] != "campaign" and (r.metadata.get("stop") or {}).get("exit_status") == "success":
                completed_runs[r.start["trial_index"]] = completed_runs.get(r.start["trial_index"], 0) + 1
        assert all(n == 1 for n in completed_runs.values())  # none measured twice
        if kill_point == "mid-measurement":
            assert trials[1]["status"] == "failed" and "interrupted" in trials[1]["reason"]
        else:  # trial 0 had ended; trial 1 may have begun before the kill landed
            assert trials[0]["status"] == "completed"
            assert all(t["status"] == "completed" or "interrupted" in t["reason"] for t in trials)
