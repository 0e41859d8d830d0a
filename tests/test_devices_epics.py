"""The bench's ophyd devices over Channel Access, against the twin's IOC in a subprocess: what only CA has.

The device contract these devices share with the twin's in-process ones (keys, units, lab time,
refusals before sending, faults) is ``tests/test_device_contract.py``; here are the PVs and records
behind the devices, the IOC's statuses and reasons, reboots and reconnection, timeouts of a stuck or
paused IOC, CA text types, and the numbers agreeing with the twin in process for the same seed.

Each IOC gets its own PV prefix (the bench file's names under a unique prefix), so
channels of one IOC are never confused with another's. The module's IOC runs at a
time scale of 1e4 lab seconds per wall second; tests that compare numbers start a
fresh, seeded IOC. Every test over CA runs under both of ophyd's control layers
(``control_layer``: ids end in ``[caproto]``/``[pyepics]``); the module's IOC serves both
(its IOCs are on the process's CA ports: ``ca_pool``), each layer with a bench of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky.utils import FailedStatus

from devices import (
    BenchConnectionError,
    DeviceTimeoutError,
    LimitError,
    PutRefusedError,
    ReadbackError,
    StripeSlit,
    connect_bench,
)
from harness.documents import events, one, run_and_collect
from harness.faults.devices import fast_ca_searches, reboot_ioc
from harness.ioc import EXAMPLE_BENCH, bench_config, caget, caput, lease_server_port, twin_ioc
from sim.devices import twin_bench_devices

from .conftest import wait_for

SCALE = 1e4
_counter = itertools.count()


def _unique_prefix() -> str:
    return f"T{os.getpid()}x{next(_counter)}:"


def connect(cfg, layer: str):
    """The bench's devices under ``layer`` (the bench file's ``control_layer`` is auto: the fixture's)."""
    bench = connect_bench(cfg)
    assert bench.control_layer == layer
    return bench


@contextlib.contextmanager
def ioc_and_bench(layer: str, *, seed: int | None = None, time_scale: float = SCALE, **overrides):
    """A fresh IOC under a unique prefix and the bench's devices connected to it under ``layer``."""
    prefix = _unique_prefix()
    cfg = bench_config(prefix, **overrides)
    args = [] if seed is None else ["--seed", str(seed)]
    with twin_ioc(EXAMPLE_BENCH, time_scale=time_scale, prefix=prefix, args=args) as ioc:
        bench = connect(cfg, layer)
        try:
            yield ioc, bench
        finally:
            bench.destroy()


@pytest.fixture(scope="module")
def epics_ioc(ca_pool):
    """The module's IOC (both layers' benches connect to it)."""
    prefix = _unique_prefix()
    with twin_ioc(EXAMPLE_BENCH, time_scale=SCALE, prefix=prefix) as ioc:
        yield ioc


@pytest.fixture(scope="module")
def epics(epics_ioc, control_layer):
    # short device timeouts so that fault tests fail fast
    cfg = bench_config(epics_ioc.prefix, spectrometer={"acquire_timeout_s": 2.0}, stage={"move_timeout_s": 5.0})
    bench = connect(cfg, control_layer)
    try:
        yield epics_ioc, bench
    finally:
        bench.destroy()


@pytest.fixture
def ioc(epics):
    return epics[0]


@pytest.fixture
def bench(epics):
    ioc, bench = epics
    yield bench
    # leave the IOC as the next test expects it
    for fault in ("Pause", "NaN", "Inf", "OutOfRange", "Saturated", "StuckMotor"):
        caput(ioc.pv(f"SIM:Fault-{fault}"), 0)
    caput(ioc.pv("IL:Permit"), 1)


# ---------------------------------------------------------------- connection
def test_connect_names_the_pvs_that_did_not_connect(control_layer):
    cfg = bench_config("NOSUCHBENCH:", bench={"connection_timeout_s": 0.5})
    t0 = time.monotonic()
    with pytest.raises(BenchConnectionError) as err:
        connect_bench(cfg)
    assert time.monotonic() - t0 < 5.0
    msg = str(err.value)
    assert "NOSUCHBENCH:PUMP:Fluence-SP" in msg and "NOSUCHBENCH:SPEC:Acquire" in msg
    assert "did not connect within 0.5 s" in msg


