"""Shared fixtures and helpers: the shipped presets, a fresh RunEngine per test, ``wait_for``.

Bluesky documents (collecting a run's, picking events) are in ``harness/documents.py``; the twin's
IOC, the CA ports and both control layers are in ``harness/ioc.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

# With several xdist workers sharing the cores, one math thread each (torch, BLAS) -- and in
# the subprocesses they start -- avoids oversubscribing the cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

# ophyd's control layer is caproto in this suite unless a module asks for another: the EPICS tests
# run under caproto and pyepics through the ``control_layer`` fixture (harness/ioc.py), and
# pyepics's libca must not be used in a worker before that fixture points it at the process's CA
# ports (it reads EPICS_CA_* once per process). Set before ophyd is imported (its import picks a
# layer), and inherited by the CLI subprocesses the tests start.
os.environ["OPHYD_CONTROL_LAYER"] = "caproto"
# The tests' CA clients get no beacons (the pool's repeater port is only held, nothing forwards them), so
# a client's one check that an IOC lives is an echo request after EPICS_CA_CONN_TMO (default 30 s) of
# silence, to be answered within 5 s. On a loaded 2-core machine a live but starved IOC missed that window
# and caproto dropped its circuit mid-module (CI: "Server at 127.0.0.1:... is unresponsive"). The tests
# detect dead IOCs by their closed connections and their own timeouts, never by this check: it waits longer.
os.environ.setdefault("EPICS_CA_CONN_TMO", "120")

import pytest

# caproto's CA clients of this process search from UDP ports no other socket shares (two clients could share
# one, and one's search replies went to the other: a search "timed out" against a live IOC; devices/_ca.py)
from devices import exclusive_search_ports

# the EPICS tests' fixtures: ophyd's control layer (caproto, then pyepics) and the process's CA ports
from harness.ioc import ca_pool, control_layer  # noqa: F401
from twin.presets import load_presets

REPO = Path(__file__).resolve().parents[1]
exclusive_search_ports()


@pytest.fixture(scope="session")
def presets():
    return load_presets()


@pytest.fixture(scope="session")
def setup(presets):
    return presets.setup


@pytest.fixture
def RE():
    """A fresh RunEngine for each test (plans return their results)."""
    from bluesky import RunEngine

    return RunEngine({}, call_returns_result=True)


def wait_for(predicate: Callable[[], object], timeout_s: float = 5.0, poll_s: float = 0.02) -> bool:
    """Whether ``predicate()`` became true within ``timeout_s`` wall seconds (polled every ``poll_s``).

    Use it as ``assert wait_for(lambda: ...)``: it returns the last answer, checked once more at the
    deadline, so a condition met just then still passes; it never raises on a false one.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())


def pytest_collection_modifyitems(config, items):
    """Modules marked ``slow`` run first, the longest first (the marker's ``seconds``: wall seconds the
    module takes on 2 cores), each kept whole and in its own order.

    xdist (``--dist loadfile --no-loadscope-reorder`` in pyproject.toml) hands whole modules to the
    workers in collection order: started first, the longest modules (subprocesses, signals, servers)
    run while the short ones fill in around them, instead of one of them running alone at the end.
    """
    seconds: dict[str, float] = {}
    for item in items:
        marker = item.get_closest_marker("slow")
        if marker is not None:
            module = item.nodeid.split("::")[0]
            seconds[module] = max(seconds.get(module, 0.0), float(marker.kwargs.get("seconds", 1.0)))
    items.sort(key=lambda item: -seconds.get(item.nodeid.split("::")[0], 0.0))
