"""The twin bench as in-process ophyd devices: plans, units, lab clock, damage, soft limits, faults."""

from __future__ import annotations

import math
import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky import RunEngine
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
from sim.devices import twin_bench_devices

from .conftest import REPO

BENCH_FILE = REPO / "examples" / "twin_bench.toml"


@pytest.fixture(scope="module")
def cfg():
    return load_bench(BENCH_FILE)


@pytest.fixture
def bench(cfg, presets):
    return twin_bench_devices(cfg, seed=11, presets=presets)


@pytest.fixture
def RE():
    return RunEngine({})


def _collect(RE, plan):
    docs: list[tuple[str, dict]] = []
    RE(plan, lambda name, doc: docs.append((name, doc)))
    return docs


def _one(docs, name):
    found = [d for n, d in docs if n == name]
    assert len(found) == 1, f"expected one {name}, got {len(found)}"
    return found[0]


def _events(docs):
    return [d for n, d in docs if n == "event"]


# ---------------------------------------------------------------- the container and its interface
def test_twin_devices_are_a_bench_with_the_engine(bench, cfg):
    assert isinstance(bench, Bench)
    assert bench.engine is not None and bench.engine.config is cfg
    assert set(bench.devices()) == {"pump", "slit", "stage", "spectrometer", "polarizer", "ta", "interlock"}
    assert bench.stage.library.keys() == {e.id for e in cfg.stage.library}