def test_epics_bench_has_the_contract_pvs(ioc, bench):
    assert bench.engine is None
    assert bench.pump.fluence.pvname == ioc.pv("PUMP:Fluence-RB")
    assert bench.pump.fluence.setpoint_pvname == ioc.pv("PUMP:Fluence-SP")
    assert isinstance(bench.slit, StripeSlit) and bench.slit.prefix == ioc.pv("SLIT:Length")
    assert bench.stage.sample.pvname == ioc.pv("STAGE:Sample-RB")
    assert bench.spectrometer.spectrum.pvname == ioc.pv("SPEC:Spectrum")


# ---------------------------------------------------------------- same numbers as in-process
def _sequence(b) -> list[tuple]:
    b.pump.shutter.put(1)
    b.spectrometer.exposure.put(0.5)
    out = []
    for sample, fluence, length in [
        ("cas_doped-film", 400.0, 1500.0),
        ("cas_doped-film", 900.0, 700.0),
        ("cas-dfb", 1500.0, 700.0),
    ]:
        b.stage.set(sample).wait(10)
        b.pump.fluence.put(fluence)
        b.slit.move(length, wait=True)
        b.spectrometer.trigger().wait(10)
        spec = b.spectrometer
        out.append(
            (
                spec.integrated.get(),
                np.asarray(spec.spectrum.get(), dtype=float),
                spec.peak_wavelength.get(),
                spec.fwhm.get(),
                b.pump.fluence.get(),
                b.pump.pulse_energy.get(),
            )
        )
    b.ta.delay.put(5.0)
    b.ta.trigger().wait(10)
    out.append((b.ta.signal.get(),))
    return out


def test_inprocess_and_ioc_agree_for_the_same_seed(presets, control_layer):
    with ioc_and_bench(control_layer, seed=5) as (ioc, bench):
        over_ca = _sequence(bench)
        lab_time_ioc = caget(ioc.pv("SIM:LabTime"))
        twin = twin_bench_devices(bench.config, seed=5, presets=presets)
        in_process = _sequence(twin)
    assert len(over_ca) == len(in_process) == 4
    for a, b in zip(in_process, over_ca, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=0)
    assert lab_time_ioc == pytest.approx(twin.engine.lab_time_s, abs=1e-6)
    # and a different seed gives different counts
    other = _sequence(twin_bench_devices(bench.config, seed=6, presets=presets))
    assert other[0][0] != in_process[0][0]


def test_describe_matches_inprocess(bench, presets):
    twin = twin_bench_devices(bench.config, presets=presets)
    for name, dev in bench.devices().items():
        mine = dev.describe()
        theirs = twin.devices()[name].describe()
        assert set(mine) == set(theirs), name
        for key, desc in theirs.items():
            if "units" in desc:
                assert mine[key]["units"] == desc["units"], key
            assert mine[key]["dtype"] == desc["dtype"], key
        assert set(dev.describe_configuration()) == set(twin.devices()[name].describe_configuration()), name


# ---------------------------------------------------------------- plans over CA
def test_scan_over_fluence_and_slit_over_ca(RE, ioc, bench):
    RE(bps.mv(bench.pump.shutter, 1, bench.spectrometer.exposure, 0.1))
    plan = bp.grid_scan(
        [bench.spectrometer], bench.pump.fluence, 300.0, 900.0, 2, bench.slit, 500, 1500, 2, snake_axes=False
    )
    docs = run_and_collect(RE, plan)
    keys = one(docs, "descriptor")["data_keys"]
    assert keys["pump_fluence"]["units"] == "uJ/cm^2"
    assert keys["slit"]["units"] == "um"
    assert keys["spectrometer_integrated"]["units"] == "counts"
    assert keys["spectrometer_spectrum"]["shape"] == [512]
    evs = events(docs)
    assert len(evs) == 4
    assert [e["data"]["slit"] for e in evs] == pytest.approx([500.0, 1500.0, 500.0, 1500.0])
    assert [e["data"]["pump_fluence"] for e in evs] == pytest.approx([300.0, 300.0, 900.0, 900.0], rel=0.02)
    for ev in evs:
        spec = np.asarray(ev["data"]["spectrometer_spectrum"])
        assert ev["data"]["spectrometer_integrated"] == pytest.approx(float(spec.sum()), rel=1e-9)
    assert caget(ioc.pv("PUMP:Fluence-SP")) == 900.0


