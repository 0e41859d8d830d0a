"""`gainloop catalog serve --processes N --redis URI`: several server processes on one port, one catalog.

Real subprocesses on 127.0.0.1 (a free port, a fresh PostgreSQL database dropped at the end, a Redis
database of the machine's Redis); skipped only where PostgreSQL or Redis does not answer.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from gainloop.catalog_server import CatalogServerError, ServerSettings
from harness.faults import FaultEnv, ServiceMissing
from harness.faults._env import free_port as _free_port
from harness.faults._env import listening, wait_healthy

pytestmark = pytest.mark.slow(seconds=30)

REDIS = ("127.0.0.1", 6379)
API_KEY = "processes" + uuid.uuid4().hex
START_TIMEOUT_S = 60.0


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GAINLOOP_", "TILED_"))}
    return {**env, "GAINLOOP_TILED_API_KEY": API_KEY}


@pytest.fixture
def database(tmp_path):
    """A fresh database on the machine's PostgreSQL (dropped at the end); skipped without PostgreSQL or Redis."""
    if not listening(*REDIS):
        pytest.skip(f"no Redis listening on {REDIS[0]}:{REDIS[1]} (several server processes share one)")
    with FaultEnv(tmp_path / "env") as env:
        try:
            uri = env.postgres_database()
        except ServiceMissing as exc:
            pytest.skip(f"{exc} (the catalog server needs it)")
        yield uri


def _serve(database: str, tmp_path: Path, processes: int = 2):
    """``gainloop catalog serve --processes N``; (process, url, its server processes) once it answers."""
    port = _free_port()
    redis = f"redis://{REDIS[0]}:{REDIS[1]}/{random.randint(8, 15)}"  # a database of its own, mostly
    with (tmp_path / "serve.txt").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", "catalog", "serve", "--postgres", database, "--port", str(port),
             "--data-dir", str(tmp_path / "data"), "--processes", str(processes), "--redis", redis],
            stdout=out, stderr=subprocess.STDOUT, env=_env(),
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_healthy(proc, url, START_TIMEOUT_S, tmp_path)  # (its output: tmp_path/serve.txt)
    deadline = time.monotonic() + START_TIMEOUT_S
    # the server processes (multiprocessing's spawned children; its resource tracker is one more child)
    while len(servers := _server_processes(proc)) < processes and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(servers) == processes, psutil.Process(proc.pid).children()
    return proc, url, servers


def _server_processes(proc) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]


def _kill(proc, servers) -> None:
    for p in [proc, *servers]:
        try:
            p.kill()
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    proc.wait(10)


def _cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"processes": 0}, r"--processes 0 is out of range \(1-64\)"),
        ({"processes": 65}, "out of range"),
        ({"processes": 2}, "needs a streaming cache the processes share: --redis"),
        ({"processes": 2, "redis": "http://127.0.0.1:6379"}, "is not a Redis URI"),
    ],
)
def test_bad_process_settings_are_clear_errors(tmp_path, kwargs, message):
    with pytest.raises(CatalogServerError, match=message):
        ServerSettings.resolve(data_dir=tmp_path, environ={"GAINLOOP_TILED_API_KEY": "abc"}, **kwargs)
    ok = ServerSettings.resolve(
        data_dir=tmp_path, environ={"GAINLOOP_TILED_API_KEY": "abc", "GAINLOOP_REDIS_URI": "redis://:pw9@h:1/2"}
    )
    assert ok.processes == 1 and ok.streaming_cache == "redis://:pw9@h:1/2"
    assert ok.streaming_display == "redis://:***@h:1/2" and "pw9" in ok.secret_values and "pw9" not in repr(ok)


def test_an_unreachable_redis_is_one_line_and_starts_nothing(tmp_path):
    port = _free_port()
    proc = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "catalog", "serve", "--port", str(port), "--processes", "2",
         "--redis", f"redis://127.0.0.1:{_free_port()}/1", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the streaming cache's Redis at redis://127.0.0.1:")
    assert "Traceback" not in proc.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing was left listening


