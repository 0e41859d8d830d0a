"""``gainloop sweep``: many offline campaigns on a Dask cluster, every one of them in the catalog.

The sweeps run as a user runs them (a real ``gainloop`` subprocess). The Dask servers
the tests start themselves (a LocalCluster inside the command, or a ``dask scheduler``
and a ``dask worker``) bind 127.0.0.1 on free ports and are stopped by the test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from gainloop.campaign import campaign_status
from gainloop.catalog import Catalog
from gainloop.sweep import SweepError, parse_seeds, parse_strategies
from twin.presets import default_presets_path

pytestmark = pytest.mark.slow(seconds=55)  # one of the longest modules: it runs early (tests/conftest.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "sweep", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _json(proc) -> dict:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}\n{proc.stdout}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stored_runs(cat, campaign_uid):
    from tiled.queries import Key

    return list(cat.client.search(Key("start.campaign_uid") == campaign_uid).values())


def _check_row_against_the_catalog(cat, row):
    status = campaign_status(cat, row["campaign_uid"])
    assert status["strategy"] == row["strategy"]
    assert status["trials"] == row["trials"]
    assert status["failures"] == row["failures"]
    assert status["lab_hours"] == pytest.approx(row["lab_hours"], rel=1e-9)
    if row["threshold_uJ_cm2"] is None:
        assert status["best"] is None
    else:
        assert status["best"]["threshold_uJ_cm2"] == pytest.approx(row["threshold_uJ_cm2"], rel=1e-9)
        assert status["best"]["stripe_length_um"] == pytest.approx(row["stripe_length_um"], rel=1e-9)
        assert status["best"]["doping"] == pytest.approx(row["doping"], rel=1e-9)
    runs = _stored_runs(cat, row["campaign_uid"])
    record = [r for r in runs if r.start["plan_name"] == "campaign"]
    assert len(record) == 1 and record[0].start["seed"] == row["seed"]
    assert all(r.stop["exit_status"] == "success" for r in runs)
    absorption = [r for r in runs if r.start["plan_name"] == "absorption_spectrum"]
    assert len(absorption) == status["films_measured"] == status["films_made"]  # each new film measured once
    assert len(runs) == 1 + row["trials"] + len(absorption)  # the record, one run per trial, one per new film
    return runs


def test_seeds_and_strategies_are_parsed_or_refused():
    assert parse_seeds(["0,1", "3-5", "1"]) == [0, 1, 3, 4, 5]
    assert parse_strategies("random, nested,random") == ["random", "nested"]
    with pytest.raises(SweepError, match="allowed"):
        parse_seeds("1,b")
    with pytest.raises(SweepError, match="end is below the start"):
        parse_seeds("5-2")
    with pytest.raises(SweepError, match="allowed: nested, random, grid"):
        parse_strategies("nested,bayes")


def test_a_sweep_on_a_local_cluster_stores_every_campaign(tmp_path):
    t0 = time.perf_counter()
    proc = _sweep(
        "--strategies",
        "random,nested",
        "--seeds",
        "0,1",
        "--max-trials",
        "2",
        "--workers",
        "2",
        "--data-dir",
        str(tmp_path),
        "--json",
    )
    out = _json(proc)
    wall = time.perf_counter() - t0
    assert out["workers"] == 2 and out["scheduler"].startswith("tcp://127.0.0.1:")
    rows = out["campaigns"]
    assert [(r["strategy"], r["seed"]) for r in rows] == [("random", 0), ("random", 1), ("nested", 0), ("nested", 1)]
    assert len({r["campaign_uid"] for r in rows}) == 4
    for r in rows:
        assert r["error"] is None and r["presets"] == "shipped"
        assert r["trials"] == 2 and r["stopped_by"] == "trial budget"
        assert r["threshold_uJ_cm2"] > 0 and r["threshold_err_uJ_cm2"] > 0
    with Catalog(data_dir_path=tmp_path) as cat:
        for r in rows:
            _check_row_against_the_catalog(cat, r)
    print(f"4 campaigns on 2 workers: {wall:.1f} s end to end, {out['store_s']:.1f} s writing the catalog")


def _stop(procs) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in reversed(procs):
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@pytest.fixture
def dask_cluster(tmp_path):
    """``dask scheduler`` and one ``dask worker`` on 127.0.0.1 (free port), stopped at the end."""
    port = str(_free_port())
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker_log = tmp_path / "worker.log"
    procs: list[subprocess.Popen] = []
    with ExitStack() as files:
        try:
            for cmd, log in (
                (
                    ["scheduler", "--host", "127.0.0.1", "--port", port, "--dashboard-address", "127.0.0.1:0"],
                    tmp_path / "scheduler.log",
                ),
                (
                    ["worker", address, "--host", "127.0.0.1", "--nworkers", "1", "--nthreads", "1", "--no-dashboard"],
                    worker_log,
                ),
            ):
                out = files.enter_context(log.open("w"))
                procs.append(subprocess.Popen([*dask, *cmd], stdout=out, stderr=subprocess.STDOUT, env=env))
            deadline = time.monotonic() + 120
            while "Registered to" not in worker_log.read_text():
                assert time.monotonic() < deadline, worker_log.read_text()
                assert all(p.poll() is None for p in procs), worker_log.read_text()
                time.sleep(0.2)
            yield address
        finally:
            _stop(procs)


def test_a_sweep_on_an_existing_scheduler_with_its_own_presets_prints_a_table(tmp_path, dask_cluster):
    presets = tmp_path / "my_presets.toml"
    text = default_presets_path().read_text()
    assert "stripe_width_um = 60.0" in text
    presets.write_text(text.replace("stripe_width_um = 60.0", "stripe_width_um = 55.0"))
    data = tmp_path / "data"
    proc = _sweep(
        "--strategies",
        "nested",
        "--seeds",
        "3",
        "--max-trials",
        "1",
        "--presets",
        str(presets),
        "--scheduler",
        dask_cluster,
        "--data-dir",
        str(data),
    )
    assert proc.returncode == 0, proc.stderr
    for text in ("strategy", "best threshold uJ/cm^2", "campaign_uid", "nested", "my_presets.toml"):
        assert text in proc.stdout, proc.stdout
    assert f"1 campaign on 1 Dask worker ({dask_cluster})" in proc.stdout
    assert "[1/1] nested seed 3" in proc.stderr
    (uid,) = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", proc.stdout)
    with Catalog(data_dir_path=data) as cat:
        status = campaign_status(cat, uid)
        assert status["strategy"] == "nested" and status["trials"] == 1
        assert f"{status['best']['threshold_uJ_cm2']:.1f} ±" in proc.stdout
        trials = [r for r in _stored_runs(cat, uid) if r.start["plan_name"] != "campaign"]
        assert len(trials) == 1 and trials[0].start["twin"]["setup"]["stripe_width_um"] == 55.0


def test_an_unreachable_scheduler_says_what_to_start(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    proc = _sweep("--strategies", "random", "--seeds", "0", "--scheduler", address, "--data-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot reach the Dask scheduler at {address}")
    assert "dask scheduler --host 127.0.0.1" in lines[0] and "omit --scheduler" in lines[0]
    assert not (Path(tmp_path) / "catalog").exists()  # nothing was started


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "random,bayes", "--seeds", "0"], "error: unknown strategy 'bayes'; allowed: nested, random"),
        (["--strategies", "random", "--seeds", "0,x"], "error: bad seed 'x'"),
        (["--strategies", "random", "--seeds", "0", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "--workers"),
    ],
)
def test_bad_input_is_one_line_and_starts_nothing(tmp_path, args, message):
    proc = _sweep(*args, "--data-dir", str(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (Path(tmp_path) / "catalog").exists()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="the profiler is stopped only before Python 3.12 (gh-106883)")
def test_workers_that_write_into_a_catalog_run_without_dasks_statistical_profiler():
    """Python < 3.12 deadlocks when the garbage collector runs inside ``sys._current_frames()`` (the profiler's
    call, every 10 ms) and frees a ``threading.local`` (the drain's TiledWriter leaves some): a LocalCluster's
    workers start without it; a task writing into a catalog stops it on a worker of another cluster."""
    import dask
    from distributed import Client, LocalCluster

    from gainloop.sweep import WORKER_PROFILE_KEY, _stop_worker_profiler, dask_client

    def profiling(dask_worker) -> list[bool]:
        return [pc.is_running() for name, pc in dask_worker.periodic_callbacks.items() if name.startswith("profile")]

    with dask_client(workers=1) as client:
        assert list(client.run(profiling).values()) == [[]]
    assert dask.config.get(WORKER_PROFILE_KEY)  # (set for the LocalCluster only)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            assert list(client.run(profiling).values()) == [[True, True]]  # another cluster's worker: on
            client.submit(_stop_worker_profiler, pure=False).result(timeout=30)
            deadline = time.monotonic() + 10
            while list(client.run(profiling).values()) != [[False, False]]:
                assert time.monotonic() < deadline, client.run(profiling)
                time.sleep(0.05)


def _outcomes(out: dict) -> dict:
    """What a campaign found (its summary: the best trial, lab hours, trials, failures, films measured, why it
    stopped), without the uids its runs were given."""
    assert out["error"] is None, out["error"]
    return {k: v for k, v in out["summary"].items() if k not in ("campaign_uid", "trial_uids")}


def test_a_campaign_written_into_a_catalog_does_not_depend_on_what_the_catalog_holds(tmp_path):
    """A sweep's campaign (strategy, seed) is a replica of its own: run into a Tiled server that already
    holds the same campaign's runs (the same twin, the same film ids, photo-damaged by those runs), it finds
    what it finds with no catalog at all. (It once continued the films' stored doses, so the same sweep gave
    other results on 1 and 2 workers.)"""
    from gainloop.sweep import run_task, sweep_tasks
    from harness.faults import FaultEnv, ServiceMissing

    (task,) = sweep_tasks(["nested"], [1], overrides={"max_trials": 6})
    alone = run_task(task, None)
    with FaultEnv(tmp_path / "env") as env:
        try:
            server = env.tiled_server()
        except ServiceMissing as exc:
            pytest.skip(str(exc))
        target = {"uri": server.url, "api_key": server.api_key, "data_dir": str(tmp_path / "data")}
        first = run_task(task, target)
        again = run_task(task, target)  # the catalog now holds the first one's runs on the same films
        assert first["stored"] == again["stored"] == sum(1 for name, _ in alone["documents"] if name == "start")
        with Catalog(server.url, data_dir_path=tmp_path / "reader", api_key=server.api_key) as cat:
            for out in (first, again):
                runs = _stored_runs(cat, out["summary"]["campaign_uid"])
                assert len(runs) == out["stored"] and all(r.stop["exit_status"] == "success" for r in runs)
    assert _outcomes(first) == _outcomes(alone)
    assert _outcomes(again) == _outcomes(alone)