def test_epics_motor_record_reads_back_the_move_done(RE, ioc, bench):
    """The motor record's fields after a move (its lab time: the contract's slit scan)."""
    RE(bps.mv(bench.slit, 1000.0))
    RE(bps.mv(bench.slit, 2500.0))
    assert bench.slit.position == pytest.approx(2500.0)
    assert caget(ioc.pv("SLIT:Length.RBV")) == pytest.approx(2500.0)
    assert caget(ioc.pv("SLIT:Length.DMOV")) == 1


def test_slit_soft_limits_are_checked_before_sending(RE, ioc, bench):
    RE(bps.mv(bench.slit, 1200.0))
    for bad in (5.0, 4500.0, math.nan):
        with pytest.raises(LimitError, match="nothing was sent"):
            RE(bps.mv(bench.slit, bad))
    assert caget(ioc.pv("SLIT:Length.VAL")) == pytest.approx(1200.0)
    assert caget(ioc.pv("SLIT:Length.LVIO")) == 0  # the IOC never saw a violation


# ---------------------------------------------------------------- bad setpoints
def test_text_longer_than_an_epics_string_is_refused_before_sending(ioc, bench):
    before = caget(ioc.pv("STAGE:Sample-SP"))
    with pytest.raises(LimitError, match=r"has 40 characters; an EPICS string \(DBR_STRING\) holds at most 39"):
        bench.stage.sample.put("x" * 40, force=True)
    assert caget(ioc.pv("STAGE:Sample-SP")) == before


def test_refused_setpoints_carry_the_iocs_reason(RE, ioc, bench):
    RE(bps.mv(bench.pump.fluence, 100.0))
    caput(ioc.pv("IL:Permit"), 0)
    with pytest.raises(FailedStatus) as err:
        RE(bps.mv(bench.pump.fluence, 200.0))
    exc = err.value.__cause__
    assert isinstance(exc, PutRefusedError)
    assert "interlock permit is off" in str(exc) and ioc.pv("PUMP:Fluence-SP") in str(exc)
    assert "ECA_PUTFAIL" in str(exc)  # the IOC's status, as the layer got it
    assert caget(ioc.pv("PUMP:Fluence-SP")) == 100.0
    with pytest.raises(PutRefusedError, match="shutter"):
        bench.pump.shutter.put(1)
    st = bench.stage.request_film(39.0)  # the schema allows it, the preset's dots cannot hold it
    with pytest.raises(PutRefusedError, match="cannot be made"):
        st.wait(10)
    caput(ioc.pv("IL:Permit"), 1)
    with pytest.raises(PutRefusedError) as err:  # a reason longer than IL:Message (39 characters) holds
        bench.pump.fluence.put(5000.0, force=True)
    reason = caget(ioc.pv("IL:Message.VAL$"))
    assert len(reason) > 39 and str(err.value).endswith(f"{ioc.pv('IL:Message')}: {reason}")
    assert caget(ioc.pv("IL:Message")) == reason[:39]
    with pytest.raises(PutRefusedError) as err:
        bench.stage.sample.put("no-such-sample", force=True)
    assert "refused sample 'no-such-sample': not in the library (core-film, cas-film" in str(err.value)


def test_a_layer_without_put_status_compares_the_read_back(RE, ioc, bench, monkeypatch, control_layer):
    """Where a layer hands no put status, the setpoint read back decides: text (DBR_STRING), numbers and
    flags that the IOC took pass, a refusal is reported with the IOC's reason."""
    from devices import _ca

    assert _ca._put_path(bench.stage.sample.cl, bench.stage.sample._write_pv) == (
        "caproto" if control_layer == "caproto" else "libca"
    )
    monkeypatch.setattr(_ca, "_put_path", lambda layer, pv: "read back")
    bench.stage.set("cas-film").wait(10)
    assert caget(ioc.pv("STAGE:Sample-RB")) == "cas-film"
    RE(bps.mv(bench.pump.fluence, 150.0, bench.pump.shutter, 0))
    assert caget(ioc.pv("PUMP:Fluence-SP")) == 150.0
    caput(ioc.pv("IL:Permit"), 0)
    with pytest.raises(PutRefusedError) as err:
        bench.pump.fluence.put(250.0)
    assert "the setpoint reads 150.0 after the put" in str(err.value)
    assert str(err.value).endswith("refused fluence: interlock permit is off")


