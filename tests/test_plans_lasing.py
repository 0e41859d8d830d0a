"""Lasing plans on the in-process twin: recovery of the twin's DFB ground truth, metadata, replay, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.documents import collect as _collect
from plans.lasing import (
    analyse_lasing_spectrum,
    analyse_lasing_threshold,
    analyse_polarization_scan,
    lasing_spectrum,
    lasing_threshold,
    polarization_scan,
)
from plans.registry import PLANS
from plans.safety import FluenceLimitError
from sim.devices import twin_bench_devices
from twin.dfb import bragg_wavelength_nm, dfb_linewidth_nm, dfb_polarized_output, dfb_threshold_uJ_cm2
from twin.presets import load_presets

from .conftest import REPO

BENCH_FILE = REPO / "examples" / "twin_bench.toml"
DFB = "cas_doped-dfb"


@pytest.fixture
def bench():
    return twin_bench_devices(BENCH_FILE, seed=5)


def _sample(bench, sample_id=DFB):
    return bench.engine.sample_for(bench.config.library_entry(sample_id))


def _stream(docs, name):
    """The columns of one stream of the run, rebuilt from its event documents (as a replay sees them)."""
    desc = next(d for n, d in docs if n == "descriptor" and d["name"] == name)
    events = [d for n, d in docs if n == "event" and d["descriptor"] == desc["uid"]]
    return {key: np.asarray([e["data"][key] for e in events]) for key in events[0]["data"]}


def _check_run(docs, result, plan_name, analyse, dimension_fields):
    """Standard metadata, the analysis stream equal to the result, and the replay giving the same result."""
    start = next(d for n, d in docs if n == "start")
    assert start["plan_name"] == plan_name
    assert start["plan_args"]["sample_id"] == DFB
    assert start["sample_id"] == DFB and start["sample_kind"] == "dfb"
    assert start["doping"] == pytest.approx(7.4)
    assert start["devices"] == "twin" and start["twin"]["seed"] == 5
    assert start["twin"]["sample"]["dfb"]["grating_period_nm"] == pytest.approx(870.0)
    assert start["units"]["fluence"] == "uJ/cm^2" and start["units"]["wavelength"] == "nm"
    assert start["hints"]["dimensions"] == [(dimension_fields, "primary")]
    assert next(d for n, d in docs if n == "stop")["exit_status"] == "success"
    analysis = _stream(docs, "analysis")
    expected = {k: v for k, v in result.items() if k != "uid"}
    assert {k: float(v[0]) for k, v in analysis.items()} == pytest.approx(expected, rel=1e-12)
    replayed = analyse(_stream(docs, "primary"), start["plan_args"])
    assert replayed == pytest.approx(expected, rel=1e-12)
    assert PLANS[plan_name].analyse is analyse


def test_lasing_threshold_recovers_the_twin_threshold_within_its_uncertainty(bench, RE):
    docs = _collect(RE)
    result = RE(lasing_threshold(bench, DFB)).plan_result
    truth = float(dfb_threshold_uJ_cm2(_sample(bench)))
    err = result["threshold_err_uJ_cm2"]
    assert 0 < err < 0.05 * truth  # informative
    assert abs(result["threshold_uJ_cm2"] - truth) <= 2 * err
    # the log-log onset sits below the threshold: the line clears the spontaneous emission late
    assert result["kink_onset_uJ_cm2"] < result["threshold_uJ_cm2"]
    _check_run(docs, result, "lasing_threshold", analyse_lasing_threshold, [bench.pump.fluence.name])
    assert bench.pump.shutter.get() == 0


def test_lasing_threshold_of_the_undoped_device(bench, RE):
    result = RE(lasing_threshold(bench, "cas-dfb", n_coarse=10)).plan_result
    truth = float(dfb_threshold_uJ_cm2(_sample(bench, "cas-dfb")))
    assert abs(result["threshold_uJ_cm2"] - truth) <= 2 * result["threshold_err_uJ_cm2"]


@pytest.mark.parametrize(("sample_id", "factor"), [(DFB, 1.1), (DFB, 1.5), ("cas-dfb", 1.1)])
def test_lasing_spectrum_recovers_the_twin_wavelength_and_linewidth(bench, RE, sample_id, factor):
    docs = _collect(RE)
    sample = _sample(bench, sample_id)
    fluence = factor * float(dfb_threshold_uJ_cm2(sample))
    result = RE(lasing_spectrum(bench, sample_id, fluence_uJ_cm2=fluence)).plan_result
    lam = bragg_wavelength_nm(sample.dfb)
    width = float(dfb_linewidth_nm(result["fluence_uJ_cm2"], sample))
    # the power meter reads the fluence delivered: the set point times the pump's slow drift
    # (noise.drift_rms, 0.5 % rms: within 3 sigma) and the mean of the pulses' jitter
    drift = load_presets().noise.drift_rms
    assert result["fluence_uJ_cm2"] == pytest.approx(fluence, rel=3 * drift + 0.002)
    assert abs(result["wavelength_nm"] - lam) <= 2 * result["wavelength_err_nm"]
    assert abs(result["linewidth_nm"] - width) <= 2 * result["linewidth_err_nm"]
    # the pixel (~1 nm) limits what is claimed, not more
    assert result["wavelength_err_nm"] < 0.1 and result["linewidth_err_nm"] < 0.5 * width
    if sample_id == DFB:
        _check_run(docs, result, "lasing_spectrum", analyse_lasing_spectrum, ["time"])
        primary = _stream(docs, "primary")
        assert primary["spectrometer_wavelength"].shape == primary["spectrometer_spectrum"].shape
        assert np.all(primary["polarizer_angle"] == 0.0)


def test_polarization_scan_recovers_the_twin_ratio_within_its_uncertainty(bench, RE):
    docs = _collect(RE)
    sample = _sample(bench)
    fluence = 1.5 * float(dfb_threshold_uJ_cm2(sample))
    result = RE(polarization_scan(bench, DFB, fluence_uJ_cm2=fluence)).plan_result
    i_par, i_perp = dfb_polarized_output([0.0, 90.0], result["fluence_uJ_cm2"], sample)
    truth = (i_par - i_perp) / (i_par + i_perp)
    assert 0 < result["polarization_ratio_err"] < 0.01
    assert abs(result["polarization_ratio"] - truth) <= 2 * result["polarization_ratio_err"]
    assert abs(result["polarization_angle_deg"]) <= 2 * result["polarization_angle_err_deg"] + 1e-9
    _check_run(docs, result, "polarization_scan", analyse_polarization_scan, [bench.polarizer.angle.name])
    forward = [float(a) for a in range(0, 180, 10)]
    assert list(_stream(docs, "primary")["polarizer_angle"]) == forward + forward[::-1]  # there and back


def _refused(bench, RE, plan, error=ValueError, match=None):
    docs = _collect(RE)
    before = (bench.engine.state.fluence_uJ_cm2, bench.engine.state.sample_id, bench.engine.state.polarizer_deg)
    with pytest.raises(error, match=match):
        RE(plan)
    assert docs == []
    after = (bench.engine.state.fluence_uJ_cm2, bench.engine.state.sample_id, bench.engine.state.polarizer_deg)
    assert after == before
    assert bench.engine.lab_time_s == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda b: lasing_threshold(b, "cas_doped-film"),
        lambda b: lasing_spectrum(b, "cas-film", fluence_uJ_cm2=200.0),
        lambda b: polarization_scan(b, "core-film", fluence_uJ_cm2=200.0),
    ],
)
def test_lasing_plans_refuse_a_film(bench, RE, make):
    _refused(bench, RE, make(bench), match=r"measures a DFB laser.*DFB devices on this bench: cas-dfb, cas_doped-dfb")


def test_unknown_sample_is_a_clear_error(bench, RE):
    _refused(bench, RE, lasing_spectrum(bench, "nope", fluence_uJ_cm2=200.0), match=r"not in the bench's library")


@pytest.mark.parametrize(
    "make",
    [
        lambda b: lasing_threshold(b, DFB, fluence_max_uJ_cm2=1e5),
        lambda b: lasing_spectrum(b, DFB, fluence_uJ_cm2=3000.1),
        lambda b: polarization_scan(b, DFB, fluence_uJ_cm2=math.inf),
        lambda b: lasing_spectrum(b, DFB, fluence_uJ_cm2=-1.0),
    ],
)
def test_over_limit_fluence_is_refused_before_anything_moves(bench, RE, make):
    _refused(bench, RE, make(bench), FluenceLimitError, match=r"allowed: 0 to 3000 uJ/cm\^2")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda b: lasing_spectrum(b, DFB, fluence_uJ_cm2=0.0), r"above 0 uJ/cm\^2"),
        (lambda b: lasing_threshold(b, DFB, fluence_min_uJ_cm2=0.0), r"above 0 uJ/cm\^2"),
        (lambda b: lasing_threshold(b, DFB, fluence_min_uJ_cm2=500.0, fluence_max_uJ_cm2=400.0), r"min < max"),
        (lambda b: lasing_threshold(b, DFB, n_coarse=5), r"n_coarse >= 6"),
        (lambda b: lasing_threshold(b, DFB, n_fine=3), r"n_fine >= 8"),
        (lambda b: lasing_spectrum(b, DFB, fluence_uJ_cm2=200.0, n_spectra=0), r"n_spectra >= 1"),
        (lambda b: polarization_scan(b, DFB, fluence_uJ_cm2=200.0, angles_deg=[0, 45, 90]), r"at least 4"),
        (lambda b: polarization_scan(b, DFB, fluence_uJ_cm2=200.0, angles_deg=[0, 180, 90, 270]), r"distinct"),
        (lambda b: polarization_scan(b, DFB, fluence_uJ_cm2=200.0, angles_deg=[0, 30, math.nan, 90]), r"angle"),
        (lambda b: lasing_spectrum(b, DFB, fluence_uJ_cm2=200.0, exposure_s=0.0), r"exposure"),
    ],
)
def test_bad_arguments_are_clear_errors_and_send_nothing(bench, RE, make, match):
    _refused(bench, RE, make(bench), match=match)


def test_registry_lists_the_lasing_plans():
    for name in ("lasing_threshold", "lasing_spectrum", "polarization_scan"):
        assert PLANS[name].plan.__name__ == name
