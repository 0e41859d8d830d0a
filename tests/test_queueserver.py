"""gainloop behind bluesky-queueserver: the manager's settings, files and permissions, the worker's
RunEngine, and the reconciliation of items whose outcome the queueserver lost.

The real RE Manager (`gainloop qserver start` on Redis, writing into `gainloop catalog serve` on
PostgreSQL, plans submitted with bluesky-queueserver-api) runs once in the suite, in
``tests/faults/test_security.py`` (a campaign through the queue, loopback sockets, over-limit
fluences, plans and functions users may run) and, killed mid-plan with Redis restarted, in
``tests/faults/test_queueserver_faults.py``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gainloop.queueserver import (
    ITEM_UID_KEY,
    ManagerSettings,
    QueueServerError,
    permissions,
    plan_names,
    write_existing_plans_devices,
)

from .test_catalog_server import _clean_env, _free_port


def test_bad_manager_settings_are_refused(tmp_path):
    # (the loopback default and a named interface: tests/faults/test_security.py)
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


def test_runs_are_tagged_with_the_queue_item_only_inside_the_worker():
    """The worker's RunEngine puts the running item's uid into every start document; elsewhere nothing."""
    import multiprocessing

    from bluesky import plan_stubs as bps

    from gainloop.queueserver import build_namespace

    ns = build_namespace(_profile_settings(), connect=False)
    RE, starts = ns["RE"], []
    RE.subscribe(lambda name, doc: starts.append(doc) if name == "start" else None)

    def two_runs():
        for _ in range(2):
            yield from bps.open_run()
            yield from bps.close_run()

    RE(two_runs())
    process = multiprocessing.current_process()  # the queueserver's worker is its own current process
    process._running_plan_info = {"item_uid": "item-123", "name": "two_runs"}
    try:
        RE(two_runs())
    finally:
        del process._running_plan_info
    assert [ITEM_UID_KEY in s for s in starts[:2]] == [False, False]
    assert [s.get(ITEM_UID_KEY) for s in starts[2:]] == ["item-123", "item-123"]
