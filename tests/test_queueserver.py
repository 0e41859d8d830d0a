"""gainloop behind bluesky-queueserver: the real RE Manager on the machine's Redis, the catalog server
on PostgreSQL, plans submitted with bluesky-queueserver-api.

One manager per module (`gainloop qserver start`: 0MQ on 127.0.0.1, free ports, a Redis name
prefix of its own, deleted at the end) on the twin, writing into a `gainloop catalog serve` on a
fresh PostgreSQL database. Skipped only when no Redis listens on 127.0.0.1:6379 (or, for the
catalog, no PostgreSQL on 127.0.0.1:5432).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gainloop.queueserver import (
    ManagerSettings,
    QueueServerError,
    manager_argv,
    permissions,
    plan_names,
    write_existing_plans_devices,
)

from .ioc_helpers import bound_addresses
from .test_catalog_server import _clean_env, _free_port, _start, _stop, database  # noqa: F401 (fixture)

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
MANAGER_START_S = 60.0
ENVIRONMENT_OPEN_S = 240.0
CAMPAIGN_S = 300.0


def _redis_listening() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1.0):
            return True
    except OSError:
        return False


def _wait(predicate, timeout_s: float, what: str, proc=None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the manager exited ({proc.returncode}): {log.read_text()[-3000:] if log else ''}")
        try:
            result = predicate()
            if result:
                return result
        except Exception:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s:g} s: {log.read_text()[-3000:] if log else ''}")
        time.sleep(0.2)


# ------------------------------------------------------------------ without Redis
def test_the_manager_binds_loopback_unless_told(tmp_path):
    argv = manager_argv(ManagerSettings(state_dir=tmp_path, control_port=61000, info_port=61001))
    assert argv[argv.index("--zmq-control-addr") + 1] == "tcp://127.0.0.1:61000"
    assert argv[argv.index("--zmq-info-addr") + 1] == "tcp://127.0.0.1:61001"
    assert argv[argv.index("--use-ipython-kernel") + 1] == "OFF"
    named = manager_argv(ManagerSettings(state_dir=tmp_path, host="192.0.2.7"))
    assert named[named.index("--zmq-control-addr") + 1] == "tcp://192.0.2.7:60615"
    for bad in ({"host": "*"}, {"host": "localhost"}, {"control_port": 0}, {"info_port": 60615}):
        with pytest.raises(QueueServerError):
            ManagerSettings(state_dir=tmp_path, **bad)
    with pytest.raises(QueueServerError, match="Redis name prefix"):
        ManagerSettings(state_dir=tmp_path, redis_prefix="has space")


def test_users_may_run_gainloops_plans_and_bench_status_only():
    primary = permissions()["user_groups"]["primary"]
    assert primary["allowed_plans"] == [f":^{name}$" for name in plan_names()]
    assert primary["allowed_functions"] == [":^bench_status$"]
    assert {"ase_fluence_scan", "ase_point", "vsl_scan", "campaign_plan"} <= set(plan_names())


def test_the_lists_describe_every_plan_with_simple_arguments(tmp_path):
    import yaml

    path = write_existing_plans_devices(tmp_path / "existing_plans_and_devices.yaml", _profile_settings())
    lists = yaml.safe_load(path.read_text())
    assert set(lists["existing_plans"]) == set(plan_names())
    assert {"pump", "slit", "stage", "spectrometer"} <= set(lists["existing_devices"])
    scan = {p["name"]: p for p in lists["existing_plans"]["ase_fluence_scan"]["parameters"]}
    assert "bench" not in scan and "md" not in scan
    assert scan["sample_id"]["annotation"]["type"] == "str"
    assert (scan["stripe_length_um"]["annotation"]["type"], scan["stripe_length_um"]["default"]) == ("float", "1000.0")
    campaign = {p["name"]: p for p in lists["existing_plans"]["campaign_plan"]["parameters"]}
    assert campaign["max_trials"]["annotation"]["type"] == "int"
    assert campaign["strategy"]["default"] == "'nested'"


def test_the_run_engine_checks_every_fluence_of_any_plan():
    """Even a plan that is not gainloop's (e.g. from an uploaded script) is stopped before the device."""
    from bluesky import plan_stubs as bps

    from gainloop.queueserver import build_namespace
    from plans.safety import FluenceLimitError

    ns = build_namespace(_profile_settings(), connect=False)
    pump, RE = ns["pump"], ns["RE"]
    limit = pump.fluence_limit
    before = pump.fluence.setpoint
    with pytest.raises(FluenceLimitError, match="refused by the plan"):
        RE(bps.mv(pump.fluence, 2 * limit))
    assert pump.fluence.setpoint == before
    RE(bps.mv(pump.fluence, 0.5 * limit))  # within the limit it goes through
    assert pump.fluence.setpoint == pytest.approx(0.5 * limit)


