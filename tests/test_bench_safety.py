"""Every plan leaves the pump safe however it ends: shutter closed, fluence parked, a stop document.

Each plan of the registry is made to fail *after it opened the shutter* -- a device error (an
acquisition that times out), a NaN reading, an abort -- and the bench must read the shutter
closed and the fluence parked at ``[pump].fluence_min_uJ_cm2`` afterwards, with the run closed
by its stop document. (The signals of a real process over Channel Access are in
tests/test_bench_signals.py.)
"""

from __future__ import annotations

import math

import bluesky.preprocessors as bpp
import pytest
from bluesky import Msg
from bluesky.utils import RunEngineInterrupted
from ophyd.status import DeviceStatus

from devices import DeviceTimeoutError
from harness.documents import collect
from plans.registry import PLANS
from sim.devices import default_twin_bench_path, twin_bench_devices

#: Quick arguments of every plan (a DFB for the lasing plans, a film for the others).
QUICK = {
    "ase_fluence_scan": ("cas_doped-film", {"stripe_length_um": 800.0}),
    "vsl_scan": ("cas_doped-film", {"fluence_uJ_cm2": 2200.0, "stripe_lengths_um": [10, 15, 20, 25, 30, 35]}),
    "ase_point": ("cas_doped-film", {"fluence_uJ_cm2": 300.0, "stripe_length_um": 800.0}),
    "lasing_threshold": ("cas_doped-dfb", {}),
    "lasing_spectrum": ("cas_doped-dfb", {"fluence_uJ_cm2": 250.0}),
    "polarization_scan": ("cas_doped-dfb", {"fluence_uJ_cm2": 250.0}),
    "pump_probe": ("core-film", {"parts": ["threshold"]}),
    "stability_run": (
        "cas_doped-dfb",
        {"fluence_uJ_cm2": 250.0, "duration_h": 0.2, "interval_s": 60.0, "smoothing_s": 300.0},
    ),
}

#: Plans that never open the pump shutter (white light only), with the shutter they do open.
LAMP_QUICK = {"absorption_spectrum": ("cas_doped-film", {})}


def test_every_registered_plan_has_quick_arguments_here():
    assert set(QUICK) | set(LAMP_QUICK) == set(PLANS) and not set(QUICK) & set(LAMP_QUICK)


def _bench(seed: int = 0):
    return twin_bench_devices(default_twin_bench_path(), seed=seed)


def _plan(bench, name: str):
    sample, kwargs = QUICK[name]
    if name == "pump_probe":
        kwargs = {**kwargs, "excitons_per_uJ_cm2": bench.excitons_per_uJ_cm2(sample)}
    return PLANS[name].start(bench, sample, **kwargs)


def _after_shutter_opens(plan, bench, inject, shutter=None):
    """``plan`` with ``inject()`` (a list of messages, possibly empty) run right after the first
    message that opens ``shutter`` (default: the pump's) has been processed."""
    shutter = bench.pump.shutter if shutter is None else shutter
    state = {"opened": False, "done": False}

    def mutate(msg):
        if state["opened"] and not state["done"]:
            state["done"] = True
            return _then(inject(), msg), None
        if msg.command == "set" and msg.obj is shutter and msg.args and msg.args[0] == 1:
            state["opened"] = True
        return None, None

    return bpp.plan_mutator(plan, mutate)


def _then(msgs, msg):
    yield from msgs
    return (yield msg)


def _fail_acquisitions(bench):
    """From now on every acquisition (spectrometer and TA) times out: a device error."""

    def failed(obj):
        def trigger():
            st = DeviceStatus(obj)
            st.set_exception(DeviceTimeoutError(f"{obj.name}: acquisition did not complete (test)"))
            return st

        return trigger

    bench.spectrometer.trigger = failed(bench.spectrometer)
    bench.ta.trigger = failed(bench.ta)
    return []


def _nan_readings(bench):
    """From now on every reading of the detectors is NaN (the twin's fault)."""
    bench.engine.state.faults.add("nan_readback")
    return []


def _assert_safe(bench, docs, exit_statuses):
    engine = bench.engine
    assert engine.state.shutter_open is False
    assert bench.pump.shutter.get() == 0
    assert engine.state.fluence_uJ_cm2 == bench.config.pump.fluence_min_uJ_cm2
    starts = [d for n, d in docs if n == "start"]
    stops = [d for n, d in docs if n == "stop"]
    assert len(starts) == 1 and len(stops) == 1
    assert stops[0]["run_start"] == starts[0]["uid"]
    assert stops[0]["exit_status"] in exit_statuses


