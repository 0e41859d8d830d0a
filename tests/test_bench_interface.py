"""The bench's public interface, the same on the twin and on EPICS: plans and the service never reach into the twin.

``describe_sample``, ``excitons_per_uJ_cm2``, ``clock`` / ``lab_time_s`` /
``lab_clock_source``, ``restore_lab_time``, ``stage.add_film`` and ``status``. The
EPICS answers are checked on a bench connected to the twin's IOC, and on a plain
``devices.Bench`` (no engine) holding the twin's devices, which answers as a bench does.
"""

from __future__ import annotations

import math
import time
import tomllib

import bluesky.plan_stubs as bps
import pytest
from bluesky import RunEngine
from ophyd.utils import ReadOnlyError

from core.errors import ParameterError
from devices import Bench, LabClock, parse_bench
from harness.ioc import EXAMPLE_BENCH, caget, twin_ioc
from sim.devices import TwinBenchDevices, twin_bench_devices

from .conftest import REPO
from .test_devices_epics import bench_config, connect

BENCH_FILE = REPO / "examples" / "twin_bench.toml"
FILM = "cas_doped-film"
DFB = "cas-dfb"


def _cfg(**entry_updates):
    """The example bench file; ``entry_updates`` (id -> fields) change library entries."""
    data = tomllib.loads(BENCH_FILE.read_text())
    for entry in data["stage"]["library"]:
        entry.update(entry_updates.get(entry["id"], {}))
    return parse_bench(data, f"{BENCH_FILE} (test)")


@pytest.fixture
def twin(presets):
    return twin_bench_devices(_cfg(), seed=4, presets=presets)


def _as_bench(twin: Bench) -> Bench:
    """The twin's devices in a plain ``devices.Bench``: no engine and the wall clock, as ``connect_bench``
    builds one for a bench file without ``lab_clock_pv``."""
    return Bench(config=twin.config, **twin.devices())


# ---------------------------------------------------------------- samples
def test_describe_sample_on_the_twin_has_its_parameters(twin):
    md = twin.describe_sample(DFB)
    assert md["sample_id"] == DFB and md["sample_kind"] == "dfb" and md["devices"] == "twin"
    assert md["bench_name"] == twin.config.bench.name
    assert md["fluence_limit_uJ_cm2"] == twin.config.bench.fluence_limit_uJ_cm2
    entry = twin.config.library_entry(DFB)
    assert md["doping"] == entry.doping
    assert md["twin"]["seed"] == 4 and md["twin"]["preset"] == entry.preset
    assert md["twin"]["sample"] == twin.engine.sample_for(entry).model_dump(mode="json")
    assert md["twin"]["sample"]["dfb"]["grating_period_nm"] == pytest.approx(entry.grating_period_nm)
    assert md["twin"]["setup"] == twin.engine.presets.setup.model_dump(mode="json")


def test_describe_sample_on_a_bench_is_the_library_entry(twin):
    bench = _as_bench(twin)
    md = bench.describe_sample(FILM)
    entry = twin.config.library_entry(FILM)
    assert md == {
        "sample_id": FILM,
        "sample_kind": entry.kind,
        "doping": entry.doping,
        "bench_name": twin.config.bench.name,
        "fluence_limit_uJ_cm2": twin.config.bench.fluence_limit_uJ_cm2,
        "devices": "bench",
    }
    with pytest.raises(ValueError, match="not in the bench's library"):
        bench.describe_sample("no-such-film")


def test_sample_for_is_the_preset_with_the_entrys_doping(twin):
    entry = twin.config.library_entry(FILM)
    sample = twin.engine.sample_for(entry)
    assert sample.doping_ne == entry.doping
    assert sample == twin.engine.presets.get(entry.preset).model_copy(update={"doping_ne": entry.doping})


def test_excitons_per_uJ_cm2_from_the_twin_or_the_bench_file(presets):
    twin = twin_bench_devices(_cfg(**{FILM: {"excitons_per_uJ_cm2": 0.02}}), seed=4, presets=presets)
    # the twin answers with its own film, whatever the bench file says
    assert twin.excitons_per_uJ_cm2(FILM) == pytest.approx(twin.engine.excitons_per_uJ_cm2(FILM))
    assert twin.excitons_per_uJ_cm2(FILM) != pytest.approx(0.02)
    bench = _as_bench(twin)
    assert bench.excitons_per_uJ_cm2(FILM) == 0.02
    assert bench.excitons_per_uJ_cm2(DFB) is None  # not given: pump_probe then needs it as an argument
    for either in (twin, bench):
        with pytest.raises(ValueError, match="not in the bench's library"):
            either.excitons_per_uJ_cm2("no-such-film")
    with pytest.raises(ValueError, match="greater than 0"):
        _cfg(**{FILM: {"excitons_per_uJ_cm2": 0.0}})


