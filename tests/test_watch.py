"""``gainloop watch`` in a real headless Chromium: a page following a twin campaign as it runs, its security,
and the queueserver's pause / resume from the page's buttons.

Real processes throughout: ``gainloop catalog serve`` on PostgreSQL (behind an API key), ``gainloop
campaign run --twin`` writing into it, ``gainloop watch`` reading it, Debian's chromium driven over the
DevTools protocol (``harness/browser.py``), and for the controls ``gainloop qserver start`` on Redis.
The assertions are on what the page shows (its SVG points, its tables, its buttons), not only on the
server's JSON.
"""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from harness.browser import Browser, chromium_path
from harness.faults import FaultEnv, ServiceMissing
from harness.watch import first_campaign_uid, start_campaign, start_watch, stop

pytestmark = pytest.mark.slow(seconds=60)

FINISHED_JS = "Number(document.body.dataset.trialsShown || 0)"
POINTS_JS = "document.querySelectorAll('#best-plot .trial-point').length"
ROWS_JS = "document.querySelectorAll('#trials-table tbody tr.completed').length"


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


def test_the_page_follows_a_running_twin_campaign_and_keeps_the_key(server, tmp_path):
    _need_chromium()
    # trials 1 and 2 wait 5 s and 3 s once proposed: the page is open before trials 1-3 are measured
    campaign = start_campaign(server.url, server.api_key, tmp_path / "campaign", max_trials=4, stalls={1: 5.0, 2: 3.0})
    watch = None
    try:
        uid = first_campaign_uid(server.url, server.api_key, campaign)
        watch = start_watch(server.url, server.api_key, tmp_path / "watch", campaign_uid=uid)
        assert server.api_key not in watch.output()

        # anonymous requests are refused; a wrong key too; controls need the key and the page's header
        with httpx.Client(base_url=watch.url, trust_env=False, timeout=10) as http:
            assert http.get("/api/state?after=999999").status_code == 401
            assert http.get("/api/posterior.png").status_code == 401
            assert http.get("/").headers["location"] == "/login"
            assert http.get("/", params={"api_key": "wrong" + server.api_key}).status_code == 401
            assert http.post("/api/control/pause", headers={"X-Gainloop-Watch": "1"}).status_code == 401
            keyed = {"Authorization": f"Apikey {server.api_key}"}
            state = http.get("/api/state?after=0", headers=keyed, timeout=60)  # once the campaign has been read
            assert state.status_code == 200 and server.api_key not in state.text
            assert state.json()["state"]["running"] and state.json()["state"]["runs_in"] == "terminal"
            assert http.post("/api/control/pause", headers=keyed).status_code == 403  # not from the page
            refused = http.post("/api/control/pause", headers={**keyed, "X-Gainloop-Watch": "1"})
            assert refused.status_code == 409 and "terminal" in refused.json()["error"]
            assert http.get("/", headers={"Host": "attacker.example:80"}).status_code == 421

        with Browser() as browser:
            browser.open(watch.url + "?api_key=" + server.api_key)  # signs in: a cookie, then the page without the key
            assert browser.eval("location.href") == watch.url
            assert browser.eval("document.cookie") == ""  # HttpOnly: no script reads the session
            browser.wait("document.body.dataset.version")
            assert server.api_key not in browser.eval("document.documentElement.outerHTML")
            assert browser.eval("document.getElementById('state-badge').textContent") == "running"
            assert "terminal" in browser.eval("document.getElementById('control-text').textContent")
            assert browser.eval("document.getElementById('btn-pause').hidden") is True
            assert "No twin prior" in browser.eval("document.getElementById('prior-text').textContent")

            # the figures grow as trials complete, with the campaign still running
            first = browser.wait(f"{FINISHED_JS} >= 1 && {FINISHED_JS}", 60)
            assert first < 4
            seen = browser.wait(f"{POINTS_JS} > {first} && {POINTS_JS}", 60)
            assert seen > first
            assert browser.eval(ROWS_JS) >= seen
            assert browser.eval("document.querySelectorAll('#scan-plot .scan-point').length") >= 6
            assert browser.eval("document.querySelectorAll('#scan-plot .kink-line').length") >= 1

            # the end: every trial on the page, as the catalog holds them; no controls for an ended campaign
            browser.wait("document.body.dataset.running === '0'", 90)
            assert campaign.wait(timeout=60) == 0
            assert browser.wait(f"{FINISHED_JS} === 4", 10)
            assert browser.eval("document.getElementById('state-badge').textContent") == "ended"
            assert "ended" in browser.eval("document.getElementById('control-text').textContent")
            assert browser.eval("document.getElementById('next-proposal').textContent").startswith(
                "The campaign has ended"
            )
            from gainloop.campaign import campaign_status
            from gainloop.catalog import Catalog

            with Catalog(server.url, api_key=server.api_key, data_dir_path=tmp_path / "reader") as cat:
                status = campaign_status(cat, uid)
            best = status["best"]["threshold_uJ_cm2"]
            shown = browser.eval("document.getElementById('summary-best-threshold').textContent")
            assert shown.startswith(f"{best:.1f} ±"), shown
            completed = status["trials"] - status["failures"]
            assert browser.eval(POINTS_JS) == completed
            browser.wait(
                "document.getElementById('posterior-img').complete && "
                "document.getElementById('posterior-img').naturalWidth > 0",
                30,
            )
            assert browser.console_errors() == []
    finally:
        stop(campaign)
        if watch is not None:
            watch.stop()
    assert "Traceback" not in watch.output()


