"""The bench's device contract, once for every way of reaching a bench.

Each test runs on three sides (ids end in ``[twin]``, ``[ca-caproto]``, ``[ca-pyepics]``): the twin's
in-process devices (``sim.devices.twin_bench_devices``, a fresh seeded bench per test) and the bench's
EPICS devices (``devices.connect_bench``) over Channel Access to the twin's IOC in a subprocess, under
each of ophyd's control layers. The devices are the same to a plan on every side: the same keys and
units in the documents, the same lab time charged, the same refusals before anything is sent, the same
errors for faults. What a test sees behind the devices -- what the hardware holds, the lab clock, the
faults -- goes through a ``Side``: the engine's state in process, the IOC's PVs over CA.

What only one side has is in its own module: the engine's behaviour in ``test_devices_inprocess.py``,
the IOC's records, statuses and reconnections in ``test_devices_epics.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import numpy as np
import pytest
from bluesky.utils import FailedStatus

from devices import Bench, LimitError, PutRefusedError, ReadbackError, connect_bench, load_bench
from harness.documents import events, one, run_and_collect
from harness.ioc import EXAMPLE_BENCH, bench_config, caget, caput, twin_ioc, use_control_layer
from sim.devices import twin_bench_devices

#: The sides, in the order they run: in process, then over CA under each control layer.
SIDES = ("twin", "ca-caproto", "ca-pyepics")
#: Lab seconds per wall second of the module's IOC.
IOC_TIME_SCALE = 1e4

#: What the hardware holds for each setpoint: the engine's state field, and the IOC's PV (relative to the prefix).
HELD = {
    "fluence": ("fluence_uJ_cm2", "PUMP:Fluence-SP"),
    "shutter": ("shutter_open", "PUMP:Shutter"),
    "slit": ("stripe_length_um", "SLIT:Length.VAL"),
    "exposure": ("exposure_s", "SPEC:Exposure"),
    "delay": ("ta_delay_ps", "TA:Delay-SP"),
    "pump_excitons": ("ta_pump_excitons", "TA:PumpExcitons-SP"),
    "angle": ("polarizer_deg", "POL:Angle-RB"),
    "sample": ("sample_id", "STAGE:Sample-RB"),
    "lamp_shutter": ("lamp_shutter_open", "ABS:LampShutter"),
    "sample_in": ("sample_in_beam", "ABS:SampleIn"),
}
#: The faults a test switches: the engine's fault name and the IOC's ``SIM:Fault-*`` PV.
FAULTS = {
    "nan_readback": "SIM:Fault-NaN",
    "saturated_detector": "SIM:Fault-Saturated",
}


@dataclass
class Side:
    """One bench under test and what is behind its devices.

    ``held(key)`` is what the hardware holds for a setpoint of ``HELD`` (the shutter as 0/1);
    ``lab_time_s()`` the bench's lab clock, s; ``snapshot()`` everything a refused setpoint must
    leave as it was; ``fault(name, on)`` switches a fault of ``FAULTS``; ``permit(on)`` the interlock's
    permit. ``clock_tol_s`` is the tolerance (s) of lab-time differences, ``rel`` the relative
    tolerance of numbers that cross the wire (0: exact in process).
    """

    name: str
    bench: Bench
    held: Callable[[str], object]
    lab_time_s: Callable[[], float]
    snapshot: Callable[[], object]
    fault: Callable[[str, bool], None]
    permit: Callable[[bool], None]
    clock_tol_s: float
    rel: float

    def approx(self, expected):
        """``expected`` as this side compares it: exactly in process, to ``rel`` over CA."""
        return pytest.approx(expected, rel=self.rel, abs=0.0)


def _twin_side(bench: Bench) -> Side:
    engine = bench.engine

    def held(key: str):
        value = getattr(engine.state, HELD[key][0])
        return int(value) if key in ("shutter", "lamp_shutter", "sample_in") else value

    def fault(name: str, on: bool) -> None:
        (engine.state.faults.add if on else engine.state.faults.discard)(name)

    def permit(on: bool) -> None:
        bench.interlock.permit.put(int(on))

    return Side(
        name="twin",
        bench=bench,
        held=held,
        lab_time_s=lambda: engine.lab_time_s,
        snapshot=lambda: (engine.state.__dict__.copy(), engine.lab_time_s),
        fault=fault,
        permit=permit,
        clock_tol_s=1e-9,
        rel=0.0,
    )


def _ca_side(name: str, ioc, bench: Bench) -> Side:
    def snapshot():
        pvs = [pv for _, pv in HELD.values()] + ["IL:Message.VAL$"]
        return {pv: caget(ioc.pv(pv)) for pv in pvs}

    return Side(
        name=name,
        bench=bench,
        held=lambda key: caget(ioc.pv(HELD[key][1])),
        lab_time_s=lambda: caget(ioc.pv("SIM:LabTime")),
        snapshot=snapshot,
        fault=lambda fault, on: caput(ioc.pv(FAULTS[fault]), int(on)),
        permit=lambda on: caput(ioc.pv("IL:Permit"), int(on)),
        clock_tol_s=1e-6,
        rel=1e-9,
    )


@pytest.fixture(scope="module")
def cfg():
    return load_bench(EXAMPLE_BENCH)


@pytest.fixture(scope="module")
def contract_ioc(ca_pool):
    """The module's IOC, under a PV prefix of its own (both control layers' benches connect to it)."""
    with twin_ioc(EXAMPLE_BENCH, time_scale=IOC_TIME_SCALE, prefix=f"C{os.getpid()}:") as ioc:
        yield ioc


@pytest.fixture(scope="module", params=SIDES)
def reach(request) -> Iterator[tuple | None]:
    """How the module's tests reach a bench: ``None`` in process, else ``(name, ioc, bench)`` over CA under
    the side's control layer (the bench made, and destroyed, under that layer)."""
    if request.param == "twin":
        yield None
        return
    layer = request.param.removeprefix("ca-")
    pool = request.getfixturevalue("ca_pool")
    ioc = request.getfixturevalue("contract_ioc")
    with use_control_layer(layer, pool):
        # short device timeouts, so that a fault fails fast
        cfg = bench_config(ioc.prefix, spectrometer={"acquire_timeout_s": 2.0}, stage={"move_timeout_s": 5.0})
        bench = connect_bench(cfg)
        assert bench.control_layer == layer
        try:
            yield request.param, ioc, bench
        finally:
            bench.destroy()


