"""The twin bench as in-process ophyd devices: what only the twin has, behind the device contract.

The contract the twin's devices share with the EPICS devices (keys, units, lab time, refusals,
faults) is ``tests/test_device_contract.py``; here are the engine behind the devices (its state,
drift, damage, determinism), the twin's lab clock without wall time, and the components the twin's
devices share with the EPICS classes.
"""

from __future__ import annotations

import math
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky.utils import FailedStatus

import devices
from devices import (
    Bench,
    DeviceTimeoutError,
    LimitError,
    PutRefusedError,
    ReadbackError,
    load_bench,
    parse_bench,
)
from harness.documents import events, one, run_and_collect
from sim.devices import twin_bench_devices

from .conftest import REPO

BENCH_FILE = REPO / "examples" / "twin_bench.toml"


@pytest.fixture(scope="module")
def cfg():
    return load_bench(BENCH_FILE)


@pytest.fixture
def bench(cfg, presets):
    return twin_bench_devices(cfg, seed=11, presets=presets)


# ---------------------------------------------------------------- the container and its interface
def test_twin_devices_are_a_bench_with_the_engine(bench, cfg):
    assert isinstance(bench, Bench)
    assert bench.engine is not None and bench.engine.config is cfg
    assert set(bench.devices()) == {"pump", "slit", "stage", "spectrometer", "polarizer", "ta", "interlock", "lamp"}
    assert bench.stage.library.keys() == {e.id for e in cfg.stage.library}
    assert bench.engine.state.stripe_length_um == 1000.0  # the slit's start (where the contract's scans start)


@pytest.mark.parametrize(
    ("epics_cls", "twin_name"),
    [
        (devices.PumpLaser, "pump"),
        (devices.SampleStage, "stage"),
        (devices.Spectrometer, "spectrometer"),
        (devices.Polarizer, "polarizer"),
        (devices.TransientAbsorption, "ta"),
        (devices.Interlock, "interlock"),
        (devices.WhiteLight, "lamp"),
    ],
)
def test_twin_devices_have_the_epics_components_and_kinds(bench, epics_cls, twin_name):
    twin = getattr(bench, twin_name)
    assert set(twin.component_names) == set(epics_cls.component_names)
    for attr in epics_cls.component_names:
        assert getattr(twin, attr).kind == getattr(epics_cls, attr).kind, attr


def test_twin_slit_reads_like_an_epics_motor(bench):
    from ophyd import EpicsMotor

    slit = bench.slit
    assert set(EpicsMotor.component_names) >= set(slit.component_names)
    assert sorted(slit.read()) == ["slit", "slit_user_setpoint"]
    expected_config = {f"slit_{a}" for a in ("user_offset", "user_offset_dir", "velocity", "acceleration", "motor_egu")}
    assert set(slit.read_configuration()) == expected_config
    assert slit.egu == "um" and slit.limits == (10.0, 4000.0)


# ---------------------------------------------------------------- plans, keys, units
def test_mv_fluence_and_slit_reach_the_engine(RE, bench):
    eng = bench.engine
    RE(bps.mv(bench.pump.fluence, 450.0, bench.slit, 1500.0))
    assert eng.state.fluence_uJ_cm2 == 450.0
    assert eng.state.stripe_length_um == 1500.0
    assert bench.slit.position == 1500.0
    assert bench.pump.fluence.setpoint == 450.0
    drift = float(eng.drift.factor(eng.lab_time_s))
    assert bench.pump.fluence.get() == pytest.approx(450.0 * drift, rel=1e-12)


def test_scan_over_fluence(RE, bench):
    RE(bps.mv(bench.pump.shutter, 1))
    docs = run_and_collect(RE, bp.scan([bench.spectrometer], bench.pump.fluence, 200.0, 2000.0, 4))
    desc = one(docs, "descriptor")
    assert desc["data_keys"]["pump_fluence"]["units"] == "uJ/cm^2"
    assert desc["data_keys"]["spectrometer_integrated"]["units"] == "counts"
    evs = events(docs)
    sent = [200.0, 800.0, 1400.0, 2000.0]
    assert [e["data"]["pump_fluence"] for e in evs] == pytest.approx(sent, rel=0.02)  # power meter: drift
    integrated = [e["data"]["spectrometer_integrated"] for e in evs]
    assert min(integrated[1:]) > 10 * integrated[0]  # above threshold the stripe lases (and saturates)
    assert bench.engine.state.fluence_uJ_cm2 == 2000.0


def test_lab_clock_runs_without_wall_time(RE, bench):
    eng = bench.engine
    RE(bps.mv(bench.spectrometer.exposure, 60.0))
    t_lab, t_wall = eng.lab_time_s, time.perf_counter()
    RE(bp.count([bench.spectrometer], num=5))
    RE(bps.mv(bench.slit, 4000.0))
    wall = time.perf_counter() - t_wall
    lab = eng.lab_time_s - t_lab
    assert lab == pytest.approx(5 * 60.0 + 3000.0 / 500.0, abs=1e-9)
    assert wall < 5.0 and wall < lab / 50