# ---------------------------------------------------------------- faults
def test_inf_and_negative_readbacks_are_read_errors(RE, ioc, bench):
    RE(bps.mv(bench.pump.shutter, 1, bench.pump.fluence, 500.0))
    caput(ioc.pv("SIM:Fault-Inf"), 1)
    with pytest.raises(FailedStatus) as err:
        RE(bp.count([bench.spectrometer]))
    assert isinstance(err.value.__cause__, ReadbackError) and "read back inf" in str(err.value.__cause__)
    caput(ioc.pv("SIM:Fault-Inf"), 0)
    caput(ioc.pv("SIM:Fault-OutOfRange"), 1)
    with pytest.raises(ReadbackError, match=r"pump_fluence .* below 0 uJ/cm\^2"):
        bench.pump.read()
    caput(ioc.pv("SIM:Fault-OutOfRange"), 0)
    assert bench.pump.read()["pump_fluence"]["value"] == pytest.approx(500.0, rel=0.05)


def test_string_and_missing_readbacks_are_read_errors_naming_the_pv(RE, control_layer):
    """The IOC reboots with SPEC:Integrated as a string record, then without it: the trigger fails and a
    read raises, each naming the PV and what was read; cleared, the same devices measure again. (Three
    reboots: under pyepics each costs up to 10 s, libca's disconnect governor searching the channels of a
    lost circuit again only at its next 10-s tick.)"""
    with fast_ca_searches(), ioc_and_bench(control_layer, time_scale=1000.0) as (ioc, bench):
        integrated = ioc.pv("SPEC:Integrated")
        RE(bps.mv(bench.pump.shutter, 1, bench.pump.fluence, 500.0))
        reboot_ioc(ioc, bench, "SIM:Fault-String", 1)
        with pytest.raises(FailedStatus) as err:
            RE(bp.count([bench.spectrometer]))
        exc = err.value.__cause__
        assert isinstance(exc, ReadbackError)
        assert re.fullmatch(
            rf"spectrometer_integrated \({integrated}\) read back '[0-9.e+]+ counts': not a number .*", str(exc)
        ), exc
        with pytest.raises(ReadbackError, match=r"read back '[0-9.e+]+ counts': not a number"):
            bench.spectrometer.read()
        # with both faults on the record is missing: one reboot
        reboot_ioc(ioc, bench, "SIM:Fault-Missing", 1, missing="SPEC:Integrated")
        with pytest.raises(FailedStatus) as err:
            RE(bp.count([bench.spectrometer]))
        exc = err.value.__cause__
        assert isinstance(exc, ReadbackError)
        assert str(exc).startswith(f"spectrometer_integrated ({integrated}) is missing: no reading"), exc
        with pytest.raises(ReadbackError, match=rf"spectrometer_integrated \({integrated}\) is missing"):
            bench.spectrometer.read()
        bench.pump.read()  # the other PVs are back
        caput(ioc.pv("SIM:Fault-String"), 0)  # still missing (Missing is on): no reboot
        assert caget(ioc.pv("SIM:Fault-String")) == 0 and bench.spectrometer.acquire.connected
        reboot_ioc(ioc, bench, "SIM:Fault-Missing", 0)
        (ev,) = events(run_and_collect(RE, bp.count([bench.spectrometer])))
        counts = ev["data"]["spectrometer_integrated"]
        assert math.isfinite(counts) and counts == pytest.approx(sum(ev["data"]["spectrometer_spectrum"]), rel=1e-9)
        RE(bps.mv(bench.slit, 1500.0))  # the slit's monitors are back too
        assert bench.slit.position == pytest.approx(1500.0)


@pytest.mark.parametrize("value", ["n/a", None, b"1.0", [], {"x": 1}])
def test_a_measurement_that_is_not_numbers_is_a_read_error(value):
    from devices import require_finite

    with pytest.raises(ReadbackError, match="not a number"):
        require_finite(value, "spectrometer_integrated (PV)")
    require_finite(np.array([1.0, 2.0]), "spectrometer_spectrum (PV)")  # numbers pass
    require_finite(3, "x", minimum=0.0)


