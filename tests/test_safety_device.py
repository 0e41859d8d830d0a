"""Each safety layer below the plans alone stops an over-limit fluence.

1. The device's soft limit (``bench.fluence_limit_uJ_cm2``): refused with ``LimitError``
   before anything is sent -- neither the in-process engine nor the IOC ever sees it.
2. The IOC's interlock alone: with the device's check bypassed (a raw CA put, an ophyd
   ``EpicsSignal``, ``put(force=True)``, or a device whose bench file allows more than
   the IOC), the IOC refuses the put (CA put error), keeps its setpoint, and
   ``IL:Message`` says why.

(The plan-level check is tested in ``test_plan_safety.py``.) Tests with ophyd devices over CA
run under both of ophyd's control layers (``control_layer``: ids end in ``[caproto]``/``[pyepics]``);
the module's IOC serves both.
"""

from __future__ import annotations

import math
import os
import tomllib

import bluesky.plan_stubs as bps
import pytest
from bluesky.utils import FailedStatus
from ophyd import EpicsSignal

from devices import LimitError, PutRefusedError, connect_bench, parse_bench
from harness.ioc import EXAMPLE_BENCH, PutRefused, caget, caput, twin_ioc
from sim.devices import twin_bench_devices

from .conftest import wait_for

LIMIT = 3000.0  # examples/twin_bench.toml
OVER = [3000.001, 3500.0, 1e6, math.inf, math.nan, -1.0]


def _config(prefix: str | None = None, limit: float | None = None):
    data = tomllib.loads(EXAMPLE_BENCH.read_text())
    if prefix is not None:
        data["bench"]["prefix"] = prefix
    if limit is not None:
        data["bench"]["fluence_limit_uJ_cm2"] = limit
    return parse_bench(data)


@pytest.fixture(scope="module")
def ioc(ca_pool):
    prefix = f"S{os.getpid()}:"
    with twin_ioc(EXAMPLE_BENCH, time_scale=1e4, prefix=prefix) as running:
        yield running


@pytest.fixture
def setpoint(ioc):
    """The IOC at a known fluence setpoint (100) with an 'ok' message; the permit restored after."""
    caput(ioc.pv("IL:Permit"), 1)
    caput(ioc.pv("PUMP:Fluence-SP"), 100.0)
    assert caget(ioc.pv("IL:Message.VAL$")) == "ok"
    yield ioc.pv("PUMP:Fluence-SP")
    caput(ioc.pv("IL:Permit"), 1)


# ---------------------------------------------------------------- layer 1: the device's soft limit
@pytest.mark.parametrize("bad", OVER)
def test_device_soft_limit_alone_inprocess(RE, presets, monkeypatch, bad):
    bench = twin_bench_devices(_config(), seed=0, presets=presets)
    RE(bps.mv(bench.pump.fluence, 100.0))
    seen = []
    monkeypatch.setattr(bench.engine, "set_fluence", seen.append)  # the engine would accept anything now
    with pytest.raises(LimitError, match="nothing was sent"):
        RE(bps.mv(bench.pump.fluence, bad))
    with pytest.raises(LimitError):
        bench.pump.fluence.put(bad)
    assert seen == []
    assert bench.engine.state.fluence_uJ_cm2 == 100.0


@pytest.mark.parametrize("bad", OVER)
def test_device_soft_limit_alone_over_ca(RE, ioc, setpoint, control_layer, bad):
    bench = connect_bench(_config(prefix=ioc.prefix))
    try:
        with pytest.raises(LimitError, match="nothing was sent"):
            RE(bps.mv(bench.pump.fluence, bad))
        with pytest.raises(LimitError):
            bench.pump.fluence.set(bad)
    finally:
        bench.destroy()
    # the IOC never saw it: its setpoint and its message are untouched
    assert caget(setpoint) == 100.0
    assert caget(ioc.pv("IL:Message.VAL$")) == "ok"


def test_device_limit_is_the_bench_files_not_the_iocs(RE, ioc, setpoint, control_layer):
    """A bench file stricter than the IOC: the device refuses what the IOC would allow."""
    bench = connect_bench(_config(prefix=ioc.prefix, limit=500.0))
    try:
        with pytest.raises(LimitError, match="limit of 500"):
            RE(bps.mv(bench.pump.fluence, 600.0))
    finally:
        bench.destroy()
    assert caget(setpoint) == 100.0 and caget(ioc.pv("IL:Message.VAL$")) == "ok"


# ---------------------------------------------------------------- layer 2: the IOC's interlock
@pytest.mark.parametrize("bad", [3000.001, 3500.0, 1e6, math.nan, -1.0])
def test_ioc_interlock_alone_raw_ca_put(ioc, setpoint, bad):
    with pytest.raises(PutRefused):
        caput(setpoint, bad)
    assert caget(setpoint) == 100.0
    message = caget(ioc.pv("IL:Message.VAL$"))
    assert message.startswith("refused fluence")
    assert ("above the limit of 3000" in message) or ("finite number >= 0" in message)


def test_ioc_interlock_alone_raw_ophyd_signal(ioc, setpoint, control_layer):
    raw = EpicsSignal(setpoint, name="raw_fluence")
    try:
        raw.wait_for_connection(timeout=5)
        raw.put(5000.0, force=True)  # no client-side check at all; fire and forget
        assert wait_for(lambda: caget(ioc.pv("IL:Message.VAL$")) != "ok")
    finally:
        raw.destroy()
    assert caget(setpoint) == 100.0
    assert "above the limit of 3000" in caget(ioc.pv("IL:Message.VAL$"))


def test_ioc_interlock_alone_device_check_bypassed(ioc, setpoint, control_layer):
    bench = connect_bench(_config(prefix=ioc.prefix))
    try:
        assert bench.control_layer == control_layer
        with pytest.raises(PutRefusedError, match="above the limit of 3000") as err:
            bench.pump.fluence.put(4000.0, force=True)
        assert setpoint in str(err.value)
    finally:
        bench.destroy()
    assert caget(setpoint) == 100.0


def test_ioc_interlock_alone_device_allows_more(RE, ioc, setpoint, control_layer):
    """A bench file laxer than the IOC: the device sends it, the IOC refuses, the plan fails."""
    bench = connect_bench(_config(prefix=ioc.prefix, limit=1e5))
    try:
        with pytest.raises(FailedStatus) as err:
            RE(bps.mv(bench.pump.fluence, 3500.0))
    finally:
        bench.destroy()
    exc = err.value.__cause__
    assert isinstance(exc, PutRefusedError) and "above the limit of 3000" in str(exc)
    assert caget(setpoint) == 100.0


def test_ioc_interlock_permit_off_refuses_any_fluence(RE, ioc, setpoint, control_layer):
    caput(ioc.pv("IL:Permit"), 0)
    assert caget(ioc.pv("PUMP:Shutter")) == 0
    with pytest.raises(PutRefused):
        caput(setpoint, 50.0)
    assert caget(setpoint) == 100.0
    assert "permit is off" in caget(ioc.pv("IL:Message.VAL$"))
    bench = connect_bench(_config(prefix=ioc.prefix))
    try:
        with pytest.raises(FailedStatus) as err:
            RE(bps.mv(bench.pump.fluence, 50.0))
        assert isinstance(err.value.__cause__, PutRefusedError)
        with pytest.raises(PutRefusedError, match="permit is off"):
            bench.pump.shutter.put(1)
    finally:
        bench.destroy()
    assert caget(setpoint) == 100.0 and caget(ioc.pv("PUMP:Shutter")) == 0
