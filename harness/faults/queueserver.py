"""Fault 9: the queueserver's RE Manager killed mid-plan and Redis restarted.

``scenario_manager_killed_redis_restarted``: a private ``redis-server`` that keeps its data
on disk (append-only file, fsync on every write) on a free port of 127.0.0.1; the RE
Manager (``gainloop qserver start --twin``, writing into a Tiled server on PostgreSQL)
on it; three items (a short fluence scan, a 3-trial campaign, another short scan); the
queue started; once the campaign is mid-plan (its record run open, a trial stored, the next
trial stalled in its scan by ``$GAINLOOP_FAULT_INJECT``) the
manager's whole process group (watchdog, manager, worker) is SIGKILLed, Redis is
SIGKILLed and started again on the same folder, and the manager is started again.

What must hold: the queue (the last scan) and the history (the first scan, completed)
are intact; the campaign is in the history with the queueserver's ``exit_status``
"unknown", and ``gainloop qserver reconcile`` does not count it as a success: its runs,
found in the catalog by the item uid in their start documents, include the record run
without a stop document ("interrupted", with its campaign uid to resume). The queue then
runs on: the last scan runs once; nothing ran twice, nothing was lost.

Figures: ``trials_lost`` = submitted items in neither the queue nor the history after
the restart; ``trials_doubled`` = items whose runs were executed by more than one
execution (an item uid on runs of two plan executions, or twice in the history);
``recovery_s`` = wall seconds from the kill until the restarted manager answered with
the queue and history (Redis restarted in between).

``Manager`` and ``RedisServer`` are reused by the queueserver and security tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from . import FaultFigures
from ._env import FaultEnv, ServiceMissing, clean_env, free_port

__all__ = ["SCENARIOS", "Manager", "RedisServer", "close_api", "scenario_manager_killed_redis_restarted"]

MANAGER_START_S = 90.0
ENVIRONMENT_OPEN_S = 240.0
ITEM_S = 180.0
SAMPLE = "cas_doped-film"
#: a fluence scan (the plan's defaults: 12 coarse + 16 fine points)
SHORT_SCAN = {"sample_id": SAMPLE}


def _wait(predicate, timeout_s: float, what: str, check=None):
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        try:
            result = predicate()
            if result:
                return result
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:g} s")
        time.sleep(0.2)


def close_api(api) -> None:
    """Close a ``REManagerAPI`` completely.

    ``REManagerAPI.close()`` closes the control socket but leaves its 0MQ context, and the
    console and system-info monitors' subscriber sockets, open: a ResourceWarning when
    they are collected.
    """
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


# ---------------------------------------------------------------------------------- Redis
class RedisServer:
    """A private ``redis-server`` on 127.0.0.1 that keeps every write on disk (``dir``).

    Append-only file with ``appendfsync always`` (no RDB snapshots): a SIGKILL loses nothing
    it acknowledged. ``kill()`` + ``start()`` restarts it on the same port and folder.
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceMissing("redis-server is not installed (a private Redis that keeps its data on disk)")
        self.binary, self.folder = binary, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> RedisServer:
        self.starts += 1
        log = (self.folder / f"redis{self.starts}.log").open("w")
        args = [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        with log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: self._ping(), timeout_s, f"redis-server on {self.addr}", self._alive)
        return self

    def _alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited ({self.proc.returncode}): {self.log()[-2000:]}")

    def _ping(self) -> bool:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def info(self, section: str) -> dict:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            return client.info(section)
        finally:
            client.close()

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.folder.glob("redis*.log")))

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to write anything more."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


