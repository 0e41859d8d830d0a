"""Security, one proof per requirement of the issue, on real servers started the way users start them.

* The Tiled server needs its API key (``$GAINLOOP_TILED_API_KEY`` here; clients read theirs from
  ``$TILED_API_KEY`` or the variable the config names, ``catalog.api_key_env``, since a config file
  may not hold a key): anonymous or wrong-key reads and writes get 401; the key never appears in
  the server's output after start-up.
* Every server gainloop starts binds 127.0.0.1 unless told otherwise: the Tiled server
  (``gainloop catalog serve``), the twin's IOC (``gainloop twin serve``, TCP and UDP), the
  queueserver's 0MQ control and info sockets (``gainloop qserver start``), the Dask scheduler,
  workers and dashboard of ``gainloop sweep``: read from the kernel's socket table (psutil).
* No fluence above the bench's limit reaches a device from the command line
  (``gainloop measure`` on the IOC: exit 2, one line, no run stored, the IOC's setpoint
  untouched), from the config (``gainloop campaign run --config``: refused before anything
  runs) or from a plan submitted to the queueserver (failed, no run, the twin untouched).
  Resumed campaigns and replayed proposals: ``tests/faults/test_campaign_faults.py``.
* Secrets: after a measurement, a queueserver campaign, a sweep campaign and a report through
  the server (API key, and a PostgreSQL URI with a password), neither the key nor the password
  is in any run document (start, descriptors, events, stop), the report's files, the data
  folders (backups included) or any captured output; a planted canary shows the same grep finds
  what is there.

Servers: one of each per module, on free ports of 127.0.0.1, stopped at the end. Skipped, naming
it, without PostgreSQL (127.0.0.1:5432) or Redis (127.0.0.1:6379).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from harness.faults import ServiceMissing
from harness.faults._env import PG_HOST, PG_PORT, TiledServer, clean_env, free_port, wait_healthy
from harness.faults.queueserver import Manager
from harness.ioc import EXAMPLE_BENCH, bound_addresses, caget, twin_ioc

pytestmark = pytest.mark.slow(seconds=55)  # one of the longest modules: it runs early (tests/conftest.py)

SAMPLE = "cas_doped-film"
ITEM_S = 180.0
CANARY = "canary" + secrets.token_hex(8)


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gainloop.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _trust_accepts(password: str) -> bool:
    import asyncpg

    async def connect():
        conn = await asyncpg.connect(f"postgresql://postgres:{password}@{PG_HOST}:{PG_PORT}/postgres", timeout=5)
        await conn.close()

    try:
        asyncio.run(connect())
        return True
    except Exception:
        return False


# ------------------------------------------------------------------------------------ servers
@pytest.fixture(scope="module")
def server(fault_env):
    """``gainloop catalog serve``: key in ``$GAINLOOP_TILED_API_KEY``, PostgreSQL URI with a password
    in ``$GAINLOOP_POSTGRES_URI`` (the machine's PostgreSQL trusts local users, so any password works)."""
    try:
        uri = fault_env.postgres_database()
    except ServiceMissing as exc:
        pytest.skip(str(exc))
    password = "pgSecret" + secrets.token_hex(8)
    if not _trust_accepts(password):
        pytest.skip("PostgreSQL on 127.0.0.1:5432 does not accept a password for postgres (trust auth needed)")
    uri = uri.replace("postgres@", f"postgres:{password}@", 1)
    port, key = free_port(), secrets.token_hex(32)
    root = fault_env.workdir / f"secure-tiled-{port}"
    (root / "logs").mkdir(parents=True)
    out, err = (root / "logs" / "stdout0.txt").open("w"), (root / "logs" / "stderr0.txt").open("w")
    with out, err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", "catalog", "serve", "--port", str(port),
             "--data-dir", str(root / "data")],
            stdout=out, stderr=err, env=clean_env(GAINLOOP_TILED_API_KEY=key, GAINLOOP_POSTGRES_URI=uri),
        )  # fmt: skip
    srv = TiledServer(proc, f"http://127.0.0.1:{port}", key, uri, port, root / "data", root / "logs")
    try:
        wait_healthy(proc, srv.url, 60.0, srv.log_dir)
        srv.password = password
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def ioc():
    """The twin's IOC (``gainloop twin serve``, time scale 1000); CA environment set in the module."""
    with twin_ioc(EXAMPLE_BENCH) as proc:
        yield proc


