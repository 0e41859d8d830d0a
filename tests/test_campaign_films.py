"""Campaigns use what was measured: every new film's doping is measured before its first trial.

On the twin a new film's true doping scatters around the request (``[twin] film_doping_spread``,
0.1 electrons/dot in the shipped bench file). The campaign measures each new film's absorption
(``plans.absorption.measure_film_doping``) once, records the requested and the measured doping,
gives the optimiser the measured one, never uses a film it could not measure, and a resume reads
the measurements back instead of measuring again.
"""

from __future__ import annotations

import math

import pytest

from core.trial import TrialRecord
from gainloop.campaign import (
    CampaignConfig,
    campaign_cost,
    campaign_films,
    campaign_material,
    campaign_optimizer,
    campaign_status,
    rebuild_trials,
    run_campaign,
)
from gainloop.catalog import Catalog
from harness.documents import collect, stream_events
from plans.absorption import absorption_lab_time_s
from plans.campaign import campaign
from sim.devices import default_twin_bench_path, twin_bench_devices


def _runs_of(catalog, campaign_uid):
    from tiled.queries import Key

    return sorted(
        catalog.client.search(Key("start.campaign_uid") == campaign_uid).values(), key=lambda r: r.start["time"]
    )


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


def _no_library_films(**kw):
    """A campaign that may use no library film: its first trial needs a new film."""
    return CampaignConfig(strategy="nested", seed=0, budget_lab_h=None, twin_seed=0, films=(), **kw)


@pytest.fixture(scope="module")
def two_trials(catalog):
    bench = twin_bench_devices(default_twin_bench_path(), seed=0)
    summary = run_campaign(catalog, _no_library_films(max_trials=2), bench=bench)
    truth = {sid: bench.engine.film_truth(sid).doping_e_per_dot for sid in bench.stage.library}
    return summary, truth


def test_a_new_film_is_measured_before_its_first_trial_and_the_record_carries_both_dopings(catalog, two_trials):
    summary, truth = two_trials
    uid = summary["campaign_uid"]
    runs = [r for r in _runs_of(catalog, uid) if r.start["plan_name"] != "campaign"]
    assert [r.start["plan_name"] for r in runs] == ["absorption_spectrum", "ase_fluence_scan", "ase_fluence_scan"]
    absorption, first = runs[0], runs[1]
    assert absorption.start["film_trial_index"] == 0 and "trial_index" not in absorption.start
    assert absorption.stop["exit_status"] == "success"
    _, records, _, _ = rebuild_trials(catalog, uid)
    r0, r1 = records
    assert r0.new_film and not r1.new_film and r1.sample_id == r0.sample_id  # measured once, used twice
    assert r0.requested_doping == pytest.approx(r0.params["doping"])
    assert r0.absorption_uid == absorption.start["uid"] == r1.absorption_uid
    assert (r0.measured_doping, r0.measured_doping_err) == (r1.measured_doping, r1.measured_doping_err)
    true = truth[r0.sample_id]
    assert abs(true - r0.requested_doping) > 1e-6  # the film came out with its own doping ...
    assert abs(r0.measured_doping - true) <= 4 * r0.measured_doping_err  # ... and the absorption measured it
    assert first.start["film_doping"]["measured_doping"] == pytest.approx(r0.measured_doping)
    # the optimiser was given the measured doping, and proposed the film's second trial at it
    assert r1.params["doping"] == pytest.approx(r0.measured_doping)
    assert r0.result.observed["doping"] == r0.measured_doping
    status = campaign_status(catalog, uid)
    assert status["films_measured"] == 1 and status["films_made"] == 1
    assert summary["films_measured"] == 1


def test_a_resume_uses_the_stored_measurement_and_measures_nothing_again(catalog):
    first = run_campaign(catalog, _no_library_films(max_trials=1))
    uid = first["campaign_uid"]
    resumed = run_campaign(catalog, resume_uid=uid, budgets={"max_trials": 3})
    assert resumed["trials"] == 3
    runs = [r for r in _runs_of(catalog, uid) if r.start["plan_name"] != "campaign"]
    assert [r.start["plan_name"] for r in runs].count("absorption_spectrum") == 1
    _, records, _, _ = rebuild_trials(catalog, uid)
    assert [r.sample_id for r in records] == [records[0].sample_id] * 3
    assert {r.measured_doping for r in records} == {records[0].measured_doping}
    assert {r.absorption_uid for r in records} == {runs[0].start["uid"]}
    assert not any(r.new_film for r in records[1:])
    assert campaign_status(catalog, uid)["films_measured"] == 1


def test_the_report_shows_requested_and_measured_doping(catalog, two_trials, tmp_path):
    from gainloop.report import build_report

    summary, _ = two_trials
    _, records, _, _ = rebuild_trials(catalog, summary["campaign_uid"])
    page = build_report(catalog, summary["campaign_uid"], tmp_path / "report").index.read_text()
    table = page.split("<table")[-1]
    assert "requested doping" in table and "measured doping" in table
    assert f"{records[0].measured_doping:.3f} ± {records[0].measured_doping_err:.3f}" in table
    assert f"<td>{records[0].requested_doping:.2f}</td>" in table