@pytest.mark.parametrize(
    ("epics_cls", "twin_name"),
    [
        (devices.PumpLaser, "pump"),
        (devices.SampleStage, "stage"),
        (devices.Spectrometer, "spectrometer"),
        (devices.Polarizer, "polarizer"),
        (devices.TransientAbsorption, "ta"),
        (devices.Interlock, "interlock"),
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


def test_count_events_and_units(RE, bench, cfg):
    RE(bps.mv(bench.pump.shutter, 1, bench.pump.fluence, 800.0))
    docs = _collect(RE, bp.count([bench.spectrometer, bench.pump], num=2))
    desc = _one(docs, "descriptor")
    keys = desc["data_keys"]
    assert set(keys) == {
        "spectrometer_spectrum",
        "spectrometer_exposure",
        "spectrometer_integrated",
        "spectrometer_peak_wavelength",
        "spectrometer_fwhm",
        "spectrometer_saturated",
        "pump_fluence",
        "pump_shutter",
        "pump_pulse_energy",
        "pump_power_ok",
    }
    units = {k: v.get("units") for k, v in keys.items()}
    assert units["spectrometer_spectrum"] == "counts"
    assert units["spectrometer_integrated"] == "counts"
    assert units["spectrometer_peak_wavelength"] == "nm"
    assert units["spectrometer_fwhm"] == "nm"
    assert units["pump_fluence"] == "uJ/cm^2"
    assert units["pump_pulse_energy"] == "uJ"
    assert keys["spectrometer_spectrum"]["shape"] == [cfg.spectrometer.pixels]
    conf = desc["configuration"]["spectrometer"]["data_keys"]
    assert keys["spectrometer_exposure"]["units"] == "s"
    assert conf["spectrometer_wavelength"]["units"] == "nm"
    assert desc["configuration"]["pump"]["data_keys"]["pump_repetition_rate"]["units"] == "kHz"
    assert desc["hints"]["spectrometer"]["fields"] == ["spectrometer_exposure", "spectrometer_integrated"]
    events = _events(docs)
    assert len(events) == 2
    for ev in events:
        spec = np.asarray(ev["data"]["spectrometer_spectrum"])
        assert spec.shape == (cfg.spectrometer.pixels,)
        assert ev["data"]["spectrometer_integrated"] == pytest.approx(float(spec.sum()), rel=1e-12)
        assert ev["data"]["pump_shutter"] == 1 and ev["data"]["pump_pulse_energy"] > 0
    # two reads of a noisy camera differ
    assert events[0]["data"]["spectrometer_integrated"] != events[1]["data"]["spectrometer_integrated"]


def test_scan_over_fluence(RE, bench):
    RE(bps.mv(bench.pump.shutter, 1))
    docs = _collect(RE, bp.scan([bench.spectrometer], bench.pump.fluence, 200.0, 2000.0, 4))
    desc = _one(docs, "descriptor")
    assert desc["data_keys"]["pump_fluence"]["units"] == "uJ/cm^2"
    assert desc["data_keys"]["spectrometer_integrated"]["units"] == "counts"
    events = _events(docs)
    sent = [200.0, 800.0, 1400.0, 2000.0]
    assert [e["data"]["pump_fluence"] for e in events] == pytest.approx(sent, rel=0.02)  # power meter: drift
    integrated = [e["data"]["spectrometer_integrated"] for e in events]
    assert min(integrated[1:]) > 10 * integrated[0]  # above threshold the stripe lases (and saturates)
    assert bench.engine.state.fluence_uJ_cm2 == 2000.0


def test_scan_over_slit_keys_units_and_lab_time(RE, bench, cfg):
    eng = bench.engine
    RE(bps.mv(bench.pump.shutter, 1, bench.pump.fluence, 600.0, bench.spectrometer.exposure, 2.0))
    t0 = eng.lab_time_s
    assert eng.state.stripe_length_um == 1000.0
    docs = _collect(RE, bp.scan([bench.spectrometer], bench.slit, 500.0, 2000.0, 4))
    keys = _one(docs, "descriptor")["data_keys"]
    assert keys["slit"]["units"] == "um" and keys["slit_user_setpoint"]["units"] == "um"
    events = _events(docs)
    assert [e["data"]["slit"] for e in events] == [500.0, 1000.0, 1500.0, 2000.0]
    # travel 1000 -> 500 -> 2000 um at the bench file's speed, plus 4 exposures of 2 s
    travel = (500.0 + 1500.0) / cfg.slit.speed_um_per_s
    assert eng.lab_time_s - t0 == pytest.approx(travel + 4 * 2.0, abs=1e-9)


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


def test_film_request_takes_hours_of_lab_time(bench, cfg):
    eng, stage = bench.engine, bench.stage
    t_lab, t_wall = eng.lab_time_s, time.perf_counter()
    st = stage.request_film(3.2)
    assert st.done and st.success
    assert time.perf_counter() - t_wall < 2.0
    assert eng.lab_time_s - t_lab == pytest.approx(cfg.twin.new_film_hours * 3600.0)
    new_id = stage.sample.get()
    assert new_id not in {e.id for e in cfg.stage.library}
    assert stage.library[new_id].doping == pytest.approx(3.2)
    assert stage.doping.get() == pytest.approx(3.2)
    assert stage.sample_kind.get() == "film" and stage.grating_period.get() == 0.0
    # the new film is mountable like any other
    stage.set("cas-dfb").wait()
    assert stage.sample_kind.get() == "dfb" and stage.grating_period.get() == 860.0
    stage.set(new_id).wait()
    assert stage.sample.get() == new_id


def test_sample_change_costs_lab_time_and_unknown_samples_are_refused(RE, bench, cfg):
    eng = bench.engine
    t0 = eng.lab_time_s
    RE(bps.mv(bench.stage, "cas-film"))
    assert eng.state.sample_id == "cas-film" and bench.stage.doping.get() == pytest.approx(0.47)
    assert eng.lab_time_s - t0 == pytest.approx(cfg.twin.sample_change_s)
    with pytest.raises(LimitError, match="not in the stage's library"):
        RE(bps.mv(bench.stage, "no-such-film"))
    assert eng.state.sample_id == "cas-film"


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


def test_fluence_limit_message_names_the_limit(bench):
    with pytest.raises(LimitError, match=r"above the bench's limit of 3000 uJ/cm\^2"):
        bench.pump.fluence.set(3500.0)


def test_limit_comes_from_the_bench_file(RE, presets):
    data = {"bench": {"name": "low", "fluence_limit_uJ_cm2": 250.0}, "stage": {"library": [_film()]}}
    low = twin_bench_devices(parse_bench(data), presets=presets)
    RE(bps.mv(low.pump.fluence, 250.0))
    with pytest.raises(LimitError, match="limit of 250"):
        RE(bps.mv(low.pump.fluence, 251.0))
    assert low.engine.state.fluence_uJ_cm2 == 250.0


def _film():
    return {"id": "f", "kind": "film", "doping": 0.5, "preset": "cas"}


def test_interlock_refusal_is_a_failed_status_with_the_reason(RE, bench):
    RE(bps.mv(bench.pump.fluence, 100.0))
    bench.interlock.permit.put(0)
    with pytest.raises(FailedStatus) as err:
        RE(bps.mv(bench.pump.fluence, 200.0))
    assert isinstance(err.value.__cause__, PutRefusedError)
    assert "interlock permit is off" in str(err.value.__cause__)
    with pytest.raises(PutRefusedError, match="interlock"):
        bench.pump.shutter.put(1)
    assert bench.engine.state.fluence_uJ_cm2 == 100.0
    assert "interlock" in bench.interlock.message.get()


@pytest.mark.parametrize(
    ("attr", "bad"),
    [
        ("slit", 5.0),
        ("slit", 4000.1),
        ("slit", math.nan),
        ("exposure", 0.0),
        ("exposure", 61.0),
        ("delay", -200.0),
        ("delay", math.nan),
        ("angle", math.inf),
        ("pump_excitons", -0.1),
        ("shutter", 2),
    ],
)
def test_bad_setpoints_raise_limit_errors_and_change_nothing(RE, bench, attr, bad):
    target = {
        "slit": bench.slit,
        "exposure": bench.spectrometer.exposure,
        "delay": bench.ta.delay,
        "angle": bench.polarizer.angle,
        "pump_excitons": bench.ta.pump_excitons,
        "shutter": bench.pump.shutter,
    }[attr]
    before = bench.engine.state.__dict__.copy()
    clock = bench.engine.lab_time_s
    with pytest.raises(LimitError, match="nothing was sent"):
        RE(bps.mv(target, bad))
    assert bench.engine.state.__dict__ == before and bench.engine.lab_time_s == clock


def test_film_doping_out_of_range(bench):
    with pytest.raises(LimitError):
        bench.stage.request_film(-1.0)
    st = bench.stage.request_film(39.0)  # valid for the schema, more than the preset's dots hold
    assert st.done and isinstance(st.exception(), PutRefusedError)
    assert "cannot be made" in str(st.exception())


# ---------------------------------------------------------------- TA and polariser
def test_ta_and_polarizer(RE, bench):
    docs = _collect(RE, bp.scan([bench.ta], bench.ta.delay, 0.0, 200.0, 3))
    keys = _one(docs, "descriptor")["data_keys"]
    assert keys["ta_delay"]["units"] == "ps" and keys["ta_signal"]["units"] == "1"
    signals = [e["data"]["ta_signal"] for e in _events(docs)]
    assert len(signals) == 3 and all(math.isfinite(s) for s in signals)
    assert abs(signals[0]) > 0.01  # bleach at zero delay
    RE(bps.mv(bench.polarizer.angle, 45.0))
    assert bench.engine.state.polarizer_deg == 45.0
    assert bench.polarizer.describe()["polarizer_angle"]["units"] == "deg"


# ---------------------------------------------------------------- faults
def test_nan_readback_fails_the_trigger(RE, bench):
    bench.engine.state.faults.add("nan_readback")
    st = bench.spectrometer.trigger()
    assert isinstance(st.exception(), ReadbackError)
    with pytest.raises(FailedStatus) as err:
        RE(bp.count([bench.spectrometer]))
    assert isinstance(err.value.__cause__, ReadbackError)
    assert "spectrometer_integrated" in str(err.value.__cause__)
    with pytest.raises(ReadbackError):
        bench.spectrometer.read()
    assert isinstance(bench.ta.trigger().exception(), ReadbackError)


def test_saturated_detector_is_data_not_an_error(RE, bench):
    bench.engine.state.faults.add("saturated_detector")
    docs = _collect(RE, bp.count([bench.spectrometer]))
    (ev,) = _events(docs)
    assert ev["data"]["spectrometer_saturated"] == 1
    bench.engine.state.faults.clear()
    docs = _collect(RE, bp.count([bench.spectrometer]))
    assert _events(docs)[0]["data"]["spectrometer_saturated"] == 0


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