@pytest.fixture
def side(reach, cfg, presets) -> Iterator[Side]:
    """The test's bench: a fresh seeded twin in process, or the module's IOC, left as the next test expects."""
    if reach is None:
        yield _twin_side(twin_bench_devices(cfg, seed=11, presets=presets))
        return
    name, ioc, bench = reach
    yield _ca_side(name, ioc, bench)
    for pv in FAULTS.values():
        caput(ioc.pv(pv), 0)
    caput(ioc.pv("IL:Permit"), 1)


# ---------------------------------------------------------------- documents: keys, units, events
def test_count_gives_the_keys_units_and_readings_of_the_contract(RE, side, cfg):
    b = side.bench
    RE(bps.mv(b.pump.shutter, 1, b.pump.fluence, 800.0))
    docs = run_and_collect(RE, bp.count([b.spectrometer, b.pump], num=2))
    desc = one(docs, "descriptor")
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
    assert keys["spectrometer_spectrum"]["shape"] == [cfg.spectrometer.pixels] == [512]
    conf = desc["configuration"]["spectrometer"]["data_keys"]
    assert keys["spectrometer_exposure"]["units"] == "s"
    assert conf["spectrometer_wavelength"]["units"] == "nm"
    assert desc["configuration"]["pump"]["data_keys"]["pump_repetition_rate"]["units"] == "kHz"
    assert desc["hints"]["spectrometer"]["fields"] == ["spectrometer_exposure", "spectrometer_integrated"]
    evs = events(docs)
    assert len(evs) == 2
    for ev in evs:
        spec = np.asarray(ev["data"]["spectrometer_spectrum"])
        assert spec.shape == (cfg.spectrometer.pixels,)
        assert ev["data"]["spectrometer_integrated"] == pytest.approx(float(spec.sum()), rel=max(side.rel, 1e-12))
        assert ev["data"]["pump_shutter"] == 1 and ev["data"]["pump_pulse_energy"] > 0
    # two reads of a noisy camera differ
    assert evs[0]["data"]["spectrometer_integrated"] != evs[1]["data"]["spectrometer_integrated"]


