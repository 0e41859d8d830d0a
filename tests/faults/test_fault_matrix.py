"""benchmarks/fault_matrix.py: every fault of the suite is in the matrix, and its JSON line has the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "fault_matrix.py"

#: The issue's ten faults as the scenario modules name them (1-2, 8: campaign; 3, 4, 10: catalog; 5-7: devices; 9).
EXPECTED = {
    "campaign_sigkill", "run_without_stop", "pause_resume", "abort", "three_sigints", "resume_fluence",
    "tiled_down_mid_run", "duplicate_ingestion", "catalog_load",
    "stuck_motor", "bad_readbacks", "interlock_every_plan", "interlock_ioc",
    "queueserver_manager_killed_redis_restarted",
}  # fmt: skip


def _matrix(*args: str):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600, cwd=REPO)


def test_the_matrix_lists_every_fault_and_refuses_an_unknown_one():
    listed = _matrix("--list")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == EXPECTED
    bad = _matrix("--only", "no_such_fault")
    assert bad.returncode == 2 and "unknown faults ['no_such_fault']" in bad.stderr


def test_one_fault_through_the_matrix_prints_its_figures_as_json():
    out = _matrix("--only", "resume_fluence", "--repeat", "1", "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])["resume_fluence"]
    if row["skipped"]:  # the scenario's Tiled server needs PostgreSQL
        pytest.skip(row["skipped"])
    assert row["runs"] == 1 and row["ok"] is True and row["skipped"] is None
    assert row["trials_lost"] == row["trials_doubled"] == row["documents_lost"] == 0
    assert "resume_fluence" in out.stdout and "all checks held: True" in out.stdout
