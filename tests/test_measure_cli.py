"""`gainloop measure` on the twin into the embedded catalog, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gainloop.catalog import Catalog
from sim.devices import default_twin_bench_path

from .conftest import REPO


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "gainloop.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_the_packaged_twin_bench_is_the_example():
    assert default_twin_bench_path().read_text() == (REPO / "examples" / "twin_bench.toml").read_text()


def test_measure_stores_the_run_and_prints_the_result(tmp_path):
    proc = run(
        "measure", "ase_fluence_scan", "--sample", "cas_doped-film", "--twin", "--data-dir", str(tmp_path), "--json"
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 60 < out["threshold_uJ_cm2"] < 130 and out["threshold_err_uJ_cm2"] > 0
    with Catalog(data_dir_path=tmp_path) as cat:
        run_ = cat.run(out["uid"])
        start = run_.metadata["start"]
        assert start["plan_name"] == "ase_fluence_scan"
        assert start["sample_id"] == "cas_doped-film"
        assert run_.metadata["stop"]["exit_status"] == "success"
        stored = run_["analysis"].read()
        assert float(stored["threshold_uJ_cm2"].values[0]) == pytest.approx(out["threshold_uJ_cm2"])
    # replay re-derives, from the stored data, exactly what was printed live
    proc = run("replay", out["uid"], "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("measure", "ase_fluence_scan", "--sample", "nope", "--twin"), "not in the bench's library"),
        (("measure", "lasing_dance", "--sample", "cas_doped-film"), "unknown plan 'lasing_dance'"),
        (("measure", "vsl_scan", "--sample", "cas_doped-film", "--twin", "--bench", "x.toml"), "choose one"),
        (("measure", "vsl_scan", "--sample", "cas_doped-film", "--fluence", "9000"), "refused by the plan"),
        (("measure", "vsl_scan", "--sample", "cas_doped-film", "-a", "stripe_lengths_um=[0,10,20,30,40]"), "slit"),
        (("measure", "ase_fluence_scan", "--sample", "cas_doped-film", "-a", "speed=3"), "has no argument speed"),
        (("replay", "0000-no-such-run"), "no run with uid '0000-no-such-run'"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, args, message):
    proc = run(*args, "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert message in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