# ---------------------------------------------------------------------------------- the manager
class Manager:
    """``gainloop qserver start --twin`` in its own session (its forked processes share the group).

    ``start()`` waits until the manager answers; ``open_environment()`` until the worker is up;
    ``kill()`` SIGKILLs the whole group; ``stop()`` closes the environment, then SIGTERM, then
    SIGKILL. ``log()`` is everything it printed (each start appends).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        catalog_url: str | None,
        api_key: str | None,
        redis_addr: str,
        redis_prefix: str | None = None,
        control_port: int | None = None,
        info_port: int | None = None,
        extra_env: dict[str, str] | None = None,
        bench: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.bench = bench  # a bench file (EPICS); None: the twin
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog_url, self.api_key, self.redis_addr = catalog_url, api_key, redis_addr
        self.redis_prefix = redis_prefix or f"gainloop_fault_{uuid.uuid4().hex[:12]}"
        self.control_port = control_port or free_port()
        info = info_port or free_port()
        while info == self.control_port:
            info = free_port()
        self.info_port = info
        self.extra_env = dict(extra_env or {})
        self.proc: subprocess.Popen | None = None
        self.api = None
        self.log_path = self.workdir / "manager.log"

    @property
    def control_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.control_port}"

    @property
    def info_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.info_port}"

    def argv(self) -> list[str]:
        args = [
            sys.executable, "-m", "gainloop.cli", "qserver", "start",
            *(["--twin"] if self.bench is None else ["--bench", str(self.bench)]), "--data-dir", str(self.data_dir),
            "--control-port", str(self.control_port), "--info-port", str(self.info_port),
            "--redis", self.redis_addr, "--redis-prefix", self.redis_prefix,
        ]  # fmt: skip
        if self.catalog_url is not None:
            args += ["--catalog", self.catalog_url]
        return args

    def env(self) -> dict[str, str]:
        extra = dict(self.extra_env)
        if self.api_key is not None:
            extra["TILED_API_KEY"] = self.api_key
        return clean_env(**extra)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def _check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the RE Manager exited ({self.proc.returncode}): {self.log()[-3000:]}")

    def start(self, timeout_s: float = MANAGER_START_S) -> Manager:
        from bluesky_queueserver_api.zmq import REManagerAPI

        with self.log_path.open("a") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        self.api = REManagerAPI(zmq_control_addr=self.control_addr, zmq_info_addr=self.info_addr, timeout_recv=5)
        try:
            _wait(lambda: self.api.status()["manager_state"] == "idle", timeout_s, "the manager's start", self._check)
        except Exception:
            self.kill()
            raise
        return self

    def open_environment(self, timeout_s: float = ENVIRONMENT_OPEN_S) -> None:
        self.api.environment_open()
        _wait(
            lambda: (s := self.api.status())["worker_environment_exists"] and s["manager_state"] == "idle",
            timeout_s,
            "the worker environment opening",
            self._check,
        )

    def wait_idle_with_history(self, n_history: int, timeout_s: float = ITEM_S) -> None:
        _wait(
            lambda: (s := self.api.status())["items_in_history"] >= n_history and s["manager_state"] == "idle",
            timeout_s,
            f"{n_history} items in the history",
            self._check,
        )

    def close_api(self) -> None:
        """Close this client's connection to the manager (the manager goes on)."""
        if self.api is not None:
            close_api(self.api)
            self.api = None

    def kill(self) -> None:
        """SIGKILL the whole process group (watchdog, manager, worker): nothing gets to clean up."""
        self.close_api()
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=20)
            _wait(lambda: not _group_alive(self.proc.pid), 20, "the manager's processes to end")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.api is not None and self.proc.poll() is None:
            try:
                self.api.environment_close()
                self.api.wait_for_idle(timeout=60)
            except Exception:
                pass
        self.close_api()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the manager stops its worker and exits
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def delete_redis_keys(self) -> int:
        import redis

        host, _, port = self.redis_addr.rpartition(":")
        client = redis.Redis(host=host, port=int(port), socket_timeout=5)
        try:
            keys = list(client.scan_iter(match=f"{self.redis_prefix}*"))
            return client.delete(*keys) if keys else 0
        except redis.RedisError:
            return 0
        finally:
            client.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# ---------------------------------------------------------------------------------- the scenario
def _catalog(server, folder: Path):
    from gainloop.catalog import Catalog

    return Catalog(server.url, data_dir_path=folder, api_key=server.api_key)


def _runs(cat, item_uid: str) -> list[dict]:
    from gainloop.queueserver import runs_of_item

    return runs_of_item(cat, item_uid)