def test_no_redis_is_a_one_line_error(tmp_path):
    port = _free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "qserver", "start", "--data-dir", str(tmp_path),
         "--redis", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120, env=_clean_env(),
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach Redis at 127.0.0.1:{port}"), proc.stderr
    assert "Traceback" not in proc.stderr


def _profile_settings():
    from gainloop.queueserver import ProfileSettings

    return ProfileSettings()


# ------------------------------------------------------------------ the real manager
class Manager:
    def __init__(self, api, settings: ManagerSettings, catalog_url: str, api_key: str, data_dir: Path, log: Path):
        self.api, self.settings = api, settings
        self.catalog_url, self.api_key, self.data_dir, self.log = catalog_url, api_key, data_dir, log

    def catalog(self):
        from gainloop.catalog import Catalog

        return Catalog(self.catalog_url, data_dir_path=self.data_dir / "reader", api_key=self.api_key)

    def bench_status(self) -> dict:
        from bluesky_queueserver_api import BFunc

        task = self.api.function_execute(BFunc("bench_status"), run_in_background=True)
        self.api.wait_for_completed_task(task["task_uid"], timeout=30)
        result = self.api.task_result(task["task_uid"])["result"]
        assert result["success"], result
        return result["return_value"]

    def last_history_item(self) -> dict:
        return self.api.history_get()["items"][-1]


@pytest.fixture(scope="module")
def catalog_server(database, tmp_path_factory):  # noqa: F811 (the imported fixture)
    postgres_uri, _ = database
    logs = tmp_path_factory.mktemp("catalog")
    api_key = secrets.token_hex(32)
    proc, url, _, _ = _start(postgres_uri, logs / "data", logs, _clean_env(GAINLOOP_TILED_API_KEY=api_key))
    try:
        yield url, api_key
    finally:
        _stop(proc)


def _close_api(api) -> None:
    """``REManagerAPI.close()`` closes the control socket but leaves its 0MQ context, and the console
    and system-info monitors' subscriber sockets, open: a ResourceWarning when they are collected."""
    api.close()
    for monitor in (getattr(api, "_console_monitor", None), getattr(api, "_system_info_monitor", None)):
        sock = getattr(getattr(monitor, "_rco", None), "_socket", None)
        if sock is not None:
            ctx = sock.context
            sock.close(linger=0)
            ctx.term()
    ctx = getattr(getattr(api, "_client", None), "_ctx", None)
    if ctx is not None:
        ctx.destroy(linger=0)


def _delete_redis_keys(prefix: str) -> int:
    import redis

    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        return client.delete(*keys) if keys else 0
    finally:
        client.close()


@pytest.fixture(scope="module")
def manager(catalog_server, tmp_path_factory):
    if not _redis_listening():
        pytest.skip(f"no Redis listening on {REDIS_HOST}:{REDIS_PORT} (the queueserver keeps its queue in Redis)")
    from bluesky_queueserver_api.zmq import REManagerAPI

    url, api_key = catalog_server
    data_dir = tmp_path_factory.mktemp("qserver")
    control_port = _free_port()
    info_port = _free_port()
    while info_port == control_port:
        info_port = _free_port()
    prefix = f"gainloop_test_{uuid.uuid4().hex[:12]}"
    settings = ManagerSettings(
        state_dir=data_dir / "qserver", control_port=control_port, info_port=info_port, redis_prefix=prefix
    )
    log = data_dir / "manager.log"
    args = [
        "qserver", "start", "--twin", "--catalog", url, "--data-dir", str(data_dir),
        "--control-port", str(control_port), "--info-port", str(info_port),
        "--redis", f"{REDIS_HOST}:{REDIS_PORT}", "--redis-prefix", prefix,
    ]  # fmt: skip
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gainloop.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_clean_env(TILED_API_KEY=api_key),
            start_new_session=True,  # its worker processes share the group: nothing outlives the test
        )
    api = None
    try:
        api = REManagerAPI(zmq_control_addr=settings.control_addr, zmq_info_addr=settings.info_addr, timeout_recv=5)
        _wait(lambda: api.status()["manager_state"] == "idle", MANAGER_START_S, "manager start", proc, log)
        api.environment_open()
        _wait(
            lambda: api.status()["worker_environment_exists"] and api.status()["manager_state"] == "idle",
            ENVIRONMENT_OPEN_S,
            "environment open",
            proc,
            log,
        )
        yield Manager(api, settings, url, api_key, data_dir, log)
    finally:
        if api is not None:
            try:
                api.environment_close()
                api.wait_for_idle(timeout=60)
            except Exception:
                pass
            _close_api(api)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the manager stops its worker and exits
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this manager's session still running
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        _delete_redis_keys(prefix)