# ---------------------------------------------------------------- the slit: positions, lab time
def test_slit_scan_reads_its_positions_and_costs_travel_and_exposures(RE, side, cfg):
    b = side.bench
    RE(bps.mv(b.pump.shutter, 1, b.pump.fluence, 600.0, b.spectrometer.exposure, 2.0, b.slit, 1000.0))
    assert side.held("slit") == 1000.0
    t0 = side.lab_time_s()
    docs = run_and_collect(RE, bp.scan([b.spectrometer], b.slit, 500.0, 2000.0, 4))
    keys = one(docs, "descriptor")["data_keys"]
    assert keys["slit"]["units"] == "um" and keys["slit_user_setpoint"]["units"] == "um"
    assert [e["data"]["slit"] for e in events(docs)] == side.approx([500.0, 1000.0, 1500.0, 2000.0])
    # travel 1000 -> 500 -> 2000 um at the bench file's speed, plus 4 exposures of 2 s
    travel = (500.0 + 1500.0) / cfg.slit.speed_um_per_s
    assert side.lab_time_s() - t0 == pytest.approx(travel + 4 * 2.0, abs=side.clock_tol_s)
    RE(bps.mv(b.slit, 1000.0))
    t0 = side.lab_time_s()
    RE(bps.mv(b.slit, 2500.0))
    assert b.slit.position == side.approx(2500.0)
    assert side.held("slit") == side.approx(2500.0)
    assert side.lab_time_s() - t0 == pytest.approx(1500.0 / cfg.slit.speed_um_per_s, abs=side.clock_tol_s)


# ---------------------------------------------------------------- refused before anything is sent
@pytest.mark.parametrize(
    ("attr", "bad"),
    [
        ("fluence", 3000.5),
        ("fluence", -1.0),
        ("fluence", math.nan),
        ("slit", 5.0),
        ("slit", 4000.1),
        ("slit", 4500.0),
        ("slit", math.nan),
        ("exposure", 0.0),
        ("exposure", 61.0),
        ("exposure", 120.0),
        ("delay", -200.0),
        ("delay", 1e5),
        ("delay", math.nan),
        ("angle", math.inf),
        ("pump_excitons", -0.1),
        ("pump_excitons", -2.0),
        ("shutter", 2),
        ("lamp_shutter", 2),
        ("sample_in", -1),
    ],
)
def test_bad_setpoints_are_limit_errors_and_never_sent(RE, side, attr, bad):
    b = side.bench
    target = {
        "fluence": b.pump.fluence,
        "slit": b.slit,
        "exposure": b.spectrometer.exposure,
        "delay": b.ta.delay,
        "angle": b.polarizer.angle,
        "pump_excitons": b.ta.pump_excitons,
        "shutter": b.pump.shutter,
        "lamp_shutter": b.lamp.shutter,
        "sample_in": b.lamp.sample_in,
    }[attr]
    before = side.snapshot()
    with pytest.raises(LimitError, match="nothing was sent"):
        RE(bps.mv(target, bad))
    if attr != "slit":  # a signal refuses a plain put too
        with pytest.raises(LimitError):
            target.put(bad)
    assert side.snapshot() == before


def test_fluence_limit_message_names_the_limit(side):
    with pytest.raises(LimitError, match=r"above the bench's limit of 3000 uJ/cm\^2"):
        side.bench.pump.fluence.set(3500.0)