@pytest.fixture(scope="module")
def manager(fault_env, server, tmp_path_factory):
    """``gainloop qserver start --twin`` on the machine's Redis (a prefix of its own), writing into ``server``."""
    try:
        fault_env.require_redis()
    except ServiceMissing as exc:
        pytest.skip(f"{exc} (the queueserver keeps its queue in Redis)")
    m = Manager(
        tmp_path_factory.mktemp("qserver"), catalog_url=server.url, api_key=server.api_key, redis_addr="127.0.0.1:6379"
    )
    try:
        m.start()
        m.open_environment()
        yield m
    finally:
        m.stop()
        m.delete_redis_keys()


def _bench_status(manager) -> dict:
    from bluesky_queueserver_api import BFunc

    task = manager.api.function_execute(BFunc("bench_status"), run_in_background=True)
    manager.api.wait_for_completed_task(task["task_uid"], timeout=30)
    result = manager.api.task_result(task["task_uid"])["result"]
    assert result["success"], result
    return result["return_value"]


def _run_item(manager, plan) -> dict:
    n = manager.api.status()["items_in_history"]
    manager.api.item_execute(plan)
    manager.wait_idle_with_history(n + 1, ITEM_S)
    return manager.api.history_get()["items"][-1]


def _catalog(server, folder: Path):
    from gainloop.catalog import Catalog

    return Catalog(server.url, data_dir_path=folder, api_key=server.api_key)


def _listening(pids: set[int]) -> set[tuple[str, int]]:
    import psutil

    found = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid in pids and conn.status == psutil.CONN_LISTEN and conn.laddr:
            found.add((conn.laddr.ip, conn.laddr.port))
    return found


def _watch_listening(proc: subprocess.Popen, found: set[tuple[str, int]]) -> None:
    """Add every (address, port) a process or its children listen on to ``found``, until it exits."""
    import psutil

    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            found |= _listening({proc.pid} | {c.pid for c in parent.children(recursive=True)})
        except psutil.Error:
            pass
        time.sleep(0.1)


