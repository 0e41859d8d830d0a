"""``gainloop twin calibrate`` on DFB lasing runs (``lasing_threshold``): read, modelled, fitted, drawn.

The runs are real: the plans on the twin bench (``harness.calibration``), stored in an embedded catalog, on a twin
whose hidden truth differs from the presets by tens of percent in the film's gain, waveguide loss and absorption
and in the exciton yield (``LASING_PERTURBED``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from gainloop.calibrate import LASING_COLUMNS, CalibrationInputError, select_runs
from gainloop.catalog import Catalog
from gainloop.cli import app
from harness.calibration import (
    BENCH_FILE,
    DFB,
    FILM,
    LASING_PERTURBED,
    SAMPLE,
    measure_lasing_run,
    measure_runs,
    perturbed_truth,
)
from twin.calibration import CalibrationError, LasingRun, StripeRun, calibrate, identifiable, predicted_counts
from twin.dfb import dfb_threshold_uJ_cm2
from twin.presets import get_parameter, with_parameters

SEED = 5


@pytest.fixture(scope="module")
def lasing_measured(tmp_path_factory, presets):
    """One ASE fluence scan of the film and one lasing_threshold run of the DFB device made of the same dots, on a
    twin whose truth differs from the presets."""
    folder = tmp_path_factory.mktemp("lasing")
    truth = perturbed_truth(presets, seed=SEED, keys=LASING_PERTURBED)
    with Catalog(data_dir_path=folder) as cat:
        stripe_uids = measure_runs(cat, truth, 1, seed=SEED)
        lasing_uid = measure_lasing_run(cat, truth, seed=SEED + 3, n_fine=12)
        selected = select_runs(cat, presets, [FILM, DFB])
    return folder, truth, stripe_uids, lasing_uid, selected


def _lasing(selected) -> LasingRun:
    (run,) = [r for r in selected.runs if isinstance(r, LasingRun)]
    return run


def test_the_truth_differs_from_the_presets_by_tens_of_percent(presets, lasing_measured):
    _, truth, _, _, _ = lasing_measured
    for key in LASING_PERTURBED:
        name = f"{SAMPLE}.{key}"
        assert abs(get_parameter(truth, name) / get_parameter(presets, name) - 1) >= 0.09, name
    # ... and so does the device's threshold (uJ/cm^2)
    assert abs(dfb_threshold_uJ_cm2(truth.get(SAMPLE)) / dfb_threshold_uJ_cm2(presets.get(SAMPLE)) - 1) > 0.05


def test_a_lasing_run_is_read_as_reads_of_fluence_exposure_angle_and_counts(lasing_measured):
    _, _, _, lasing_uid, selected = lasing_measured
    assert selected.skipped == [] and selected.preset == SAMPLE
    run = _lasing(selected)
    assert run.uid == lasing_uid and run.plan == "lasing_threshold" and run.sample == SAMPLE
    assert run.doping == pytest.approx(7.4) and run.grating_period_nm == pytest.approx(870.0)
    assert run.counts.size >= 20 and np.all(run.analyser_angle_deg == 0.0)
    assert run.fluence_uJ_cm2.min() < 20.0 and run.fluence_uJ_cm2.max() > 1000.0  # the coarse sweep's span
    # the device's photo-damage grows over its reads (the hard pulses of the coarse sweep's top)
    assert np.all(np.diff(run.damage_dose) >= 0) and run.damage_dose[-1] > 1e-4


def test_a_lasing_runs_model_reproduces_the_twin_benchs_noise_free_counts(presets, tmp_path):
    """On a twin bench whose detector is noise-free in the limit (a collection so large that shot noise is 1e-6 of
    the counts; no read noise, dark counts or pump drift) the counts a lasing run stores, read back through the
    catalog, are the calibration's model at the bench's presets: photo-damage, analyser angle and all."""
    quiet = with_parameters(
        perturbed_truth(presets, seed=SEED, keys=LASING_PERTURBED),
        {
            "noise.dfb_counts_per_unit_s": 1.0e13,
            "noise.read_noise_counts": 0.0,
            "noise.dark_counts_per_s": 0.0,
            "noise.drift_rms": 0.0,
            "noise.full_well_counts": 1.0e30,
        },
    )
    with Catalog(data_dir_path=tmp_path) as cat:
        measure_lasing_run(cat, quiet, seed=1, n_fine=8, analyser_angle_deg=30.0)
        selected = select_runs(cat, presets, DFB)
    run = _lasing(selected)
    assert np.all(run.analyser_angle_deg == 30.0) and run.damage_dose[-1] > 0
    model = predicted_counts(quiet, [run])[run.uid]
    np.testing.assert_allclose(run.counts, model, rtol=2e-5)
    # the presets (the truth's film unperturbed) predict other counts: the test can tell
    at_presets = predicted_counts(with_parameters(presets, {"noise.dfb_counts_per_unit_s": 1.0e13}), [run])[run.uid]
    assert np.max(np.abs(at_presets / run.counts - 1)) > 0.05


def test_lasing_runs_alone_calibrate_the_gain_loss_and_yield_and_pin_the_threshold(presets, lasing_measured):
    """A lasing run pins the film's gain (alpha0), its waveguide loss and the exciton yield (the PL below threshold);
    each estimate lands within 2 of its standard errors of the hidden truth, and the device's threshold within
    0.5 % (the presets miss it by more than 5 %)."""
    _, truth, _, lasing_uid, selected = lasing_measured
    run = _lasing(selected)
    names, lines = identifiable(presets, [run])
    pinned = ("film.alpha0_per_cm", "film.waveguide_loss_per_cm", "exciton_yield")
    assert set(names) == {f"{SAMPLE}.{k}" for k in pinned}
    # at one doping a lasing run sees only the total loss: the intraband loss goes with the waveguide loss
    assert any(line.startswith("film.intraband_loss_1p_per_cm and film.waveguide_loss_per_cm") for line in lines)
    result = calibrate(presets, [run])
    for e in result.estimates:
        true = get_parameter(truth, e.name)
        assert abs(e.value - true) <= 2.0 * e.error, (e.name, e.value, e.error, true)
        assert 0 < e.error < 0.05 * e.value
    assert 0.2 < result.reduced_chi2 < 2.0
    assert set(result.residuals) == {lasing_uid} and result.n_points == run.counts.size
    f_true = dfb_threshold_uJ_cm2(truth.get(SAMPLE))
    assert abs(dfb_threshold_uJ_cm2(result.presets.get(SAMPLE)) / f_true - 1) < 0.005
    assert abs(dfb_threshold_uJ_cm2(presets.get(SAMPLE)) / f_true - 1) > 0.05


def test_lasing_and_stripe_runs_together_separate_the_absorption_from_the_yield(presets, lasing_measured):
    """A stripe run sees the absorbed fraction and the yield only as their product (the <N> it pumps); with the
    lasing run (whose PL pins the yield) both are constrained, and the joint fit recovers all four perturbed
    parameters within 2 standard errors."""
    _, truth, stripe_uids, lasing_uid, selected = lasing_measured
    stripe = [r for r in selected.runs if isinstance(r, StripeRun)]
    assert [r.uid for r in stripe] == stripe_uids
    stripe_names, stripe_lines = identifiable(presets, stripe)
    yield_name, absorbed = f"{SAMPLE}.exciton_yield", f"{SAMPLE}.film.absorbed_fraction_1030"
    assert yield_name not in stripe_names
    product = "exciton_yield and film.absorbed_fraction_1030: only their product"
    assert any(line.startswith(product) for line in stripe_lines)
    joined_names, _ = identifiable(presets, selected.runs)
    assert {yield_name, absorbed} <= set(joined_names)
    result = calibrate(presets, selected.runs, [f"{SAMPLE}.{k}" for k in LASING_PERTURBED])
    for e in result.estimates:
        true = get_parameter(truth, e.name)
        assert abs(e.value - true) <= 2.0 * e.error, (e.name, e.value, e.error, true)
    assert 0.2 < result.reduced_chi2 < 2.0
    assert set(result.residuals) == {*stripe_uids, lasing_uid}
    f_true = dfb_threshold_uJ_cm2(truth.get(SAMPLE))
    assert abs(dfb_threshold_uJ_cm2(result.presets.get(SAMPLE)) / f_true - 1) < 0.005


def test_a_lasing_run_with_a_column_of_the_wrong_length_is_refused():
    with pytest.raises(CalibrationError, match="analyser_angle_deg has shape"):
        LasingRun("u", "lasing_threshold", SAMPLE, 7.4, [100.0, 200.0], [3.0, 3.0], [1e5, 2e5], [0.0])
    with pytest.raises(CalibrationError, match=r"fluence \(uJ/cm\^2\) and exposure \(s\) must be positive"):
        LasingRun("u", "lasing_threshold", SAMPLE, 7.4, [0.0, 200.0], [3.0, 3.0], [1e5, 2e5], [0.0, 0.0])


def _store_lasing_run_without(cat, column: str) -> str:
    """A stored lasing_threshold run of the DFB whose primary stream lacks ``column`` (an older or foreign writer)."""
    from event_model import compose_run

    run = compose_run(
        metadata={
            "plan_name": "lasing_threshold",
            "sample_id": DFB,
            "sample_kind": "dfb",
            "doping": 7.4,
            "twin": {"preset": SAMPLE},
        }
    )
    writer = cat.writer()
    writer("start", run.start_doc)
    cols = {c: 1.0 for c in LASING_COLUMNS if c != column}
    keys = {c: {"source": "test", "dtype": "number", "shape": []} for c in cols}
    desc = run.compose_descriptor(name="primary", data_keys=keys)
    writer("descriptor", desc.descriptor_doc)
    for i, f in enumerate(np.geomspace(20.0, 400.0, 10)):
        data = {**cols, "pump_fluence": float(f)} if "pump_fluence" in cols else cols
        writer("event", desc.compose_event(data=data, timestamps=dict.fromkeys(data, 0.0), seq_num=i + 1))
    writer("stop", run.compose_stop(exit_status="success"))
    return run.start_doc["uid"]


def _cli(*args):
    return CliRunner().invoke(app, ["twin", "calibrate", *args])


def test_bad_lasing_input_is_one_line_and_stores_nothing(presets, lasing_measured, tmp_path):
    """A lasing run that lacks a column, or one of another sample: a clear error, no presets file written and no
    calibration run stored."""
    folder, _, _, lasing_uid, _ = lasing_measured
    out = tmp_path / "calibrated.toml"
    with Catalog(data_dir_path=tmp_path / "cat") as cat:
        uid = _store_lasing_run_without(cat, "polarizer_angle")
        with pytest.raises(CalibrationInputError, match="has no polarizer_angle column"):
            select_runs(cat, presets, DFB)
    res = _cli("--sample", DFB, "--data-dir", str(tmp_path / "cat"), "--out", str(out))
    assert res.exit_code == 2 and f"lasing run {uid} has no polarizer_angle column" in res.output
    assert not out.exists()
    # a lasing run of the other device (another preset: other dots) named for this one
    with Catalog(data_dir_path=folder) as cat:
        from bluesky import RunEngine

        from gainloop.records import search_runs
        from plans.lasing import lasing_threshold
        from sim.devices import twin_bench_devices

        RE = RunEngine({}, call_returns_result=True)
        RE.subscribe(cat.writer())
        other = RE(lasing_threshold(twin_bench_devices(BENCH_FILE, seed=0), "cas-dfb", n_fine=8)).plan_result["uid"]
        before = len(search_runs(cat, plan_name="twin_calibrate"))
        with pytest.raises(CalibrationInputError, match="name several presets"):
            select_runs(cat, presets, [DFB, "cas-dfb"])
    res = _cli("--sample", DFB, "--runs", f"{lasing_uid},{other}", "--data-dir", str(folder), "--out", str(out))
    assert res.exit_code == 2 and f"run {other} is of sample 'cas-dfb', not '{DFB}'" in res.output
    assert len(res.output.strip().splitlines()) == 1
    with Catalog(data_dir_path=folder) as cat:
        assert len(search_runs(cat, plan_name="twin_calibrate")) == before
    assert not out.exists()


def test_cli_calibrates_on_lasing_runs_and_draws_them(presets, lasing_measured, tmp_path):
    """``gainloop twin calibrate --sample <the DFB>``: the lasing run is calibrated on, not skipped; the report draws
    it (measured and calibrated counts versus fluence)."""
    folder, _, _, lasing_uid, _ = lasing_measured
    out = tmp_path / "calibrated.toml"
    report = tmp_path / "report"
    res = _cli("--sample", DFB, "--data-dir", str(folder), "--out", str(out), "--report", str(report), "--json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output.strip().splitlines()[-1])
    assert payload["skipped"] == [] and set(payload["runs"]) == {lasing_uid}
    assert {p["name"] for p in payload["parameters"]} >= {f"{SAMPLE}.film.alpha0_per_cm", f"{SAMPLE}.exciton_yield"}
    assert f"run {lasing_uid}" in out.read_text()
    assert (report / "run_00.png").stat().st_size > 10_000 and lasing_uid in (report / "index.html").read_text()
    assert "lasing threshold" in (report / "index.html").read_text()