def test_the_manager_listens_on_loopback_only(manager):
    for port in (manager.settings.control_port, manager.settings.info_port):
        addresses = bound_addresses(port, "tcp")
        assert addresses == {"127.0.0.1"}, (port, addresses)
    allowed = manager.api.plans_allowed()["plans_allowed"]
    assert set(allowed) == set(plan_names())


def test_a_campaign_submitted_to_the_queue_is_stored_in_the_catalog(manager):
    from bluesky_queueserver_api import BPlan

    from gainloop.campaign import campaign_status

    manager.api.item_add(BPlan("campaign_plan", max_trials=2, seed=3))
    manager.api.queue_start()
    _wait(
        lambda: manager.api.status()["items_in_history"] >= 1 and manager.api.status()["manager_state"] == "idle",
        CAMPAIGN_S,
        "the campaign",
        log=manager.log,
    )
    item = manager.last_history_item()
    assert item["name"] == "campaign_plan"
    assert item["result"]["exit_status"] == "completed", item["result"]["msg"] + item["result"]["traceback"]
    uids = item["result"]["run_uids"]
    assert len(uids) == 3  # the record run and one run per trial
    with manager.catalog() as cat:
        runs = [cat.run(uid) for uid in uids]
        (record,) = [r for r in runs if r.metadata["start"]["plan_name"] == "campaign"]
        start = record.metadata["start"]
        campaign_uid = start["campaign_uid"]
        assert (start["strategy"], start["seed"], start["max_trials"]) == ("nested", 3, 2)
        assert start["config"]["twin_seed"] is None and start["config"]["bench_file"] is None
        assert record.metadata["stop"]["exit_status"] == "success"
        assert {"proposals", "outcomes", "model"} <= set(record)
        trials = sorted((r for r in runs if r is not record), key=lambda r: r.metadata["start"]["trial_index"])
        assert [r.metadata["start"]["trial_index"] for r in trials] == [0, 1]
        for trial in trials:
            assert trial.metadata["start"]["campaign_uid"] == campaign_uid
            assert trial.metadata["start"]["plan_name"] == "ase_fluence_scan"
            assert trial.metadata["stop"]["exit_status"] == "success"
            assert "analysis" in trial
        status = campaign_status(cat, campaign_uid)  # the service reads it back from the catalog alone
    assert (status["trials"], status["strategy"]) == (2, "nested")


def test_an_over_limit_fluence_is_refused_by_the_plan_and_never_reaches_the_device(manager):
    from bluesky_queueserver_api import BPlan

    before = manager.bench_status()
    limit = before["fluence_limit_uJ_cm2"]
    for plan in (
        BPlan("ase_fluence_scan", sample_id="cas_doped-film", fluence_max_uJ_cm2=10 * limit),
        BPlan("ase_point", sample_id="cas_doped-film", fluence_uJ_cm2=1.5 * limit, stripe_length_um=1000.0),
    ):
        n_before = manager.api.status()["items_in_history"]
        manager.api.item_execute(plan)
        _wait(
            lambda n=n_before: (
                manager.api.status()["items_in_history"] > n and manager.api.status()["manager_state"] == "idle"
            ),
            60,
            f"{plan.to_dict()['name']} to end",
            log=manager.log,
        )
        result = manager.last_history_item()["result"]
        assert result["exit_status"] == "failed"
        assert "refused by the plan" in result["msg"] and f"allowed: 0 to {limit:g} uJ/cm^2" in result["msg"]
        assert result["run_uids"] == []  # refused before a run opened: nothing stored, nothing moved
        after = manager.bench_status()
        assert after["fluence_setpoint_uJ_cm2"] == before["fluence_setpoint_uJ_cm2"]
        assert not after["message"].startswith("refused")  # the twin never saw the setpoint
        assert after["lab_time_s"] == before["lab_time_s"]


def test_bad_arguments_are_refused_when_submitted(manager):
    from bluesky_queueserver_api import BFunc, BPlan

    with pytest.raises(Exception, match="sample_id"):
        manager.api.item_add(BPlan("ase_fluence_scan", sample_id=3))
    with pytest.raises(Exception, match=r"not in the list of allowed plans|is not allowed"):
        manager.api.item_add(BPlan("count", ["pump"]))
    with pytest.raises(Exception, match="not allowed"):
        manager.api.function_execute(BFunc("build_namespace"))