@pytest.fixture(scope="module")
def work(server, ioc, manager, tmp_path_factory):
    """What the secrets grep looks through: a measurement (CLI, on the IOC), a campaign (queueserver,
    with the canary in its item's metadata), its report, and a sweep campaign (Dask; the key from the
    variable the config names). Returns paths, outputs and what was seen listening."""
    from bluesky_queueserver_api import BPlan

    root = tmp_path_factory.mktemp("work")
    client_env = clean_env(TILED_API_KEY=server.api_key)
    outputs: dict[str, str] = {}

    # started together (independent processes), the report once the campaign is stored:
    # a sweep whose catalog and key variable come from the config, its Dask servers watched as it runs
    config = root / "gainloop.toml"
    config.write_text(f"[catalog]\nuri = '{server.url}'\napi_key_env = 'GAINLOOP_SECURITY_KEY'\n")
    sweep_out, sweep_err = root / "sweep-stdout.txt", root / "sweep-stderr.txt"
    with sweep_out.open("w") as out, sweep_err.open("w") as err:
        sweep_proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", "sweep", "--config", str(config), "--strategies", "random",
             "--seeds", "0", "--max-trials", "1", "--workers", "1", "--data-dir", str(root / "sweep"), "--json"],
            stdout=out, stderr=err, env=clean_env(GAINLOOP_SECURITY_KEY=server.api_key),
        )  # fmt: skip
    dask_listening: set[tuple[str, int]] = set()
    watcher = threading.Thread(target=_watch_listening, args=(sweep_proc, dask_listening), daemon=True)
    watcher.start()
    # a measurement on the IOC
    measure_out, measure_err = root / "measure-stdout.txt", root / "measure-stderr.txt"
    with measure_out.open("w") as out, measure_err.open("w") as err:
        measure_proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", "measure", "ase_fluence_scan", "--sample", SAMPLE,
             "--bench", str(EXAMPLE_BENCH), "--catalog", server.url, "--data-dir", str(root / "measure"), "--json"],
            stdout=out, stderr=err, env=client_env,
        )  # fmt: skip
    try:
        # a campaign through the queueserver, the canary in its item's metadata, and its report
        campaign = BPlan("campaign_plan", max_trials=2, seed=3)
        campaign.meta = {"note": CANARY}  # into every run's start document
        item = _run_item(manager, campaign)
        assert item["result"]["exit_status"] == "completed", item["result"]["msg"] + item["result"]["traceback"]
        with _catalog(server, root / "reader") as cat:
            starts = [dict(cat.run(uid).metadata["start"]) for uid in item["result"]["run_uids"]]
        campaign_uid = next(s["campaign_uid"] for s in starts if s["plan_name"] == "campaign")
        report = _cli(
            "report", campaign_uid, "--out", str(root / "report"), "--catalog", server.url,
            "--data-dir", str(root / "report-data"), env=client_env,
        )  # fmt: skip
        assert report.returncode == 0, report.stderr
        outputs["report"] = report.stdout + report.stderr
        measure_proc.wait(timeout=300)
        sweep_proc.wait(timeout=600)
    finally:
        for proc in (measure_proc, sweep_proc):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        watcher.join(timeout=10)
    outputs["measure"] = measure_out.read_text() + measure_err.read_text()
    assert measure_proc.returncode == 0, outputs["measure"]
    outputs["sweep"] = sweep_out.read_text() + sweep_err.read_text()
    assert sweep_proc.returncode == 0, outputs["sweep"]
    sweep = json.loads(sweep_out.read_text().strip().splitlines()[-1])
    assert sweep["campaigns"][0]["error"] is None and sweep["campaigns"][0]["trials"] == 1

    return {
        "root": root,
        "outputs": outputs,
        "measure_uid": json.loads(measure_out.read_text().strip().splitlines()[-1])["uid"],
        "campaign_item": item,
        "campaign_uid": campaign_uid,
        "sweep_campaign_uid": sweep["campaigns"][0]["campaign_uid"],
        "dask_listening": dask_listening,
        "dask_scheduler": sweep["scheduler"],
    }


def test_a_campaign_submitted_to_the_queue_is_stored_in_the_catalog(server, work, tmp_path):
    """The campaign the secrets grep reads is a real one: its record run and a run per trial, tagged."""
    from gainloop.campaign import campaign_status
    from gainloop.queueserver import ITEM_UID_KEY

    item = work["campaign_item"]
    assert item["name"] == "campaign_plan"
    uids = item["result"]["run_uids"]
    assert len(uids) == 3  # the record run and one run per trial
    with _catalog(server, tmp_path / "reader") as cat:
        runs = [cat.run(uid) for uid in uids]
        (record,) = [r for r in runs if r.metadata["start"]["plan_name"] == "campaign"]
        start = record.metadata["start"]
        assert (start["strategy"], start["seed"], start["max_trials"]) == ("nested", 3, 2)
        assert start["config"]["twin_seed"] is None and start["config"]["bench_file"] is None
        assert record.metadata["stop"]["exit_status"] == "success"
        assert {"proposals", "outcomes", "model"} <= set(record)
        trials = sorted((r for r in runs if r is not record), key=lambda r: r.metadata["start"]["trial_index"])
        assert [r.metadata["start"]["trial_index"] for r in trials] == [0, 1]
        for run in runs:  # every run carries the queue item's uid (what `gainloop qserver reconcile` reads)
            assert run.metadata["start"][ITEM_UID_KEY] == item["item_uid"]
        for trial in trials:
            assert trial.metadata["start"]["campaign_uid"] == work["campaign_uid"]
            assert trial.metadata["start"]["plan_name"] == "ase_fluence_scan"
            assert trial.metadata["stop"]["exit_status"] == "success"
            assert "analysis" in trial
        status = campaign_status(cat, work["campaign_uid"])  # the service reads it back from the catalog alone
    assert (status["trials"], status["strategy"]) == (2, "nested")


