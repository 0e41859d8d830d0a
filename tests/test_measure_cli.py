"""`gainloop measure` on the twin into the embedded catalog, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gainloop.catalog import Catalog
from sim.devices import default_twin_bench_path

from .conftest import REPO

pytestmark = pytest.mark.slow(seconds=80)  # one of the longest modules: it runs early (tests/conftest.py)


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
    # ... and takes the 8 characters the live table shows
    proc = run("replay", out["uid"][:8], "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == out
    # the human-readable result: a value with its error to the error's precision
    proc = run("replay", out["uid"][:8], "--data-dir", str(tmp_path))
    shown = next(line for line in proc.stdout.splitlines() if line.startswith("threshold_uJ_cm2:"))
    assert shown.startswith("threshold_uJ_cm2: ") and " +- " in shown and len(shown.split()[1]) <= 6, shown


def test_a_bad_plan_argument_is_refused_before_any_run_is_opened(tmp_path):
    proc = run("measure", "ase_fluence_scan", "--sample", "cas_doped-film", "--twin", "-a", "exposure_s=-1",
               "--data-dir", str(tmp_path))  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "exposure -1 s is outside the soft limits 0.001 to 60 s" in proc.stderr.replace("\n", " ")
    with Catalog(data_dir_path=tmp_path) as cat:
        assert len(cat.client) == 0  # nothing stored, not even a failed run


def test_uid_prefixes_resolve_when_unambiguous_and_list_the_matches_when_not(tmp_path):
    from event_model import compose_run

    from gainloop.catalog import AmbiguousUidError, RunNotFoundError

    with Catalog(data_dir_path=tmp_path) as cat:
        writer = cat.writer()
        uids = ["abcd1111-0000-4000-8000-000000000001", "abcd2222-0000-4000-8000-000000000002"]
        for uid in uids:
            bundle = compose_run(uid=uid, metadata={"plan_name": "test"})
            writer("start", bundle.start_doc)
            writer("stop", bundle.compose_stop())
        assert cat.resolve_uid("abcd1") == uids[0]
        assert cat.resolve_uid(uids[1].upper()) == uids[1]
        with pytest.raises(AmbiguousUidError, match=r"'abcd' is the start of 2 run uids: abcd1111-.*, abcd2222-"):
            cat.resolve_uid("abcd")
        with pytest.raises(RunNotFoundError, match=r"no run whose uid starts with 'abce'"):
            cat.resolve_uid("abce")
        with pytest.raises(RunNotFoundError, match=r"at least 4 hexadecimal digits"):
            cat.resolve_uid("abc")


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


def test_the_bench_a_command_opens(tmp_path):
    """``gainloop.benches.bench_devices``: the shipped twin bench without a bench file, the twin of a
    given bench file with ``twin=True`` (its own [twin] seed unless one is given), and twin presets
    refused for a real bench before anything connects."""
    from gainloop.benches import BenchChoiceError, bench_devices
    from twin.presets import default_presets_path, load_presets

    shipped = bench_devices(seed=5)
    try:
        assert shipped.engine is not None and shipped.engine.seed == 5
        assert shipped.config.twin.seed == 0 and shipped.control_layer is None
    finally:
        shipped.destroy()
    mine = tmp_path / "my_twin_bench.toml"
    mine.write_text(default_twin_bench_path().read_text().replace("\nseed = 0\n", "\nseed = 11\n", 1))
    twin = bench_devices(mine, twin=True, presets=load_presets(default_presets_path()))
    try:
        assert twin.engine is not None and twin.config.twin.seed == 11 and twin.engine.seed == 11
    finally:
        twin.destroy()
    with pytest.raises(BenchChoiceError, match="presets are the twin's"):
        bench_devices(mine, presets=default_presets_path())