def test_stuck_motor_times_out_with_a_clear_error(RE, ioc, bench, monkeypatch):
    RE(bps.mv(bench.slit, 1000.0))
    caput(ioc.pv("SIM:Fault-StuckMotor"), 1)
    monkeypatch.setattr(bench.slit, "timeout_margin_s", 0.5)  # travel 1 s of lab time + 0.5 s
    t0 = time.monotonic()
    with pytest.raises(FailedStatus) as err:
        RE(bps.mv(bench.slit, 1500.0))
    assert 1.2 < time.monotonic() - t0 < 10.0
    exc = err.value.__cause__
    assert isinstance(exc, DeviceTimeoutError) and isinstance(exc, TimeoutError)
    assert "did not reach 1500 um" in str(exc) and "stuck" in str(exc)
    caput(ioc.pv("SIM:Fault-StuckMotor"), 0)
    # the device stopped the move: the motor is done and never went to 1500
    assert wait_for(lambda: caget(ioc.pv("SLIT:Length.DMOV")) == 1, 5.0)
    assert caget(ioc.pv("SLIT:Length.RBV")) == pytest.approx(1000.0)
    # let the device's own monitors catch up with the stop before the next move (under load
    # a late DMOV update of the stopped move could otherwise be taken for the new move's end)
    assert wait_for(lambda: bench.slit.motor_done_move.get() == 1 and not bench.slit.moving, 5.0)
    RE(bps.mv(bench.slit, 1100.0))
    assert wait_for(lambda: bench.slit.position == pytest.approx(1100.0), 5.0)


def test_paused_ioc_times_out_with_a_clear_error(RE, ioc, bench):
    RE(bps.mv(bench.pump.fluence, 100.0))
    caput(ioc.pv("SIM:Fault-Pause"), 1)
    st = bench.pump.fluence.set(200.0, timeout=0.5)
    with pytest.raises(DeviceTimeoutError, match=r"did not complete within 0\.5 s"):
        st.wait(5)
    t0 = time.monotonic()
    with pytest.raises(FailedStatus) as err:
        RE(bp.count([bench.spectrometer]))
    assert isinstance(err.value.__cause__, DeviceTimeoutError)
    assert "acquisition did not complete within 2 s" in str(err.value.__cause__)
    assert 1.5 < time.monotonic() - t0 < 10.0
    caput(ioc.pv("SIM:Fault-Pause"), 0)


# ---------------------------------------------------------------- refusals as CA error responses
_STUB_IOC = """
from caproto.server import PVGroup, pvproperty, run

class Stub(PVGroup):
    sp = pvproperty(value=0.0, name="SP")

    @sp.putter
    async def sp(self, instance, value):
        if value > 10:
            raise ValueError(f"stub refuses {value}: above 10")
        return value

run(Stub(prefix="PREFIX").pvdb, interfaces=["127.0.0.1"])
"""


def test_refusal_sent_as_an_error_response_is_reported(tmp_path, monkeypatch, control_layer):
    """A plain caproto IOC answers a refused put-with-completion with an ErrorResponse, which
    caproto's client drops; the devices still report it at once, with the IOC's text (caproto) or
    the status libca hands to the put callback (pyepics: libca keeps the text to itself)."""
    from ophyd import EpicsSignal

    from devices._ca import put_notify

    prefix = f"STUB{os.getpid()}x{next(_counter)}:"
    with _stub_ioc(tmp_path, _STUB_IOC, prefix, "SP", monkeypatch):
        sig = EpicsSignal(prefix + "SP", name="stub_sp")  # after the server is up: no search back-off
        try:
            sig.wait_for_connection(timeout=10)
            replies: list = []
            put_notify(sig, 5.0, replies.append, timeout=5.0, connection_timeout=5.0)
            assert wait_for(lambda: len(replies) == 1, 5.0) and replies == [None]
            t0 = time.monotonic()
            put_notify(sig, 50.0, replies.append, timeout=30.0, connection_timeout=5.0)
            assert wait_for(lambda: len(replies) == 2, 5.0), "the refusal was not delivered"
            assert time.monotonic() - t0 < 5.0
            assert isinstance(replies[1], PutRefusedError)
            if control_layer == "caproto":
                assert "stub refuses 50.0: above 10" in str(replies[1])
            else:
                assert str(replies[1]) == f"{prefix}SP refused 50.0: ECA_PUTFAIL (Channel write request failed)"
            assert caget(prefix + "SP") == 5.0
        finally:
            sig.destroy()


