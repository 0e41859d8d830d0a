"""Transient-absorption plan on the in-process twin: the twin's ground truth within the reported errors,
metadata, the analysis stream, replay of the stored stream, and arguments refused before anything moves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from bluesky import Msg
from scipy import optimize

from harness.documents import collect as _collect
from harness.documents import event_columns as _columns
from harness.documents import stream_events as _stream
from plans.pump_probe import analyse_pump_probe, pump_probe
from plans.registry import plan_spec
from plans.safety import FluenceLimitError
from plans.stubs import trigger_then_read
from sim.devices import twin_bench_devices
from twin import dynamics
from twin.gain import film_kappa
from twin.occupancy import gain_threshold

from .conftest import REPO

BENCH_FILE = REPO / "examples" / "twin_bench.toml"


def _sample(bench, sample_id):
    return bench.engine.sample_for(bench.config.library_entry(sample_id))


def _transparency_N(sample, delay_ps):
    """The twin's <N> at which alpha/alpha0 = 0 at ``delay_ps`` (noiseless)."""

    def alpha(n):
        return float(dynamics.ta_trace(np.array([delay_ps]), n, sample)[0])

    return optimize.brentq(alpha, 0.01, 30.0, xtol=1e-10)


def _within(result, key, err_key, truth, k=2.0):
    value, err = result[key], result[err_key]
    assert math.isfinite(value) and err > 0, (key, value, err)
    assert abs(value - truth) <= k * err, f"{key} = {value:.5g} +- {err:.2g}, twin truth {truth:.5g}"


def test_pump_probe_recovers_threshold_biexciton_and_gain_lifetime_of_the_neutral_film(RE):
    bench = twin_bench_devices(BENCH_FILE, seed=3)
    docs = _collect(RE)
    sample = _sample(bench, "core-film")
    kappa = film_kappa(sample.film)
    delays = np.linspace(0.0, 3000.0, 101)  # 30 ps steps (the default 20 ps halves the error and doubles the time)
    result = RE(pump_probe(bench, "core-film", excitons_per_uJ_cm2=kappa, auger_delays_ps=delays)).plan_result

    # the twin's own ground truth, each within twice the error the plan reports
    _within(result, "gain_threshold_N", "gain_threshold_err_N", _transparency_N(sample, 2.0))
    _within(
        result,
        "biexciton_lifetime_ps",
        "biexciton_lifetime_err_ps",
        float(dynamics.multiexciton_lifetime_ps(2, sample)),
    )
    pump_n = bench.engine.state.ta_pump_excitons  # the <N> the twin's TA pumped with for the gain trace
    assert result["gain_lifetime_pump_N"] == pytest.approx(pump_n, rel=0.01)
    _within(result, "gain_lifetime_ps", "gain_lifetime_err_ps", dynamics.gain_lifetime_ps(pump_n, sample))
    assert result["gain_threshold_uJ_cm2"] == pytest.approx(result["gain_threshold_N"] / kappa)

    start = next(d for n, d in docs if n == "start")
    assert start["plan_name"] == "pump_probe"
    assert start["plan_args"]["excitons_per_uJ_cm2"] == kappa and start["plan_args"]["doping"] == 0.0
    assert start["sample_id"] == "core-film" and start["doping"] == 0.0
    assert start["devices"] == "twin" and start["twin"]["seed"] == 3
    assert start["twin"]["excitons_per_uJ_cm2"] == pytest.approx(kappa)
    assert start["twin"]["sample"]["auger"]["tau_xx_ps"] == sample.auger.tau_xx_ps
    assert start["units"]["ta_delay"] == "ps" and start["units"]["ta_signal"] == "|d(alpha)/alpha0|"
    assert [(list(f), s) for f, s in start["hints"]["dimensions"]] == [
        (["ta_delay"], "primary"),
        (["pump_fluence"], "primary"),
    ]

    primary = _stream(docs, "primary")
    assert [ev["seq_num"] for ev in primary] == list(range(1, len(primary) + 1))
    descriptor = next(d for n, d in docs if n == "descriptor" and d["name"] == "primary")
    assert descriptor["data_keys"]["ta_delay"]["units"] == "ps"
    assert set(descriptor["hints"]["ta"]["fields"]) == {"ta_delay", "ta_signal"}  # LiveTable's columns
    assert descriptor["hints"]["pump"]["fields"] == ["pump_fluence"]
    (analysis,) = _stream(docs, "analysis")
    assert analysis["data"] == {k: pytest.approx(v) for k, v in result.items() if k != "uid"}

    # replay: the registered analysis on the columns rebuilt from the stored events
    replayed = plan_spec("pump_probe").analyse(_columns(primary), start["plan_args"])
    assert replayed == {k: v for k, v in result.items() if k != "uid"}
    assert bench.pump.shutter.get() == 0