def _reconcile_cli(manager: Manager, server) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "gainloop.cli", "qserver", "reconcile", "--catalog", server.url,
         "--data-dir", str(manager.data_dir), "--redis", manager.redis_addr,
         "--redis-prefix", manager.redis_prefix, "--json"],
        capture_output=True, text=True, timeout=300, env=clean_env(TILED_API_KEY=server.api_key),
    )  # fmt: skip
    if proc.returncode not in (0, 1) or not proc.stdout.strip():
        raise RuntimeError(f"gainloop qserver reconcile failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def scenario_manager_killed_redis_restarted(
    workdir: Path, env: FaultEnv, *, seed: int = 3, max_trials: int = 3, kill_after_trials: int = 1
) -> FaultFigures:
    """Fault 9 (see the module docstring); ``detail`` is JSON with what was seen."""
    from bluesky_queueserver_api import BPlan

    from gainloop.campaign import FAULT_ENV

    workdir = Path(workdir)
    redis_server = RedisServer(workdir / "redis")  # ServiceMissing without a redis-server binary
    server = env.tiled_server(shared=True)
    redis_server.start()
    # trial `kill_after_trials` stalls in its scan (a RunEngine sleep): the kill lands mid-plan, whatever the
    # lag of the spool's drain (a twin campaign's trials take a fraction of a second each)
    stall = {FAULT_ENV: f"stall={ITEM_S:g}@measuring:{kill_after_trials}"}
    manager = Manager(
        workdir / "qserver",
        catalog_url=server.url,
        api_key=server.api_key,
        redis_addr=redis_server.addr,
        extra_env=stall,
    )
    checks: dict[str, bool] = {}
    seen: dict = {}
    try:
        manager.start()
        manager.open_environment()
        api = manager.api
        plans = [
            BPlan("ase_fluence_scan", **SHORT_SCAN),
            BPlan("campaign_plan", max_trials=max_trials, seed=seed),
            BPlan("ase_fluence_scan", **{**SHORT_SCAN, "stripe_length_um": 1500.0}),
        ]
        uids = [api.item_add(p)["item"]["item_uid"] for p in plans]
        first, campaign, last = uids
        api.queue_start()

        # mid-plan: the campaign runs, its record run is open and `kill_after_trials` trials are stored
        with _catalog(server, workdir / "reader") as cat:

            def campaign_mid_plan():
                runs = _runs(cat, campaign)
                done = [r for r in runs if r["stop"] is not None and "trial_index" in r["start"]]
                return len(done) >= kill_after_trials and api.status()["running_item_uid"] == campaign

            _wait(campaign_mid_plan, ITEM_S, "the campaign's first trial", manager._check)
            before_kill = {"history": api.history_get()["items"], "queue": api.queue_get()["items"]}
            t_kill = time.monotonic()
            manager.kill()
            redis_pid = redis_server.proc.pid
            redis_server.kill()
            redis_server.start()
            checks["redis restarted (new process)"] = redis_server.proc.pid != redis_pid
            checks["redis keeps its data on disk (aof)"] = redis_server.info("persistence").get("aof_enabled") == 1
            manager.start()
            after = {"history": manager.api.history_get()["items"], "queue": manager.api.queue_get()["items"]}
            recovery_s = time.monotonic() - t_kill

            history_uids = [i["item_uid"] for i in after["history"]]
            queue_uids = [i["item_uid"] for i in after["queue"]]
            seen.update(history_before=[i["item_uid"] for i in before_kill["history"]], history_after=history_uids)
            seen.update(queue_before=[i["item_uid"] for i in before_kill["queue"]], queue_after=queue_uids)
            checks["history intact: the first item completed, with its run"] = (
                history_uids[:1] == [first]
                and after["history"][0]["result"]["exit_status"] == "completed"
                and after["history"][0]["result"]["run_uids"] == before_kill["history"][0]["result"]["run_uids"]
            )
            checks["the queue intact: the last item still queued"] = queue_uids == [last]
            lost_item = after["history"][1] if len(after["history"]) > 1 else {}
            seen["queueserver_exit_status"] = lost_item.get("result", {}).get("exit_status")
            checks["the queueserver recorded the killed item as 'unknown'"] = (
                lost_item.get("item_uid") == campaign and seen["queueserver_exit_status"] == "unknown"
            )
            seen["start_warning"] = "was running when the last manager stopped" in manager.log()

            # gainloop's verdict, from the catalog's stop documents
            code, report = _reconcile_cli(manager, server)
            by_uid = {o["item_uid"]: o for o in report["items"]}
            verdict = by_uid.get(campaign, {})
            seen["reconcile"] = {"exit_code": code, "campaign": verdict, "successes": report["successes"]}
            checks["reconcile: the killed item is not a success"] = (
                verdict.get("outcome") == "interrupted" and verdict.get("counted_as_success") is False
            )
            record_runs = [r for r in _runs(cat, campaign) if r["start"].get("plan_name") == "campaign"]
            checks["reconcile: the open run is the campaign's record run"] = (
                len(record_runs) == 1
                and record_runs[0]["stop"] is None
                and record_runs[0]["start"]["uid"] in verdict.get("open_run_uids", [])
                and verdict.get("campaign_uids") == [record_runs[0]["start"]["campaign_uid"]]
            )
            checks["reconcile: the first item a success, exit status 1 (one unresolved)"] = (
                by_uid.get(first, {}).get("outcome") == "success" and report["successes"] == 1 and code == 1
            )
            campaign_runs_at_restart = {r["start"]["uid"] for r in _runs(cat, campaign)}

            # the queue goes on: the last item runs once, the killed one is not run again
            manager.open_environment()
            manager.api.queue_start()
            manager.wait_idle_with_history(3)
            final = manager.api.history_get()["items"]
            last_item = final[-1]
            checks["the last item ran after the restart"] = (
                last_item["item_uid"] == last and last_item["result"]["exit_status"] == "completed"
            )
            runs_per_item = {uid: _runs(cat, uid) for uid in uids}
            seen["runs_per_item"] = {uid: len(r) for uid, r in runs_per_item.items()}
            checks["each scan is one run, stopped with success"] = all(
                len(runs_per_item[u]) == 1 and runs_per_item[u][0]["stop"]["exit_status"] == "success"
                for u in (first, last)
            )
        submitted = set(uids)
        accounted = {i["item_uid"] for i in final} | {i["item_uid"] for i in manager.api.queue_get()["items"]}
        lost = len(submitted - accounted)
        history_counts = [i["item_uid"] for i in final]
        doubled = sum(history_counts.count(u) > 1 for u in submitted)
        doubled += int({r["start"]["uid"] for r in runs_per_item[campaign]} != campaign_runs_at_restart)
        return FaultFigures(
            fault="queueserver manager killed mid-plan, Redis restarted",
            trials_lost=lost,
            trials_doubled=doubled,
            recovery_s=recovery_s,
            checks=checks,
            detail=json.dumps(seen, default=str),
        )
    finally:
        manager.stop()
        redis_server.stop()


SCENARIOS = {"queueserver_manager_killed_redis_restarted": scenario_manager_killed_redis_restarted}