_TEXT_STUB_IOC = """
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty, run

IDS = ("core-film", "cas-dfb")
REASON = "refused sample {!r}: not in the library (" + ", ".join(IDS) + "), ask an operator"

class Stub(PVGroup):
    # a bench whose IOC serves text as CHAR waveforms, its message too
    char = pvproperty(value="core-film", name="CHAR", dtype=ChannelType.CHAR, max_length=64)
    text = pvproperty(value="core-film", name="STR", dtype=ChannelType.STRING)
    msg = pvproperty(value="", name="MSG", dtype=ChannelType.CHAR, max_length=256, read_only=True)

    @char.putter
    async def char(self, instance, value):
        if value not in IDS:
            await self.msg.write(REASON.format(value))
            raise ValueError("refused")
        return value

run(Stub(prefix="PREFIX").pvdb, interfaces=["127.0.0.1"])
"""


def test_text_pvs_read_alike_as_char_waveforms_or_strings(tmp_path, monkeypatch, control_layer):
    """A real bench's IOC may serve its text PVs as CHAR waveforms (and its message too) or as DBR_STRING:
    the devices' text signals read, monitor and write both as text, and a refusal carries the whole reason
    read from a CHAR-waveform message PV."""
    from ophyd import EpicsSignal

    from devices._ca import put_notify
    from devices._signals import BenchSignalRO

    prefix = f"TXT{os.getpid()}x{next(_counter)}:"
    with _stub_ioc(tmp_path, _TEXT_STUB_IOC, prefix, "CHAR", monkeypatch):
        char = EpicsSignal(prefix + "CHAR", name="char", string=True)
        text = BenchSignalRO(prefix + "STR", name="text", string=True)
        seen: list = []
        try:
            char.wait_for_connection(timeout=10)
            text.wait_for_connection(timeout=10)
            assert char.get() == "core-film" and text.get() == "core-film"
            assert char.read()["char"]["value"] == "core-film" and text.read()["text"]["value"] == "core-film"
            char.subscribe(lambda value=None, **kw: seen.append(value), run=False)
            replies: list = []
            put_notify(char, "cas-dfb", replies.append, timeout=5.0, connection_timeout=5.0, reason_pv=prefix + "MSG")
            assert wait_for(lambda: len(replies) == 1, 5.0) and replies == [None]
            assert wait_for(lambda: "cas-dfb" in seen, 5.0), seen  # monitors give text too
            assert char.get(use_monitor=False, timeout=10) == "cas-dfb"
            put_notify(char, "nope", replies.append, timeout=5.0, connection_timeout=5.0, reason_pv=prefix + "MSG")
            assert wait_for(lambda: len(replies) == 2, 5.0)
            reason = "refused sample 'nope': not in the library (core-film, cas-dfb), ask an operator"
            assert isinstance(replies[1], PutRefusedError) and str(replies[1]).endswith(f"{prefix}MSG: {reason}")
            # a loaded machine's stub IOC may answer late: wait for it here rather than ophyd's default 2 s
            char.wait_for_connection(timeout=10)
            assert char.get(use_monitor=False, timeout=10) == "cas-dfb"
        finally:
            char.destroy()
            text.destroy()


@contextlib.contextmanager
def _stub_ioc(tmp_path, source: str, prefix: str, probe: str, monkeypatch):
    """A caproto IOC of ``source`` (its PV prefix ``PREFIX``) on a CA port of this process, the environment set."""
    with lease_server_port() as (port, env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        script = tmp_path / f"stub_{prefix.strip(':')}.py"
        script.write_text(source.replace("PREFIX", prefix))
        server_env = {**os.environ, "EPICS_CAS_SERVER_PORT": str(port)}
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            assert wait_for(lambda: _answers(prefix + probe), 20.0)
            yield proc
        finally:
            proc.terminate()
            try:
                stopped = proc.wait(10)
            except subprocess.TimeoutExpired:
                stopped = None
                proc.kill()  # before its port goes back to the pool: the next IOC must find it free
                proc.wait()
            assert stopped == -signal.SIGTERM, f"the stub IOC did not stop on SIGTERM (exit status {stopped})"


def _answers(pvname: str) -> bool:
    try:
        caget(pvname, timeout=0.5)
    except Exception:
        return False
    return True
