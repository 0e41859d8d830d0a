"""``gainloop watch`` in a real headless Chromium: a page following a twin campaign as it runs, its security,
and the queueserver's pause / resume / stop from the page's buttons.

Real processes throughout: ``gainloop catalog serve`` on PostgreSQL (behind an API key), ``gainloop
qserver start --twin`` on Redis running ``campaign_plan`` into it, ``gainloop watch`` reading it, and
Debian's chromium driven over the DevTools protocol (``harness/browser.py``). One campaign serves every
check (the suite's time is short); ``benchmarks/watch_latency.py`` follows a campaign run from a
terminal (``gainloop campaign run``) the same way.
The assertions are on what the page shows (its SVG points, its tables, its buttons), not only on the
server's JSON.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest

from harness.browser import Browser, chromium_path
from harness.faults import FaultEnv, ServiceMissing
from harness.watch import first_campaign_uid, start_watch

pytestmark = pytest.mark.slow(seconds=55)

FINISHED_JS = "Number(document.body.dataset.trialsShown || 0)"
POINTS_JS = "document.querySelectorAll('#best-plot .trial-point').length"
ROWS_JS = "document.querySelectorAll('#trials-table tbody tr.completed').length"
STALL_S = 1.0  # seconds each trial of the queueserver's campaign waits once proposed
MAX_TRIALS = 40  # more than the page lets it run: it pauses, resumes and stops it


def _need_chromium() -> None:
    if chromium_path() is None:
        pytest.skip("no chromium binary (Debian package `chromium`; .ci/run installs it when absent)")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    fault_env = FaultEnv(tmp_path_factory.mktemp("watch-services"))
    try:
        yield fault_env
    finally:
        fault_env.close()


@pytest.fixture(scope="module")
def server(env):
    try:
        return env.tiled_server()
    except ServiceMissing as exc:
        pytest.skip(str(exc))


def test_the_page_follows_a_queueserver_twin_campaign_keeps_the_key_and_pauses_resumes_and_stops_it(
    env, server, tmp_path
):
    _need_chromium()
    from bluesky_queueserver_api import BPlan

    from gainloop.campaign import FAULT_ENV
    from harness.faults.queueserver import Manager

    try:
        env.require_redis()
    except ServiceMissing as exc:
        pytest.skip(f"{exc} (the queueserver keeps its queue in Redis)")
    # a campaign that outlasts the checks however slow the machine: many trials, each after a stall (a RunEngine
    # sleep: no CPU); with the spool the RunEngine does not wait on Tiled, and a twin trial takes a fraction of a
    # second, while the watch and the browser take tens of seconds to start on a loaded machine
    stalls = ",".join(f"stall={STALL_S:g}@proposed:{k}" for k in range(1, MAX_TRIALS))
    manager = Manager(
        tmp_path / "qserver",
        catalog_url=server.url,
        api_key=server.api_key,
        redis_addr="127.0.0.1:6379",
        extra_env={FAULT_ENV: stalls},
    )
    watch = None
    state_js = "document.body.dataset.managerState"
    try:
        manager.start()
        manager.open_environment()
        # more trials than it will run: the page pauses, resumes, pauses and stops it
        item = manager.api.item_add(BPlan("campaign_plan", max_trials=MAX_TRIALS, seed=secrets.randbelow(1000)))["item"]
        manager.api.queue_start()
        uid = first_campaign_uid(server.url, server.api_key, timeout_s=90, qserver_item_uid=item["item_uid"])
        watch = start_watch(
            server.url, server.api_key, tmp_path / "watch", campaign_uid=uid, qserver_addr=manager.control_addr
        )
        assert server.api_key not in watch.output()

        # anonymous requests are refused, a wrong key too; controls need the key and the page's header
        with httpx.Client(base_url=watch.url, trust_env=False, timeout=10) as http:
            assert http.get("/api/state?after=999999").status_code == 401
            assert http.get("/api/posterior.png").status_code == 401
            assert http.get("/").headers["location"] == "/login"
            assert http.get("/", params={"api_key": "wrong" + server.api_key}).status_code == 401
            assert http.post("/api/control/pause", headers={"X-Gainloop-Watch": "1"}).status_code == 401
            keyed = {"Authorization": f"Apikey {server.api_key}"}
            assert http.post("/api/control/stop", headers=keyed).status_code == 403  # not from the page
            state = http.get("/api/state?after=0", headers=keyed, timeout=60)  # once the campaign has been read
            assert state.status_code == 200 and server.api_key not in state.text
            assert state.json()["state"]["runs_in"] == "queueserver"
            assert http.get("/", headers={"Host": "attacker.example:80"}).status_code == 421

        with Browser() as browser:
            browser.open(watch.url + "?api_key=" + server.api_key)  # signs in: a cookie, then the page without the key
            assert browser.eval("location.href") == watch.url
            assert browser.eval("document.cookie") == ""  # HttpOnly: no script reads the session
            browser.wait("document.body.dataset.version")
            assert server.api_key not in browser.eval("document.documentElement.outerHTML")
            assert browser.eval("document.getElementById('state-badge').textContent") == "running"
            assert "queueserver" in browser.eval("document.getElementById('state-text').textContent")
            assert "No twin prior" in browser.eval("document.getElementById('prior-text').textContent")

            # the figures grow as trials complete
            first = browser.wait(f"{FINISHED_JS} >= 1 && {FINISHED_JS}", 60)
            seen = browser.wait(f"{POINTS_JS} > {first} && {POINTS_JS}", 60)
            assert browser.eval(ROWS_JS) >= seen
            assert browser.eval("document.querySelectorAll('#scan-plot .scan-point').length") >= 6
            assert browser.eval("document.querySelectorAll('#scan-plot .kink-line').length") >= 1
            assert browser.eval("document.getElementById('next-proposal').textContent").startswith("Next proposal")

            # pause: the manager pauses at the campaign's next checkpoint (between trials); the page says so
            browser.wait("!document.getElementById('btn-pause').hidden", 30)
            assert browser.eval("document.getElementById('btn-resume').hidden") is True
            browser.eval("document.getElementById('btn-pause').click()")
            browser.wait(f"{state_js} === 'paused'", 60)
            assert manager.api.status()["manager_state"] == "paused"
            assert browser.eval("document.getElementById('btn-resume').hidden") is False
            assert browser.eval("document.getElementById('btn-pause').hidden") is True
            # paused (at the RunEngine's next checkpoint, possibly inside a fluence scan): nothing more is
            # measured; the page shows the trials the catalog holds finished
            # (a loaded machine's drain can stall a few seconds with trials still in the worker's spool: a full run saw
            # 4 more trials arrive after 3 quiet seconds; settled = no ended run left in that spool, then quiet)
            paused_at = _settled_finished_in_catalog(server, uid, tmp_path, manager.data_dir / "spool", quiet_s=8.0)
            browser.wait(f"{FINISHED_JS} === {paused_at}", 30)
            time.sleep(2.0)
            assert manager.api.status()["manager_state"] == "paused"
            assert _finished_in_catalog(server, uid, tmp_path) == paused_at
            assert browser.eval(FINISHED_JS) == paused_at
            # resume: the campaign measures on
            browser.eval("document.getElementById('btn-resume').click()")
            browser.wait(f"{state_js} === 'executing_queue'", 30)
            browser.wait(f"{FINISHED_JS} > {paused_at}", 60)
            # pause, then stop: the record run is closed, the page shows the campaign ended, no controls left
            browser.eval("document.getElementById('btn-pause').click()")
            browser.wait(f"{state_js} === 'paused'", 60)
            browser.wait("!document.getElementById('btn-stop').hidden", 10)
            browser.eval("document.getElementById('btn-stop').click()")
            browser.wait("document.body.dataset.running === '0'", 60)
            assert browser.eval("document.getElementById('state-badge').textContent") == "ended"
            assert "ended" in browser.eval("document.getElementById('control-text').textContent")
            assert browser.eval("document.querySelectorAll('#control-buttons button:not([hidden])').length") == 0
            assert browser.eval("document.getElementById('next-proposal').textContent").startswith(
                "The campaign has ended"
            )
            finished = browser.eval(FINISHED_JS)
            assert finished < MAX_TRIALS

            # the page shows what the catalog holds
            from gainloop.campaign import campaign_status
            from gainloop.catalog import Catalog
            from gainloop.records import read_campaign

            with Catalog(server.url, api_key=server.api_key, data_dir_path=tmp_path / "reader") as cat:
                status = campaign_status(cat, uid)
                records = read_campaign(cat, uid).records
            assert status["trials"] == finished
            best = status["best"]["threshold_uJ_cm2"]
            shown = browser.eval("document.getElementById('summary-best-threshold').textContent")
            assert shown.startswith(f"{best:.1f} ±"), shown
            measured = [r for r in records if r.status == "completed" and "threshold_uJ_cm2" in r.outcome]
            assert browser.eval(POINTS_JS) == len(measured)
            for r in records:  # every trial in the table with the status the catalog holds
                row = f"#trials-table tbody tr[data-trial='{r.trial_index}']"
                assert browser.eval(f'document.querySelector("{row}").className') == f"trial {r.status}"
            browser.wait(
                "document.getElementById('posterior-img').complete && "
                "document.getElementById('posterior-img').naturalWidth > 0",
                30,
            )
            assert browser.console_errors() == []
            # the posterior's process ends with the watch, even a watch killed outright
            import psutil

            children = psutil.Process(watch.proc.pid).children(recursive=True)
            assert children, "the posterior's process is running"
            watch.proc.kill()
            watch.proc.wait(timeout=10)
            _gone, alive = psutil.wait_procs(children, timeout=10)
            assert alive == [], [p.pid for p in alive]
    finally:
        if watch is not None:
            watch.stop()
        manager.stop()
        manager.delete_redis_keys()
    assert "Traceback" not in watch.output()


def _settled_finished_in_catalog(
    server, uid: str, tmp_path, worker_spool: Path, quiet_s: float = 3.0, timeout_s: float = 90.0
) -> int:
    """``_finished_in_catalog`` once the worker's spool holds no ended run (every run whose stop document it
    wrote is in the catalog) and the count has not changed for ``quiet_s``: a trial that ended just before the
    pause reaches the catalog through the worker's spool and drain, a second or more after its stop document."""
    assert worker_spool.is_dir(), f"no worker spool at {worker_spool}"
    deadline = time.monotonic() + timeout_s
    last, since = _finished_in_catalog(server, uid, tmp_path), time.monotonic()
    while time.monotonic() - since < quiet_s or _ended_runs_in_spool(worker_spool):
        assert time.monotonic() < deadline, (
            f"the finished trials in the catalog kept changing ({last}), or the worker's spool kept ended runs "
            f"({_ended_runs_in_spool(worker_spool)})"
        )
        time.sleep(0.5)
        now = _finished_in_catalog(server, uid, tmp_path)
        if now != last:
            last, since = now, time.monotonic()
    return last