def test_doped_film_threshold_at_time_zero_is_the_occupancy_threshold(RE):
    bench = twin_bench_devices(BENCH_FILE, seed=5)
    sample = _sample(bench, "cas_doped-film")
    plan = pump_probe(
        bench,
        "cas_doped-film",
        excitons_per_uJ_cm2=film_kappa(sample.film),
        parts=("threshold", "gain_lifetime"),
        threshold_delay_ps=0.0,
    )
    result = RE(plan).plan_result
    truth = float(gain_threshold(sample.doping_ne, sample.degeneracy, sample.doping_distribution, sample.exciton_yield))
    _within(result, "gain_threshold_N", "gain_threshold_err_N", truth)
    pump_n = bench.engine.state.ta_pump_excitons
    _within(result, "gain_lifetime_ps", "gain_lifetime_err_ps", dynamics.gain_lifetime_ps(pump_n, sample))
    assert "biexciton_lifetime_ps" not in result


def test_each_point_is_saved_once_after_its_acquisition_with_rewinding_off():
    bench = twin_bench_devices(BENCH_FILE, seed=0)
    msgs = list(trigger_then_read([bench.ta, bench.ta.pump_excitons], triggers=[bench.ta]))
    commands = [m.command for m in msgs]
    assert commands[:3] == ["checkpoint", "trigger", "wait"]
    assert msgs[1].obj is bench.ta and {m.obj for m in msgs if m.command == "read"} == {
        bench.ta,
        bench.ta.pump_excitons,
    }
    # no rewind past a completed acquisition: rewinding off, then a checkpoint, then the bundle
    off = next(i for i, m in enumerate(msgs) if m == Msg("rewindable", None, False))
    assert commands[off + 1 : off + 3] == ["checkpoint", "create"]
    assert commands.index("save") > commands.index("create")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"excitons_per_uJ_cm2": 0.0}, ValueError, "excitons_per_uJ_cm2"),
        ({"excitons_per_uJ_cm2": math.nan}, ValueError, "excitons_per_uJ_cm2"),
        ({"fluence_max_uJ_cm2": 1e5}, FluenceLimitError, "allowed: 0 to 3000"),
        ({"threshold_delay_ps": -1.0}, ValueError, ">= 0 ps"),
        ({"auger_delays_ps": [0.0, 10.0, 20.0]}, ValueError, "at least 12"),
        ({"auger_delays_ps": np.r_[np.linspace(0, 1000, 20), math.inf]}, ValueError, "finite and >= 0 ps"),
        ({"gain_delays_ps": np.linspace(0, 9000, 10)}, ValueError, "soft limits"),
        ({"n_coarse": 3}, ValueError, "n_coarse"),
        ({"parts": ("threshold", "lifetime")}, ValueError, "parts"),
        ({"parts": ("gain_lifetime",)}, ValueError, "gain_fluence_uJ_cm2"),
        ({"auger_fluences_uJ_cm2": (100.0, 10.0)}, ValueError, "weak < strong"),
    ],
)
def test_bad_arguments_are_clear_errors_and_send_nothing(RE, kwargs, error, match):
    bench = twin_bench_devices(BENCH_FILE, seed=0)
    docs = _collect(RE)
    args = {"excitons_per_uJ_cm2": 0.01, **kwargs}
    with pytest.raises(error, match=match):
        RE(pump_probe(bench, "core-film", **args))
    assert docs == []
    assert bench.engine.lab_time_s == 0.0 and bench.engine.state.fluence_uJ_cm2 == 0.0


def test_analysis_says_what_to_change_when_the_pump_never_reaches_transparency():
    data = {
        "pump_probe_series": np.zeros(8),
        "ta_delay": np.full(8, 2.0),
        "ta_signal": -np.linspace(0.05, 0.4, 8),
        "pump_fluence": np.geomspace(5, 100, 8),
    }
    args = {"excitons_per_uJ_cm2": 0.01, "band_edge_degeneracy": 8, "doping": 0.0, "parts": ["threshold"]}
    with pytest.raises(ValueError, match="raise the maximum fluence"):
        analyse_pump_probe(data, args)