# ------------------------------------------------------------------------------------ API key
def test_anonymous_or_wrong_key_reads_and_writes_are_refused(server):
    body = {"data": {"type": "container", "attributes": {"structure_family": "container", "metadata": {}}}}
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as client:
        for path in ("/api/v1/metadata/", "/api/v1/search/"):
            assert client.get(path).status_code == 401, path
        assert client.post("/api/v1/metadata/", json=body).status_code == 401
        assert client.delete("/api/v1/metadata/anything").status_code == 401
        wrong = {"Authorization": "Apikey wrong0key"}
        assert client.get("/api/v1/metadata/", headers=wrong).status_code == 401
        assert client.post("/api/v1/metadata/", json=body, headers=wrong).status_code == 401
        right = {"Authorization": f"Apikey {server.api_key}"}
        assert client.get("/api/v1/metadata/", headers=right).status_code == 200


def test_the_key_from_the_environment_is_never_printed(server):
    with httpx.Client(trust_env=False, timeout=10) as client:  # a key in a query string, as a link carries it
        assert client.get(f"{server.url}/api/v1/metadata/?api_key={server.api_key}").status_code == 200
    with httpx.Client(trust_env=False, timeout=10) as client:  # (a new client: tiled answered with a cookie)
        assert client.get(f"{server.url}/api/v1/metadata/").status_code == 401
    time.sleep(0.3)  # the access log lines reach the files
    output = server.output()
    (startup,) = [line for line in output.splitlines() if line.startswith("gainloop catalog: Tiled server at")]
    assert "API key from $GAINLOOP_TILED_API_KEY" in startup
    assert "postgresql://postgres:***@" in startup  # the password masked
    assert "api_key=[redacted]" in output  # the request was logged, its key was not
    assert server.api_key not in output and server.password not in output


# ------------------------------------------------------------------------------------ loopback
def test_every_server_gainloop_starts_binds_loopback_only(server, ioc, manager, work):
    assert bound_addresses(server.port, "tcp") == {"127.0.0.1"}  # Tiled
    assert bound_addresses(ioc.server_port, "tcp") == {"127.0.0.1"}  # the IOC: CA over TCP...
    assert bound_addresses(ioc.server_port, "udp") == {"127.0.0.1"}  # ...and its search replies over UDP
    for port in (manager.control_port, manager.info_port):  # the queueserver's 0MQ sockets
        assert bound_addresses(port, "tcp") == {"127.0.0.1"}, port
    # gainloop sweep: the LocalCluster's scheduler, worker, nanny and dashboard, seen while it ran
    listening = work["dask_listening"]
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening
    scheduler_port = int(work["dask_scheduler"].rsplit(":", 1)[1])
    assert ("127.0.0.1", scheduler_port) in listening and len(listening) >= 3, listening


def test_an_interface_is_bound_only_when_named(tmp_path):
    from gainloop.catalog_server import ServerSettings
    from gainloop.queueserver import ManagerSettings, manager_argv

    assert ServerSettings.resolve(data_dir=tmp_path, environ={"GAINLOOP_TILED_API_KEY": "k1"}).host == "127.0.0.1"
    named = ServerSettings.resolve(data_dir=tmp_path, host="192.0.2.7", environ={"GAINLOOP_TILED_API_KEY": "k1"})
    assert named.host == "192.0.2.7"
    argv = manager_argv(ManagerSettings(state_dir=tmp_path, control_port=61000, info_port=61001))
    assert argv[argv.index("--zmq-control-addr") + 1] == "tcp://127.0.0.1:61000"
    assert argv[argv.index("--zmq-info-addr") + 1] == "tcp://127.0.0.1:61001"
    assert argv[argv.index("--use-ipython-kernel") + 1] == "OFF"  # no kernel ports
    named = manager_argv(ManagerSettings(state_dir=tmp_path, host="192.0.2.7"))
    assert named[named.index("--zmq-control-addr") + 1] == "tcp://192.0.2.7:60615"