def test_film_request_is_done_at_once_and_costs_only_lab_time(bench, cfg):
    """In process a new film's hours pass on the lab clock alone: the status is done when returned
    (a refused request too)."""
    eng, stage = bench.engine, bench.stage
    t_lab, t_wall = eng.lab_time_s, time.perf_counter()
    st = stage.request_film(3.2)
    assert st.done and st.success
    assert time.perf_counter() - t_wall < 2.0
    assert eng.lab_time_s - t_lab == pytest.approx(cfg.twin.new_film_hours * 3600.0)
    new_id = stage.sample.get()
    assert stage.library[new_id].doping == pytest.approx(3.2)
    assert stage.doping.get() == pytest.approx(3.2)
    refused = stage.request_film(39.0)  # the schema allows it, the preset's dots cannot hold it
    assert refused.done and isinstance(refused.exception(), PutRefusedError)
    assert "cannot be made" in str(refused.exception())


def test_damage_persists_across_sample_changes(bench):
    eng = bench.engine

    def burn_and_measure(shutter: int) -> float:
        b = twin_bench_devices(bench.config, seed=5, presets=eng.presets)
        b.stage.set("cas_doped-film").wait()
        b.spectrometer.exposure.put(60.0)
        b.pump.shutter.put(shutter)
        b.pump.fluence.put(3000.0)
        for _ in range(10):
            b.spectrometer.trigger().wait()
        b.stage.set("cas-film").wait()  # take it off the beam and back
        b.stage.set("cas_doped-film").wait()
        b.pump.shutter.put(1)
        b.pump.fluence.put(400.0)
        b.spectrometer.exposure.put(1.0)
        vals = []
        for _ in range(3):
            b.spectrometer.trigger().wait()
            vals.append(b.spectrometer.integrated.get())
        return float(np.mean(vals)), b.engine.state.doses["cas_doped-film"]

    burnt, dose_burnt = burn_and_measure(1)
    fresh, dose_fresh = burn_and_measure(0)
    assert dose_burnt > 0.05 > dose_fresh
    assert burnt < 0.95 * fresh


# ---------------------------------------------------------------- soft limits and refusals
@pytest.mark.parametrize("bad", [3000.5, 1e6, -1.0, math.nan, math.inf])
def test_fluence_soft_limit_stops_before_the_engine(RE, bench, monkeypatch, bad):
    eng = bench.engine
    RE(bps.mv(bench.pump.fluence, 100.0))
    calls = []
    monkeypatch.setattr(eng, "set_fluence", lambda f: calls.append(f))
    with pytest.raises(LimitError) as err:
        RE(bps.mv(bench.pump.fluence, bad))
    assert "nothing was sent" in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, devices.LimitError)
    with pytest.raises(LimitError):
        bench.pump.fluence.put(bad)
    assert calls == []
    assert eng.state.fluence_uJ_cm2 == 100.0 and eng.state.message == "ok"


def test_limit_comes_from_the_bench_file(RE, presets):
    data = {"bench": {"name": "low", "fluence_limit_uJ_cm2": 250.0}, "stage": {"library": [_film()]}}
    low = twin_bench_devices(parse_bench(data), presets=presets)
    RE(bps.mv(low.pump.fluence, 250.0))
    with pytest.raises(LimitError, match="limit of 250"):
        RE(bps.mv(low.pump.fluence, 251.0))
    assert low.engine.state.fluence_uJ_cm2 == 250.0


def _film():
    return {"id": "f", "kind": "film", "doping": 0.5, "preset": "cas"}


# ---------------------------------------------------------------- faults
def test_nan_readback_fails_the_trigger_at_once(bench):
    bench.engine.state.faults.add("nan_readback")
    st = bench.spectrometer.trigger()
    assert st.done and isinstance(st.exception(), ReadbackError)
    assert isinstance(bench.ta.trigger().exception(), ReadbackError)


def test_stuck_motor_fails_the_move_with_a_timeout_error(RE, bench):
    bench.engine.state.faults.add("stuck_motor")
    with pytest.raises(FailedStatus) as err:
        RE(bps.mv(bench.slit, 2000.0))
    assert isinstance(err.value.__cause__, DeviceTimeoutError)
    assert "stuck" in str(err.value.__cause__)
    assert bench.engine.state.stripe_length_um == 1000.0 and bench.slit.position == 1000.0


# ---------------------------------------------------------------- determinism
def _sequence(b: Bench) -> list[float]:
    b.pump.shutter.put(1)
    out = []
    for f, length in [(300.0, 800.0), (900.0, 1200.0), (1500.0, 2500.0)]:
        b.pump.fluence.put(f)
        b.slit.move(length).wait()
        b.spectrometer.trigger().wait()
        out.append(b.spectrometer.integrated.get())
    return out


def test_same_seed_same_numbers(cfg, presets):
    a = _sequence(twin_bench_devices(cfg, seed=7, presets=presets))
    b = _sequence(twin_bench_devices(cfg, seed=7, presets=presets))
    c = _sequence(twin_bench_devices(cfg, seed=8, presets=presets))
    assert a == b
    assert a != c