def _ended_runs_in_spool(folder: Path) -> list[str]:
    """Spool files in ``folder`` that hold a stop document (ended runs the drain has not taken yet)."""
    from gainloop.spool import read_spool_file

    ended = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            docs, _, _ = read_spool_file(path)
        except FileNotFoundError:  # drained meanwhile
            continue
        if any(name == "stop" for name, _ in docs):
            ended.append(path.name)
    return ended


def _finished_in_catalog(server, uid: str, tmp_path) -> int:
    """Trials of the campaign whose run has ended (or that failed before one opened), read from the catalog."""
    from gainloop.catalog import Catalog
    from gainloop.records import read_campaign
    from gainloop.watch.view import campaign_view

    with Catalog(server.url, api_key=server.api_key, data_dir_path=tmp_path / "reader") as cat:
        view = campaign_view(read_campaign(cat, uid))
    return sum(t["status"] != "measuring" for t in view["trials"])


def test_a_campaign_run_from_a_terminal_or_ended_has_no_controls():
    from gainloop.watch.control import ControlError, QueueControl

    control = QueueControl("tcp://127.0.0.1:1", keyed=True)  # never asked: nothing listens there
    terminal = {"state": {"running": True, "runs_in": "terminal"}}
    assert "terminal" in control.state(terminal)["why"]
    assert not control.state(terminal)["available"]
    ended = {"state": {"running": False, "runs_in": "queueserver", "qserver_item_uid": "x"}}
    assert "ended" in control.state(ended)["why"]
    unkeyed = QueueControl("tcp://127.0.0.1:1", keyed=False)
    running = {"state": {"running": True, "runs_in": "queueserver", "qserver_item_uid": "x"}}
    assert "API key" in unkeyed.state(running)["why"]
    with pytest.raises(ControlError, match="unknown action"):
        control.act("reboot", running)


def test_a_page_beyond_loopback_needs_an_api_key():
    from gainloop.watch import WatchError, is_loopback, serve

    assert is_loopback("127.0.0.1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(WatchError, match="needs an API key"):
        serve(None, "uid", host="0.0.0.0", port=0, api_key=None)


def test_the_session_cookie_does_not_hold_the_key():
    from gainloop.watch.app import session_token

    key = secrets.token_hex(32)
    token = session_token(key)
    assert key not in token and token == session_token(key) and token != session_token(key + "x")