def test_the_page_pauses_and_resumes_a_queueserver_campaign(env, server, tmp_path):
    _need_chromium()
    from bluesky_queueserver_api import BPlan

    from harness.faults.queueserver import Manager

    try:
        env.require_redis()
    except ServiceMissing as exc:
        pytest.skip(f"{exc} (the queueserver keeps its queue in Redis)")
    manager = Manager(tmp_path / "qserver", catalog_url=server.url, api_key=server.api_key, redis_addr="127.0.0.1:6379")
    watch = None
    state_js = "document.body.dataset.managerState"
    try:
        manager.start()
        manager.open_environment()
        # more trials than it will run: the page pauses, resumes, pauses and stops it
        item = manager.api.item_add(BPlan("campaign_plan", max_trials=12, seed=secrets.randbelow(1000)))["item"]
        manager.api.queue_start()
        uid = first_campaign_uid(server.url, server.api_key, timeout_s=90, qserver_item_uid=item["item_uid"])
        watch = start_watch(
            server.url, server.api_key, tmp_path / "watch", campaign_uid=uid, qserver_addr=manager.control_addr
        )
        with Browser() as browser:
            browser.open(watch.url + "?api_key=" + server.api_key)
            browser.wait("!document.getElementById('btn-pause').hidden", 60)
            assert "queueserver" in browser.eval("document.getElementById('state-text').textContent")
            assert browser.eval("document.getElementById('btn-resume').hidden") is True
            browser.eval("document.getElementById('btn-pause').click()")
            # the manager pauses at the campaign's next checkpoint (between trials); the page says so
            browser.wait(f"{state_js} === 'paused'", 60)
            assert manager.api.status()["manager_state"] == "paused"
            assert browser.eval("document.getElementById('btn-resume').hidden") is False
            assert browser.eval("document.getElementById('btn-pause').hidden") is True
            paused_at = browser.eval(FINISHED_JS)
            time.sleep(1.5)  # paused: no trial is measured meanwhile
            assert manager.api.status()["manager_state"] == "paused"
            assert browser.eval(FINISHED_JS) == paused_at
            browser.eval("document.getElementById('btn-resume').click()")
            browser.wait(f"{state_js} === 'executing_queue'", 30)
            # resumed: the campaign measures on
            browser.wait(f"{FINISHED_JS} > {paused_at}", 60)
            browser.eval("document.getElementById('btn-pause').click()")
            browser.wait(f"{state_js} === 'paused'", 60)
            browser.wait("!document.getElementById('btn-stop').hidden", 10)
            browser.eval("document.getElementById('btn-stop').click()")
            # stopped: the record run is closed, the page shows the campaign ended, with no controls left
            browser.wait("document.body.dataset.running === '0'", 60)
            assert browser.eval(FINISHED_JS) < 12
            assert "ended" in browser.eval("document.getElementById('control-text').textContent")
            assert browser.eval("document.querySelectorAll('#control-buttons button:not([hidden])').length") == 0
            assert browser.console_errors() == []
    finally:
        if watch is not None:
            watch.stop()
        manager.stop()
        manager.delete_redis_keys()


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