# ---------------------------------------------------------------- the stage: samples, new films
def test_stage_mounts_samples_and_a_new_film_takes_hours(RE, side, cfg):
    stage = side.bench.stage
    stage.set("core-film").wait(10)
    t0 = side.lab_time_s()
    RE(bps.mv(stage, "cas-film"))
    assert side.held("sample") == "cas-film" and stage.doping.get() == pytest.approx(0.47)
    assert side.lab_time_s() - t0 == pytest.approx(cfg.twin.sample_change_s, abs=side.clock_tol_s)
    with pytest.raises(LimitError, match="not in the stage's library"):
        RE(bps.mv(stage, "no-such-film"))
    assert side.held("sample") == "cas-film"
    stage.set("cas-dfb").wait(10)
    assert side.held("sample") == "cas-dfb"
    assert stage.sample_kind.get() == "dfb" and stage.grating_period.get() == side.approx(860.0)
    t0 = side.lab_time_s()
    stage.request_film(2.0).wait(30)
    assert cfg.twin.new_film_hours == 6
    assert side.lab_time_s() - t0 == pytest.approx(6 * 3600.0, abs=side.clock_tol_s)
    new_id = stage.sample.get()
    assert new_id.startswith("film-") and new_id not in {e.id for e in cfg.stage.library}
    assert stage.library[new_id].doping == 2.0
    assert stage.doping.get() == pytest.approx(2.0)
    assert stage.sample_kind.get() == "film" and stage.grating_period.get() == 0.0
    # the new film is mountable like any other
    stage.set("cas-dfb").wait(10)
    assert stage.sample_kind.get() == "dfb" and stage.grating_period.get() == side.approx(860.0)
    stage.set(new_id).wait(10)
    assert stage.sample.get() == new_id
    with pytest.raises(LimitError, match="not in the stage's library"):
        stage.set("nope")


def test_film_doping_out_of_range_is_refused(side):
    stage = side.bench.stage
    with pytest.raises(LimitError):
        stage.request_film(-1.0)
    st = stage.request_film(39.0)  # valid for the schema, more than the preset's dots hold
    with pytest.raises(PutRefusedError, match="cannot be made"):
        st.wait(10)
    assert isinstance(st.exception(), PutRefusedError)


# ---------------------------------------------------------------- the white light (absorption)
def test_white_light_reaches_the_spectrometer_through_the_film_or_beside_it(RE, side, cfg, presets):
    b = side.bench
    mounted, exposure = b.stage.sample.get(), b.spectrometer.exposure.get()
    b.stage.set("cas_doped-film").wait(10)
    RE(bps.mv(b.pump.shutter, 0, b.lamp.shutter, 0, b.lamp.sample_in, 1, b.spectrometer.exposure, 1.0))
    docs = run_and_collect(RE, bp.count([b.spectrometer, b.lamp]))
    keys = one(docs, "descriptor")["data_keys"]
    assert {"lamp_shutter", "lamp_ok", "lamp_sample_in", "lamp_neutral_absorbance"} <= set(keys)
    assert keys["lamp_neutral_absorbance"]["units"] == keys["lamp_neutral_1s_absorbance"]["units"] == "OD"
    assert keys["lamp_neutral_absorbance"]["shape"] == [cfg.spectrometer.pixels]
    (dark,) = events(docs)
    assert dark["data"]["lamp_shutter"] == 0 and dark["data"]["lamp_ok"] == 1
    # the neutral reference of the mounted film's dots: its 1S peak at the preset's (1592 nm)
    lam = np.asarray(b.spectrometer.wavelength.get())
    one_s = np.asarray(dark["data"]["lamp_neutral_1s_absorbance"])
    peak_nm = presets.get("cas_doped").spectra.abs_peak_nm
    assert lam[int(np.argmax(one_s))] == pytest.approx(peak_nm, abs=1.5)
    assert np.all(np.asarray(dark["data"]["lamp_neutral_absorbance"]) >= one_s)
    # the film out of the beam costs the bench file's move time; the reference is bright
    t0 = side.lab_time_s()
    RE(bps.mv(b.lamp.sample_in, 0, b.lamp.shutter, 1))
    assert side.lab_time_s() - t0 == pytest.approx(cfg.absorption.sample_in_move_s, abs=side.clock_tol_s)
    assert side.held("sample_in") == 0 and side.held("lamp_shutter") == 1
    (ref,) = events(run_and_collect(RE, bp.count([b.spectrometer, b.lamp])))
    RE(bps.mv(b.lamp.sample_in, 1))
    (film,) = events(run_and_collect(RE, bp.count([b.spectrometer, b.lamp])))
    ref_counts = np.asarray(ref["data"]["spectrometer_spectrum"])
    film_counts = np.asarray(film["data"]["spectrometer_spectrum"])
    assert np.median(ref_counts) > 1e5 > 100 * abs(np.median(np.asarray(dark["data"]["spectrometer_spectrum"])))
    absorbance = -np.log10(film_counts / ref_counts)
    assert 0.005 < float(np.max(absorbance)) < 0.1  # a 160 nm film of these dots: a few 10 mOD
    RE(bps.mv(b.lamp.shutter, 0))
    assert side.held("lamp_shutter") == 0
    RE(bps.mv(b.stage, mounted, b.spectrometer.exposure, exposure))  # the module's IOC as the next test expects


