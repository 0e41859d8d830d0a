"""The same campaign on the twin in-process and over Channel Access on the twin's IOC.

A lab trusts what the twin says about its bench only if the bench path is the twin path: the
same seed must give the same trials (conditions, films, outcomes) and the same best, and the lab
hours must be the bench's (the IOC's lab clock, not the wall clock of a fast-running IOC).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gainloop.campaign import rebuild_trials
from gainloop.catalog import Catalog
from harness.faults._env import clean_env
from harness.ioc import EXAMPLE_BENCH, twin_ioc

pytestmark = pytest.mark.slow(seconds=55)  # one of the longest modules: it runs early (tests/conftest.py)

TRIALS = 4


def _campaign(data_dir, *args, env=None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "campaign", "run", "--seed", "0", "--max-trials", str(TRIALS),
         "--data-dir", str(data_dir), "--json", *args],
        capture_output=True, text=True, timeout=600, env=clean_env(**(env or {})),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _trials(data_dir, uid: str) -> list:
    with Catalog(data_dir_path=data_dir) as cat:
        _, trials, _, _ = rebuild_trials(cat, uid)
    return trials


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    twin_dir, ca_dir = tmp_path_factory.mktemp("twin"), tmp_path_factory.mktemp("ca")
    twin = _campaign(twin_dir, "--twin")
    with twin_ioc(time_scale=10000.0, args=("--seed", "0")) as ioc:  # a new film: 6 lab h in ~2 s
        ca = _campaign(ca_dir, "--bench", str(EXAMPLE_BENCH), env=ioc.env)
    return (twin, _trials(twin_dir, twin["campaign_uid"])), (ca, _trials(ca_dir, ca["campaign_uid"]))


def test_the_same_seed_gives_the_same_trials_and_best_over_ca(both):
    (twin, twin_trials), (ca, ca_trials) = both
    assert len(twin_trials) == len(ca_trials) == TRIALS
    for a, b in zip(twin_trials, ca_trials, strict=True):
        assert a.trial_index == b.trial_index and a.status == b.status == "completed"
        assert a.params == pytest.approx(b.params, rel=1e-9)
        assert a.outcome["threshold_uJ_cm2"] == pytest.approx(b.outcome["threshold_uJ_cm2"], rel=1e-9)
        assert a.lab_time_s == pytest.approx(b.lab_time_s, rel=1e-9)
    assert ca["best"] == pytest.approx(twin["best"], rel=1e-9)
    assert ca["material"] == twin["material"] == "PbS/PbSSe-CAS/I-ALD"


def test_lab_time_over_ca_is_the_iocs_lab_clock(both):
    (twin, _), (ca, _) = both
    assert twin["lab_clock"] == "the twin's simulated lab clock"
    assert ca["lab_clock"] == "the bench's lab-clock PV GL:SIM:LabTime"
    assert ca["lab_hours"] == pytest.approx(twin["lab_hours"], rel=1e-9)
    assert ca["lab_hours"] > 0.05  # lab hours, not the few wall seconds the IOC took
