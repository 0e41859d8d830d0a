"""The main job (`gainloop demo`): a campaign on the twin that gets within 5 % of the twin's optimum."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gainloop.campaign import campaign_status
from gainloop.catalog import Catalog
from gainloop.demo import GOAL_FRACTION, twin_goal

pytestmark = pytest.mark.slow(seconds=90)  # one of the longest modules: it runs early (tests/conftest.py)


def test_the_demo_reaches_the_twins_optimum_and_says_how_far_it_is(tmp_path):
    goal = twin_goal()
    proc = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "demo", "--data-dir", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reached"] is True and out["goal_fraction"] == GOAL_FRACTION
    assert out["optimum"]["threshold_uJ_cm2"] == goal.threshold_uJ_cm2
    best = out["best"]["threshold_uJ_cm2"]
    assert best <= goal.threshold_uJ_cm2 * (1 + GOAL_FRACTION)
    assert out["within_fraction"] == best / goal.threshold_uJ_cm2 - 1
    # the twin's own threshold where the campaign measured its best is near the optimum too
    assert out["true_threshold_uJ_cm2"] <= goal.threshold_uJ_cm2 * 1.10
    assert out["lab_hours"] > 6.0  # it made at least one film of a new doping (6 lab h each)
    assert (tmp_path / "reports" / out["campaign_uid"] / "index.html").is_file()
    with Catalog(data_dir_path=tmp_path) as cat:
        status = campaign_status(cat, out["campaign_uid"])
    assert status["best"]["threshold_uJ_cm2"] == best and status["trials"] == out["trials"]