# ------------------------------------------------------------------------------------ fluence limit
def test_the_command_line_cannot_send_an_over_limit_fluence(server, ioc, tmp_path):
    from tiled.queries import Key

    limit = 3000.0  # examples/twin_bench.toml
    before = (caget(ioc.pv("PUMP:Fluence-SP")), caget(ioc.pv("IL:Message")), caget(ioc.pv("STAGE:Sample-SP")))
    with _catalog(server, tmp_path / "reader") as cat:
        n_runs = len(cat.client)
    proc = _cli(
        "measure", "ase_point", "--sample", SAMPLE, "--bench", str(EXAMPLE_BENCH), "--catalog", server.url,
        "--data-dir", str(tmp_path / "data"), "-a", f"fluence_uJ_cm2={1.5 * limit}", "-a", "stripe_length_um=1000",
        env=clean_env(TILED_API_KEY=server.api_key),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "refused by the plan" in lines[0], proc.stderr
    assert f"allowed: 0 to {limit:g} uJ/cm^2" in lines[0]
    after = (caget(ioc.pv("PUMP:Fluence-SP")), caget(ioc.pv("IL:Message")), caget(ioc.pv("STAGE:Sample-SP")))
    assert after == before  # no put reached the IOC: not the fluence, not even the sample
    assert not str(after[1]).startswith("refused")
    with _catalog(server, tmp_path / "reader") as cat:
        assert len(cat.client) == n_runs  # nothing stored
        assert len(cat.client.search(Key("start.plan_name") == "ase_point")) == 0


def test_the_config_cannot_raise_the_fluence_above_the_limit(server, tmp_path):
    from gainloop.config import load_config

    path = tmp_path / "gainloop.toml"
    path.write_text(
        "[limits]\nfluence_max_uJ_cm2 = 5000\n"
        f"[catalog]\nuri = '{server.url}'\napi_key_env = 'GAINLOOP_SECURITY_KEY'\ndata_dir = '{tmp_path / 'data'}'\n"
    )
    assert load_config(path).limits.fluence_max_uJ_cm2 == 5000  # a valid file on its own...
    with _catalog(server, tmp_path / "reader") as cat:
        n_runs = len(cat.client)
    proc = _cli(
        "campaign", "run", "--config", str(path), "--max-trials", "1",
        env=clean_env(GAINLOOP_SECURITY_KEY=server.api_key),
    )  # fmt: skip
    assert proc.returncode == 2  # ...refused against the bench's limit before anything runs
    assert "exceeds the bench's fluence limit 3000" in proc.stderr.replace("\n", " ")
    assert "Traceback" not in proc.stderr
    with _catalog(server, tmp_path / "reader") as cat:
        assert len(cat.client) == n_runs  # nothing stored


def test_a_plan_submitted_to_the_queueserver_cannot_send_an_over_limit_fluence(manager):
    from bluesky_queueserver_api import BPlan

    before = _bench_status(manager)
    limit = before["fluence_limit_uJ_cm2"]
    for plan in (
        BPlan("ase_fluence_scan", sample_id=SAMPLE, fluence_max_uJ_cm2=10 * limit),
        BPlan("ase_point", sample_id=SAMPLE, fluence_uJ_cm2=1.5 * limit, stripe_length_um=1000.0),
    ):
        result = _run_item(manager, plan)["result"]
        assert result["exit_status"] == "failed"
        assert "refused by the plan" in result["msg"] and f"allowed: 0 to {limit:g} uJ/cm^2" in result["msg"]
        assert result["run_uids"] == []  # refused before a run opened: nothing stored, nothing moved
        after = _bench_status(manager)
        assert after["fluence_setpoint_uJ_cm2"] == before["fluence_setpoint_uJ_cm2"]
        assert not after["message"].startswith("refused")  # the twin never saw the setpoint
        assert after["lab_time_s"] == before["lab_time_s"]


def test_the_queueserver_runs_gainloops_plans_only(manager):
    from bluesky_queueserver_api import BFunc, BPlan

    with pytest.raises(Exception, match="sample_id"):
        manager.api.item_add(BPlan("ase_fluence_scan", sample_id=3))
    with pytest.raises(Exception, match=r"not in the list of allowed plans|is not allowed"):
        manager.api.item_add(BPlan("count", ["pump"]))
    with pytest.raises(Exception, match="not allowed"):
        manager.api.function_execute(BFunc("build_namespace"))


# ------------------------------------------------------------------------------------ secrets
def _documents(server, folder: Path) -> dict[str, str]:
    """Every document of every run in the server, as JSON text per run uid."""
    from gainloop.catalog import Catalog

    texts = {}
    with Catalog(server.url, data_dir_path=folder, api_key=server.api_key) as cat:
        for uid, run in cat.client.items():
            docs = [json.dumps(dict(run.metadata), default=str)]
            for name in run:
                stream = run[name]
                docs.append(json.dumps(dict(stream.metadata), default=str))
                try:
                    docs.append(stream.read().to_dataframe().to_json(default_handler=str))
                except Exception:  # a stream without a table (e.g. an array-only one): its metadata is enough
                    pass
            texts[uid] = "\n".join(docs)
    return texts


def _redis_contents(manager) -> str:
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=5, decode_responses=True)
    try:
        parts = []
        for key in client.scan_iter(match=f"{manager.redis_prefix}*"):
            kind = client.type(key)
            if kind == "string":
                parts.append(client.get(key))
            elif kind == "list":
                parts.extend(client.lrange(key, 0, -1))
            elif kind == "hash":
                parts.append(json.dumps(client.hgetall(key)))
        return "\n".join(p for p in parts if p)
    finally:
        client.close()