# ---------------------------------------------------------------- TA and polariser
def test_ta_scan_and_polarizer(RE, side):
    b = side.bench
    docs = run_and_collect(RE, bp.scan([b.ta], b.ta.delay, 0.0, 200.0, 3))
    keys = one(docs, "descriptor")["data_keys"]
    assert keys["ta_delay"]["units"] == "ps" and keys["ta_signal"]["units"] == "1"
    signals = [e["data"]["ta_signal"] for e in events(docs)]
    assert len(signals) == 3 and all(math.isfinite(s) for s in signals)
    assert abs(signals[0]) > 0.01  # bleach at zero delay
    RE(bps.mv(b.polarizer.angle, 45.0))
    assert side.held("angle") == 45.0
    assert b.polarizer.describe()["polarizer_angle"]["units"] == "deg"


# ---------------------------------------------------------------- the interlock
def test_interlock_refusal_is_a_failed_status_with_the_reason(RE, side):
    b = side.bench
    RE(bps.mv(b.pump.fluence, 100.0))
    side.permit(False)
    with pytest.raises(FailedStatus) as err:
        RE(bps.mv(b.pump.fluence, 200.0))
    assert isinstance(err.value.__cause__, PutRefusedError)
    assert "interlock permit is off" in str(err.value.__cause__)
    with pytest.raises(PutRefusedError, match="shutter") as err:
        b.pump.shutter.put(1)
    assert "interlock" in str(err.value)
    assert side.held("fluence") == 100.0
    assert "interlock" in b.interlock.message.get()


# ---------------------------------------------------------------- faults
def test_nan_readbacks_fail_the_trigger_and_the_read(RE, side):
    b = side.bench
    RE(bps.mv(b.pump.shutter, 1, b.pump.fluence, 500.0))
    side.fault("nan_readback", True)
    assert isinstance(b.spectrometer.trigger().exception(5), ReadbackError)
    with pytest.raises(FailedStatus) as err:
        RE(bp.count([b.spectrometer]))
    assert isinstance(err.value.__cause__, ReadbackError)
    assert "spectrometer_integrated" in str(err.value.__cause__)
    with pytest.raises(ReadbackError):
        b.spectrometer.read()
    with pytest.raises(ReadbackError, match="pump_fluence"):
        b.pump.read()
    assert isinstance(b.ta.trigger().exception(5), ReadbackError)
    side.fault("nan_readback", False)
    RE(bp.count([b.spectrometer]))


def test_saturated_detector_is_data_not_an_error(RE, side):
    b = side.bench
    side.fault("saturated_detector", True)
    (ev,) = events(run_and_collect(RE, bp.count([b.spectrometer])))
    assert ev["data"]["spectrometer_saturated"] == 1
    side.fault("saturated_detector", False)
    (ev,) = events(run_and_collect(RE, bp.count([b.spectrometer])))
    assert ev["data"]["spectrometer_saturated"] == 0