# ---------------------------------------------------------------- lab clock
def test_the_twins_clock_is_a_read_only_signal_of_its_lab_time(twin):
    assert isinstance(twin.clock, LabClock)
    assert twin.lab_clock_source == "the twin's simulated lab clock"
    assert twin.lab_time_s() == 0.0
    twin.spectrometer.exposure.put(2.5)
    twin.spectrometer.trigger()
    assert twin.lab_time_s() == pytest.approx(2.5) == twin.engine.lab_time_s
    assert twin.clock.describe()["lab_clock"]["units"] == "s"
    with pytest.raises(ReadOnlyError):
        twin.clock.put(0.0)
    # read in a plan as any signal
    got = []

    def plan():
        got.append((yield from bps.rd(twin.clock)))

    RunEngine({})(plan())
    assert got == [pytest.approx(2.5)]


def test_a_bench_without_a_clock_pv_reads_the_wall_clock(twin):
    bench = _as_bench(twin)
    assert isinstance(bench.clock, LabClock) and bench.lab_clock_source == "the wall clock"
    before = time.time()
    assert before <= bench.lab_time_s() <= time.time()
    with pytest.raises(ReadOnlyError):
        bench.clock.set(0.0)


def test_restore_lab_time_sets_the_twins_clock_only(twin):
    twin.restore_lab_time(7200.0)
    assert twin.lab_time_s() == 7200.0 == twin.engine.lab_time_s
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ParameterError, match="finite and >= 0"):
            twin.restore_lab_time(bad)
    assert twin.lab_time_s() == 7200.0
    bench = _as_bench(twin)
    bench.restore_lab_time(1.0)  # the lab's clock is the lab's
    assert bench.lab_time_s() > 1e9


# ---------------------------------------------------------------- films of an earlier session
def test_add_film_puts_a_film_back_in_the_twins_library(twin):
    entry = twin.config.new_film_entry("film-003-ne1.50", 1.5)
    assert entry.preset is None
    twin.stage.add_film(entry)
    assert twin.stage.library["film-003-ne1.50"] is entry
    kept = twin.engine.library["film-003-ne1.50"]
    assert kept.preset == twin.config.twin.new_film_preset and kept.doping == 1.5
    twin.stage.set("film-003-ne1.50").wait(1)
    assert twin.stage.sample.get() == "film-003-ne1.50" and twin.stage.doping.get() == 1.5
    md = twin.describe_sample("film-003-ne1.50")
    assert md["doping"] == 1.5 and md["twin"]["preset"] == twin.config.twin.new_film_preset
    assert md["twin"]["sample"]["doping_ne"] == 1.5
    with pytest.raises(TypeError, match="LibraryEntry"):
        twin.stage.add_film({"id": "film-004", "doping": 1.0})


# ---------------------------------------------------------------- status
def test_status_of_the_twin_and_of_a_bench(twin):
    twin.pump.fluence.put(250.0)
    twin.restore_lab_time(30.0)
    status = twin.status()
    assert status == {
        "bench": twin.config.bench.name,
        "devices": "twin",
        "fluence_limit_uJ_cm2": twin.config.bench.fluence_limit_uJ_cm2,
        "fluence_setpoint_uJ_cm2": 250.0,
        "sample_id": twin.stage.sample.get(),
        "lab_time_s": 30.0,
        "message": "ok",
    }
    assert isinstance(twin, TwinBenchDevices)
    bench_status = _as_bench(twin).status()
    assert bench_status["devices"] == "bench" and "lab_time_s" not in bench_status and "message" not in bench_status
    assert bench_status["fluence_setpoint_uJ_cm2"] == 250.0


# ---------------------------------------------------------------- over Channel Access
def test_the_epics_bench_answers_the_same_interface(control_layer):
    prefix = f"TBI{time.monotonic_ns() % 10**8}:"
    with twin_ioc(EXAMPLE_BENCH, time_scale=1e4, prefix=prefix) as ioc:
        cfg = bench_config(prefix)  # the example's [bench] lab_clock_pv = "SIM:LabTime"
        bench = connect(cfg, control_layer)
        try:
            assert bench.engine is None and not isinstance(bench.clock, LabClock)
            assert bench.lab_clock_source == f"the bench's lab-clock PV {ioc.pv('SIM:LabTime')}"
            bench.spectrometer.exposure.put(0.5)
            bench.spectrometer.trigger().wait(10)
            assert bench.lab_time_s() == pytest.approx(caget(ioc.pv("SIM:LabTime"))) and bench.lab_time_s() > 0
            bench.restore_lab_time(1e6)  # nothing is sent: the IOC's clock runs on
            assert bench.lab_time_s() < 1e6
            md = bench.describe_sample(FILM)
            assert md["devices"] == "bench" and "twin" not in md and md["sample_kind"] == "film"
            assert bench.excitons_per_uJ_cm2(FILM) is None
            status = bench.status()
            assert status["devices"] == "bench" and status["sample_id"] == caget(ioc.pv("STAGE:Sample-RB"))
            bench.stage.add_film(cfg.new_film_entry("film-009-ne0.50", 0.5))
            assert bench.stage.library["film-009-ne0.50"].doping == 0.5
        finally:
            bench.destroy()
        wall = connect(bench_config(prefix, bench={"lab_clock_pv": None}), control_layer)
        try:
            assert isinstance(wall.clock, LabClock) and wall.lab_clock_source == "the wall clock"
            assert abs(wall.lab_time_s() - time.time()) < 5.0
        finally:
            wall.destroy()