@pytest.mark.parametrize("name", sorted(QUICK))
@pytest.mark.parametrize("fault", ["device_error", "nan_reading"])
def test_a_plan_failing_after_the_shutter_opened_closes_it(RE, name, fault):
    bench = _bench()
    docs = collect(RE)
    opened = []
    inject = {"device_error": _fail_acquisitions, "nan_reading": _nan_readings}[fault]

    def inject_now():
        opened.append(bench.engine.state.shutter_open)
        return inject(bench)

    with pytest.raises(Exception) as err:
        RE(_after_shutter_opens(_plan(bench, name), bench, inject_now))
    assert opened == [True]  # the fault came while the shutter was open
    said = {"device_error": "did not complete (test)", "nan_reading": "no valid"}[fault]
    assert said in str(err.value)
    _assert_safe(bench, docs, {"fail"})


@pytest.mark.parametrize("name", sorted(QUICK))
def test_a_plan_aborted_after_the_shutter_opened_closes_it(RE, name):
    bench = _bench()
    docs = collect(RE)

    def pause():
        assert bench.engine.state.shutter_open
        return [Msg("pause", None, defer=False)]

    with pytest.raises(RunEngineInterrupted):
        RE(_after_shutter_opens(_plan(bench, name), bench, pause))
    assert RE.state == "paused"
    RE.abort(reason="operator abort (test)")
    _assert_safe(bench, docs, {"abort"})


def test_make_safe_reports_a_shutter_it_could_not_close():
    """The service's backstop never raises: it says what it could not do."""
    bench = _bench()
    bench.pump.shutter.put(1)

    def broken(value, **kwargs):
        st = DeviceStatus(bench.pump.shutter)
        st.set_exception(DeviceTimeoutError("shutter: no answer (test)"))
        return st

    bench.pump.shutter.set = broken
    report = bench.make_safe()
    assert not report.shutter_closed and not report.ok
    assert report.fluence_parked  # the fluence is still parked
    assert "could not close the shutter" in report.describe() and "no answer (test)" in report.describe()
    assert bench.engine.state.fluence_uJ_cm2 == 0.0
    assert math.isclose(bench.lab_time_s(), bench.engine.lab_time_s)


def test_a_shutter_closed_behind_the_plans_back_stops_the_measurement(RE):
    """Not the interlock (its permit stays on): the watchdog or an operator closed it. The plan does not
    open it again; after a grace for a late suspender it fails with what the bench says, the run closed."""
    from plans._suspenders import CLOSED_GRACE_S, ShutterClosedError

    bench = _bench()
    docs = collect(RE)

    def close_it():
        bench.engine.set_shutter(False)  # as the IOC's watchdog does
        return []

    with pytest.raises(ShutterClosedError, match=r"not by the interlock \(its permit stayed on\) for 3\.\d s") as err:
        RE(_after_shutter_opens(_plan(bench, "ase_fluence_scan"), bench, close_it))
    assert "stops rather than open it again" in str(err.value) and CLOSED_GRACE_S == 3.0
    assert bench.engine.state.shutter_open is False
    _assert_safe(bench, docs, {"fail"})
    events = [d for n, d in docs if n == "event"]
    assert all(ev["data"]["pump_shutter"] == 1 for ev in events)  # no reading with the shutter closed was kept


@pytest.mark.parametrize("name", sorted(LAMP_QUICK))
@pytest.mark.parametrize("fault", ["device_error", "nan_reading", "abort"])
def test_a_white_light_plan_failing_after_the_lamp_opened_closes_it(RE, name, fault):
    """The absorption plan never opens the pump; its lamp's shutter is closed however it ends, and the
    pump is left closed and parked as after every plan."""
    bench = _bench()
    docs = collect(RE)
    sample, kwargs = LAMP_QUICK[name]
    opened = []

    def inject():
        opened.append(bench.engine.state.lamp_shutter_open)
        if fault == "abort":
            return [Msg("pause", None, defer=False)]
        return {"device_error": _fail_acquisitions, "nan_reading": _nan_readings}[fault](bench)

    plan = _after_shutter_opens(PLANS[name].start(bench, sample, **kwargs), bench, inject, bench.lamp.shutter)
    if fault == "abort":
        with pytest.raises(RunEngineInterrupted):
            RE(plan)
        RE.abort(reason="operator abort (test)")
    else:
        with pytest.raises(Exception, match=r"did not complete|no valid"):
            RE(plan)
    assert opened == [True]  # the fault came while the lamp was on
    assert bench.engine.state.lamp_shutter_open is False and bench.lamp.shutter.get() == 0
    _assert_safe(bench, docs, {"abort"} if fault == "abort" else {"fail"})