# tiled's subscription calls websockets' connect() the deprecated way (third-party; the watch runs it outside pytest)
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_two_processes_serve_one_catalog_and_tell_one_subscriber_every_write(database, tmp_path):
    from tiled.client import from_uri

    proc, url, servers = _serve(database, tmp_path)
    try:
        client = from_uri(url, api_key=API_KEY)
        created: list[str] = []
        seen = threading.Event()
        n = 40

        def on_created(update) -> None:
            created.append(update.key)
            if len(created) >= n:
                seen.set()

        sub = client.subscribe()
        sub.child_created.add_callback(on_created)
        sub.start_in_thread()
        time.sleep(1.0)  # (the websocket connected)
        before = [_cpu_s(p) for p in servers]
        keys = [f"run{i:02d}" for i in range(n)]

        def create(key: str) -> int:
            with httpx.Client(trust_env=False, headers={"Authorization": f"Apikey {API_KEY}"}) as http:
                body = {"structure_family": "container", "metadata": {"i": key}, "specs": [], "data_sources": []}
                return http.post(f"{url}/api/v1/metadata/", json={**body, "id": key}, timeout=30).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:  # new connections, 8 at once: both processes accept
            codes = list(pool.map(create, keys))
        assert codes == [200] * n
        # tiled's Redis stream numbers a node's updates with one shared counter, and a subscriber that is told
        # of update k+1 before the process that took k has stored it skips k: with 8 creations at once in one
        # container, 1-2 of 40 were missed (all 40 with one process); the watch's safety poll (5 s) catches
        # those up. One process's own writes alone (a cache in memory per process) would be about half.
        seen.wait(15)
        assert set(created) <= set(keys) and len(set(created)) >= n - n // 8, f"told of {len(created)} of {n}"
        assert sorted(from_uri(url, api_key=API_KEY)) == keys  # one catalog, whichever process wrote
        used = [_cpu_s(p) - b for p, b in zip(servers, before, strict=True)]
        assert min(used) > 0.05, f"CPU seconds of each server process meanwhile: {used}"
        sub.disconnect(wait=True)

        proc.send_signal(signal.SIGKILL)  # the supervisor killed: its server processes follow
        proc.wait(10)
        _gone, alive = psutil.wait_procs(servers, timeout=10)
        assert not alive, f"server processes left running after the supervisor's SIGKILL: {alive}"
    finally:
        _kill(proc, servers)


def test_sigterm_stops_every_process(database, tmp_path):
    proc, _url, servers = _serve(database, tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        _gone, alive = psutil.wait_procs(servers, timeout=5)
        assert not alive
    finally:
        _kill(proc, servers)


def test_the_drain_takes_a_new_connection_for_each_request(database, tmp_path):
    """A drain into a server of several processes is served by whichever is free: it sends each request on
    a new connection (one kept-alive connection tied all of a drain's requests to one process, and two
    workers' drains to the same one in half the sweeps)."""
    import re

    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import det

    from gainloop.catalog import Catalog

    proc, url, servers = _serve(database, tmp_path)
    try:
        with Catalog(url, data_dir_path=tmp_path / "client", api_key=API_KEY) as cat:
            RE = RunEngine({})
            RE.subscribe(cat.writer())
            uids = [RE(bp.count([det], num=3))[0] for _ in range(4)]
            cat.settle(uids=uids)
            assert all(cat.stored_state(u).state == "complete" for u in uids)
        time.sleep(0.5)  # (the last access-log lines)
        log = (tmp_path / "serve.txt").read_text()
        writes = re.findall(r"127\.0\.0\.1:(\d+) \S+ - \"(?:POST|PUT|PATCH|DELETE) /api/v1/", log)
        assert len(writes) >= 4 * 6, log[-2000:]  # a run: its node, its stream, table + rows, stop, ...
        assert len(set(writes)) == len(writes), "the drain sent several requests on one connection"
    finally:
        proc.terminate()
        proc.wait(20)
        _kill(proc, servers)