def _files(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for folder in folders if folder.exists() for p in folder.rglob("*") if p.is_file()}


def _found(needle: str, texts: dict[str, str], blobs: dict[str, bytes]) -> list[str]:
    hits = [k for k, v in texts.items() if needle in v]
    return hits + [k for k, v in blobs.items() if needle.encode() in v]


def test_secrets_are_in_no_document_report_data_folder_or_log(server, ioc, manager, work, tmp_path):
    docs = _documents(server, tmp_path / "reader")
    assert work["measure_uid"] in docs and work["campaign_uid"] and len(docs) >= 6  # measure, 3 + 2 campaign runs
    report_files = _files(work["root"] / "report")
    assert any(k.endswith("index.html") for k in report_files) and any(k.endswith(".png") for k in report_files)
    data = _files(work["root"], manager.workdir, server.data_dir, server.log_dir)
    logs = {
        **work["outputs"],
        "manager": manager.log(),
        "server": server.output(),
        "ioc": ioc.stdout() + ioc.stderr(),
        "redis": _redis_contents(manager),  # the queue, history, plan lists the manager keeps
    }
    for name, secret in (("API key", server.api_key), ("PostgreSQL password", server.password)):
        assert not _found(secret, docs, {}), f"the {name} is in run documents"
        assert not _found(secret, logs, {}), f"the {name} is in a log"
        assert not _found(secret, {}, {**report_files, **data}), f"the {name} is in a file"
    # the same grep finds what is there: the campaign's uid in its report, and the canary the campaign
    # item carried in its metadata
    assert any(k.endswith("index.html") for k in _found(work["campaign_uid"], {}, report_files))
    campaign_runs = set(work["campaign_item"]["result"]["run_uids"])
    assert set(_found(CANARY, docs, {})) == campaign_runs
    assert _found(CANARY, logs, {}) == ["manager", "redis"]  # the manager prints and keeps the items it ran