def _plan_campaign(RE, bench, max_trials, progress=None, **cfg_kw):
    cfg = CampaignConfig(strategy="nested", seed=0, budget_lab_h=None, max_trials=max_trials, twin_seed=0, **cfg_kw)
    cfg = CampaignConfig.from_dict({**cfg.as_dict(), "material": campaign_material(cfg, bench)})
    films = campaign_films(cfg, bench)
    opt = campaign_optimizer(cfg, bench, films)
    docs = collect(RE)
    RE(
        campaign(
            bench,
            opt,
            campaign_uid="films-test",
            lab_clock=bench.lab_time_s,
            max_trials=max_trials,
            films=films,
            progress=progress,
        )
    )
    records = [TrialRecord.from_row(ev["data"]) for ev in stream_events(docs, "outcomes")]
    return opt, records, docs


def test_a_film_that_cannot_be_measured_is_a_failed_trial_and_never_used(RE):
    bench = twin_bench_devices(default_twin_bench_path(), seed=0)
    bench.lamp.ok.put(0)  # the white light is off: the first film's absorption gives no light

    def lamp_back(summary):
        bench.lamp.ok.put(1)

    opt, records, docs = _plan_campaign(RE, bench, 3, progress=lamp_back, films=())
    r0 = records[0]
    assert r0.status == "failed" and r0.reason.startswith("film not measured: no_light")
    assert r0.new_film and r0.sample_id and not r0.doping_measured and r0.run_uid == ""
    assert opt.history()[0].status == "failed"
    scans = [d for n, d in docs if n == "start" and d["plan_name"] == "ase_fluence_scan"]
    assert len(scans) == 2 and r0.sample_id not in {d["sample_id"] for d in scans}  # never measured blind
    assert all(r.sample_id != r0.sample_id for r in records[1:])
    assert records[1].new_film and records[1].doping_measured
    fails = [d for n, d in docs if n == "stop" and d.get("exit_status") == "fail"]
    assert len(fails) == 1 and "no_light" in fails[0]["reason"]  # the absorption run closed with its reason
    # the film never measured is no film to the optimiser: only the measured one is "there"
    assert opt.lab_state().films == pytest.approx((records[1].measured_doping,))


def test_on_a_bench_with_scatter_the_optimiser_models_the_measured_doping(RE):
    bench = twin_bench_devices(default_twin_bench_path(), seed=1)
    opt, records, _ = _plan_campaign(RE, bench, 2, films=())
    data = opt.training_data()
    measured = [opt.space.unit_doping(r.measured_doping) for r in records]
    requested = [opt.space.unit_doping(r.requested_doping) for r in records]
    assert data["X"][:, 1].tolist() == pytest.approx(measured)
    assert data["X"][0, 1].item() != pytest.approx(requested[0], abs=1e-6)
    lo, hi = opt.space.doping_bounds
    assert data["X_sd"][:, 1].tolist() == pytest.approx([r.measured_doping_err / (hi - lo) for r in records])
    assert all(math.isfinite(r.measured_doping_err) and r.measured_doping_err > 0 for r in records)


def test_a_new_film_is_priced_with_its_measurement():
    bench = twin_bench_devices(default_twin_bench_path(), seed=0)
    cost = campaign_cost(bench)
    assert cost.film_measurement_s == pytest.approx(absorption_lab_time_s(bench)) and cost.film_measurement_s > 0
    opt = campaign_optimizer(CampaignConfig(twin_seed=0), bench, campaign_films(CampaignConfig(), bench))
    assert opt.cost == cost


def test_a_trial_judged_by_its_run_keeps_its_films_measurement(catalog, RE):
    """The campaign died after trial 0's scan stopped, before its outcome was recorded: the resume
    judges the trial by its run, whose start document carries the film's measured doping, and the
    film is not measured again."""
    from gainloop.campaign import prepare_campaign

    def die_after_the_scan(point, trial_index):
        if point == "measured" and trial_index == 0:
            return _raise(RuntimeError("the process died here"))
        return None

    bench = twin_bench_devices(default_twin_bench_path(), seed=0)
    prepared = prepare_campaign(catalog, _no_library_films(max_trials=2), bench=bench, fault_hook=die_after_the_scan)
    RE.subscribe(catalog.campaign_writer())
    with pytest.raises(RuntimeError, match="the process died here"):
        RE(prepared.plan)
    uid = prepared.campaign_uid
    _, records, _, _ = rebuild_trials(catalog, uid)
    (r0,) = records  # judged by its run: no outcome was recorded
    assert r0.status == "completed" and r0.doping_measured and r0.absorption_uid
    assert r0.requested_doping == pytest.approx(r0.params["doping"]) != r0.measured_doping
    run_campaign(catalog, resume_uid=uid, budgets={"max_trials": 2})
    _, records, _, _ = rebuild_trials(catalog, uid)
    assert [r.sample_id for r in records] == [r0.sample_id] * 2
    assert records[1].measured_doping == r0.measured_doping and records[1].absorption_uid == r0.absorption_uid
    plans = [r.start["plan_name"] for r in _runs_of(catalog, uid)]
    assert plans.count("absorption_spectrum") == 1


def _raise(exc):
    raise exc
    yield  # a plan that raises
