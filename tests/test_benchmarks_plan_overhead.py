"""benchmarks/plan_overhead.py runs at tiny sizes and ends with its JSON line (its speed is not tested here)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO

KEYS = ("per_acq_ms", "bare_count_ms", "ratio", "replay_events_per_s", "storage_cpu_s_per_run", "drain_runs_per_s")


@pytest.mark.slow
def test_plan_overhead_prints_finite_positive_figures_on_its_last_line():
    args = ["--n", "2", "--warmup", "1", "--repeats", "1", "--replay-events", "10", "--json"]
    args += ["--storage-runs", "3", "--storage-events", "2", "--no-postgres"]
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "plan_overhead.py"), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert isinstance(result[key], float) and math.isfinite(result[key]) and result[key] > 0, (key, result)
    assert result["ratio"] == pytest.approx(result["per_acq_ms"] / result["bare_count_ms"])
    # the same events through bp.count, beside gainloop's own acquisitions
    assert math.isfinite(result["per_acq_bp_count_ms"]) and result["per_acq_bp_count_ms"] > 0
    assert result["ratio_bp_count"] == pytest.approx(result["per_acq_bp_count_ms"] / result["bare_count_ms"])
    assert "bp.count(twin devices) + spool" in proc.stdout and "gainloop acquire + spool" in proc.stdout
    assert result["replay_events"] == 10 and result["n"] == 2
    assert math.isfinite(result["three_sim_devices_ms"]) and result["three_sim_devices_ms"] > 0
    # the per-run / per-event split needs runs longer than the 2-event ones: null, not NaN, at --n 2
    split = ("per_acq_per_event_ms", "per_acq_per_run_ms", "bare_count_per_event_ms", "ratio_per_event")
    assert all(key in result and result[key] is None for key in split), result
    assert "ratio per_acq / bare_count" in proc.stdout and "[replay]" in proc.stdout
    assert result["storage_runs"] == 3 and result["postgres"] is None and "skipped: --no-postgres" in proc.stdout
    assert result["storage_cpu_ratio"] == pytest.approx(
        result["storage_cpu_s_per_run"] / result["storage_cpu_s_per_run_before"]
    )
    assert result["lag_median_s"] is not None and result["lag_median_s"] > 0  # stop -> readable, measured
