"""The twin prior of the nested optimiser (``optimizer.PriorMap``, ``_prior.TwinPriorMean``), the map the
service computes from a presets file (``gainloop.campaign.twin_prior_map``), a twin-guided campaign and
its prior-versus-data residuals (``campaign status``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.errors import ParameterError
from gainloop.campaign import (
    CampaignConfig,
    CampaignError,
    campaign_status,
    twin_prior_map,
)
from gainloop.scan_model import smooth_ln_ratio
from optimizer import NestedOptimizer, PriorMap, SearchSpace, TrialResult, make_optimizer
from optimizer._models import fit_gp
from optimizer._prior import TwinPriorMean
from plans.measurements import ase_fluence_scan
from sim.devices import twin_bench_devices
from twin.ase import ase_threshold_uJ_cm2
from twin.presets import load_presets

from .conftest import REPO

BENCHES = REPO / "benchmarks" / "benches"
SPACE = SearchSpace(
    fluence_uJ_cm2=(10.0, 3000.0), stripe_length_um=(100.0, 4000.0), doping=(0.0, 7.9), fluence_limit_uJ_cm2=3000.0
)


def _bowl(lengths, dopings, n_best=5.0, depth=1.0):
    """A synthetic -ln threshold map with its best at (1000 um, n_best)."""
    L, D = np.meshgrid(lengths, dopings)
    return -(4.0 + 0.3 * np.log(L / 1000.0) ** 2 + depth * (D - n_best) ** 2 / 4.0)


def _map(n_best=5.0, family=False):
    lengths = np.geomspace(100.0, 4000.0, 30)
    dopings = np.linspace(0.0, 7.9, 80)
    if not family:
        return PriorMap.from_arrays(lengths, dopings, _bowl(lengths, dopings, n_best), source="bowl")
    bests = [3.0, 4.0, 5.0, 6.0, 7.0]
    maps = np.stack([_bowl(lengths, dopings, b) for b in bests])
    return PriorMap.from_arrays(
        lengths, dopings, maps, family=bests, family_name="n_best", family_index=bests.index(n_best), source="bowls"
    )


def test_the_map_interpolates_its_grid_exactly_and_refuses_bad_grids():
    pm = _map()
    lengths = np.asarray(pm.stripe_length_um)
    dopings = np.asarray(pm.doping)
    values = np.asarray(pm.neg_ln_threshold)[0]
    assert pm.predict(lengths[7], dopings[11]) == pytest.approx(values[11, 7], abs=1e-12)
    # halfway between two doping nodes: the mean of the two (linear in doping)
    mid = 0.5 * (dopings[11] + dopings[12])
    assert pm.predict(lengths[7], mid) == pytest.approx(0.5 * (values[11, 7] + values[12, 7]), abs=1e-12)
    with pytest.raises(ParameterError, match="evenly spaced"):
        PriorMap.from_arrays(lengths, dopings**2, values)
    with pytest.raises(ParameterError, match="finite"):
        PriorMap.from_arrays(lengths, dopings, np.where(values > -4.1, np.inf, values))
    with pytest.raises(ParameterError, match=r"\(n_family, n_doping, n_length\)"):
        PriorMap.from_arrays(lengths, dopings, values[:, :5])


def _points(n_best, rng, k=8):
    """Training data from the bowl with its best at ``n_best``, at dopings near 2-3 (far from the best)."""
    lengths = np.geomspace(300.0, 3000.0, k)
    dopings = rng.uniform(2.0, 3.0, k)
    y = np.array(
        [
            -(4.0 + 0.3 * math.log(L / 1000.0) ** 2 + (d - n_best) ** 2 / 4.0)
            for L, d in zip(lengths, dopings, strict=True)
        ]
    )
    X = torch.tensor(
        np.stack([SPACE.to_unit({"stripe_length_um": L, "doping": d}) for L, d in zip(lengths, dopings, strict=True)])
    )
    return X, torch.tensor(y).unsqueeze(-1)


def _unit(length, doping):
    return torch.tensor(SPACE.to_unit({"stripe_length_um": length, "doping": doping})).unsqueeze(0)


def test_a_right_prior_predicts_where_no_data_are_and_the_plain_gp_cannot():
    rng = np.random.default_rng(0)
    X, Y = _points(5.0, rng)
    Yvar = torch.full_like(Y, 1e-4)
    with_prior, _ = fit_gp(X, Y, Yvar, prior=(_map(5.0), SPACE))
    plain, _ = fit_gp(X, Y, Yvar)
    assert isinstance(with_prior.mean_module, TwinPriorMean)
    truth = -(4.0 + 0.0)  # at the best (1000 um, 5.0): far from every training point
    with torch.no_grad():
        p = float(with_prior.posterior(_unit(1000.0, 5.0)).mean)
        q = float(plain.posterior(_unit(1000.0, 5.0)).mean)
    assert abs(p - truth) < 0.1
    assert abs(q - truth) > 3 * abs(p - truth)


def test_the_campaigns_scans_recalibrate_the_family_parameter():
    """The presets say the best doping is 5; the data come from a bench whose best is 6.5: the fitted family
    parameter moves there, and the posterior's best doping with it."""
    rng = np.random.default_rng(1)
    lengths = np.geomspace(300.0, 3000.0, 10)
    dopings = rng.uniform(4.0, 7.5, 10)
    y = [-(4.0 + 0.3 * math.log(L / 1000.0) ** 2 + (d - 6.5) ** 2 / 4.0) for L, d in zip(lengths, dopings, strict=True)]
    X = torch.tensor(
        np.stack([SPACE.to_unit({"stripe_length_um": L, "doping": d}) for L, d in zip(lengths, dopings, strict=True)])
    )
    model, _ = fit_gp(
        X, torch.tensor(y).unsqueeze(-1), torch.full((10, 1), 1e-4, dtype=torch.float64), prior=(_map(5.0, True), SPACE)
    )
    state = model.mean_module.state()
    assert state["family_value_presets"] == 5.0
    assert abs(state["family_value"] - 6.5) < 0.5


def test_a_wrong_prior_does_not_override_the_data():
    """The map's best is at doping 1 but the bench's at 6: at the measured points the posterior follows the
    data, not the map."""
    rng = np.random.default_rng(2)
    lengths = np.geomspace(300.0, 3000.0, 12)
    dopings = np.linspace(0.5, 7.5, 12)
    rng.shuffle(dopings)
    y = torch.tensor(
        [-(4.0 + 0.3 * math.log(L / 1000.0) ** 2 + (d - 6.0) ** 2) for L, d in zip(lengths, dopings, strict=True)]
    )
    X = torch.tensor(
        np.stack([SPACE.to_unit({"stripe_length_um": L, "doping": d}) for L, d in zip(lengths, dopings, strict=True)])
    )
    model, _ = fit_gp(X, y.unsqueeze(-1), torch.full((12, 1), 1e-4, dtype=torch.float64), prior=(_map(1.0), SPACE))
    with torch.no_grad():
        mean = model.posterior(X).mean.squeeze(-1)
    assert float((mean - y).abs().max()) < 0.05


def test_the_nested_optimiser_takes_a_prior_and_records_it():
    opt = make_optimizer("nested", SPACE, seed=0, prior=_map(5.0))
    assert isinstance(opt, NestedOptimizer) and opt.state()["prior"] == "bowl"
    with pytest.raises(ParameterError, match="PriorMap"):
        make_optimizer("nested", SPACE, seed=0, prior=[1, 2, 3])
    with pytest.raises(ParameterError, match="film_doping_sd"):
        make_optimizer("nested", SPACE, seed=0, film_doping_sd=-0.1)


def test_the_film_scatter_is_estimated_from_the_films_made():
    opt = make_optimizer("nested", SPACE, seed=0, film_doping_sd=0.1)
    assert opt._film_scatter_sd() == pytest.approx(0.1)
    props = opt.suggest(2)
    for prop, (req, got) in zip(props, ((7.0, 7.3), (6.0, 5.9)), strict=True):
        params = {**prop.params, "doping": req}
        opt.ingest(
            [
                TrialResult(
                    prop.trial_index,
                    params,
                    "completed",
                    outcome={"threshold_uJ_cm2": 100.0, "threshold_err_uJ_cm2": 2.0},
                    observed_params={"doping": got},
                    observed_err={"doping": 0.02},
                )
            ]
        )
    assert opt._film_scatter_sd() == pytest.approx(math.sqrt((0.3**2 + 0.1**2) / 2))
    assert make_optimizer("nested", SPACE, seed=0)._film_scatter_sd() == 0.0  # off by default


def test_the_twin_map_is_the_twins_threshold_and_spans_the_1p_absorption():
    pm = twin_prior_map("twin", "cas_doped", SPACE, measured=False)
    presets = load_presets()
    own = presets.get("cas_doped")
    thr = float(ase_threshold_uJ_cm2(1062.0, 7.4, own, presets.setup))
    assert math.exp(-float(pm.predict(1062.0, 7.4))) == pytest.approx(thr, rel=0.02)
    assert pm.family_name == "film.intraband_loss_1p_per_cm"
    assert pm.family_value(pm.family_index) == pytest.approx(own.film.intraband_loss_1p_per_cm)
    # more 1P absorption puts the best doping lower: the family spans the benches' optima
    lengths = np.asarray(pm.stripe_length_um)[None, :]
    dopings = np.asarray(pm.doping)[:, None]
    best = [
        float(np.asarray(pm.doping)[np.argmax(pm.predict(lengths, dopings, k).max(axis=1))])
        for k in (0, len(pm.family) - 1)
    ]
    assert best[0] > 7.8 and best[1] < 7.0
    with pytest.raises(CampaignError, match="cannot read the prior's presets"):
        twin_prior_map(str(BENCHES / "no_such.toml"), "cas_doped", SPACE)


def test_the_prior_predicts_the_threshold_the_campaigns_scan_measures(RE):
    """The map is the kink of the plan's scan, not the model's gain condition: on a short stripe the kink lies
    well above the gain condition (on a long one a little below), and a prior without that has the wrong
    length dependence (its fitted depth then exaggerates the doping dependence)."""
    bench = twin_bench_devices(REPO / "examples" / "twin_bench.toml", seed=5)
    space = SearchSpace(
        fluence_uJ_cm2=(10.0, bench.config.bench.fluence_limit_uJ_cm2),
        stripe_length_um=(100.0, 4000.0),
        doping=(0.0, 7.9),
        fluence_limit_uJ_cm2=bench.config.bench.fluence_limit_uJ_cm2,
    )
    measured_map = twin_prior_map("twin", "cas_doped", space)
    model_map = twin_prior_map("twin", "cas_doped", space, measured=False)
    assert "as the scan measures" in measured_map.source
    lengths = (200.0, 1000.0, 2500.0)
    measured = []
    for length in lengths:
        result = RE(ase_fluence_scan(bench, "cas_doped-film", stripe_length_um=length)).plan_result
        measured.append(result["threshold_uJ_cm2"])
    predicted = [math.exp(-float(measured_map.predict(length, 7.4))) for length in lengths]
    model = [math.exp(-float(model_map.predict(length, 7.4))) for length in lengths]
    for got, want in zip(measured, predicted, strict=True):
        assert got == pytest.approx(want, rel=0.06)
    # the length dependence the scans show (short / long stripe) is the measured map's, not the model's
    shape = measured[0] / measured[1]
    assert shape == pytest.approx(predicted[0] / predicted[1], rel=0.06)
    assert abs(shape - model[0] / model[1]) > 0.15


def test_the_scan_models_smoothing_recovers_a_quadratic_and_needs_enough_points():
    lengths = np.geomspace(100.0, 4000.0, 8)
    dopings = np.linspace(6.0, 7.9, 4)
    x, d = np.meshgrid(np.log(lengths), dopings)
    ratio = np.exp(0.1 - 0.05 * (x - 7.0) ** 2 + 0.02 * (d - 7.0) * (x - 7.0))
    at = smooth_ln_ratio(lengths, dopings, ratio, lengths[None, :], dopings[:, None])
    assert np.allclose(at, np.log(ratio), atol=1e-10)
    # outside the grid: held at its edge
    assert smooth_ln_ratio(lengths, dopings, ratio, 50.0, 5.0) == pytest.approx(np.log(ratio[0, 0]), abs=1e-10)
    sparse = np.full_like(ratio, np.nan)
    sparse[0, :5] = 1.2
    assert np.all(smooth_ln_ratio(lengths, dopings, sparse, lengths, 7.0) == 0.0)


def test_a_prior_is_for_the_nested_strategy_only():
    with pytest.raises(CampaignError, match="nested strategy only"):
        CampaignConfig(strategy="random", prior="twin")
    cfg = CampaignConfig(prior=str(BENCHES / "bench_mid.toml"))
    assert CampaignConfig.from_dict(cfg.as_dict()) == cfg


def test_bench_presets_load_and_put_their_optima_where_their_headers_say():
    from twin.landscape import find_optimum

    optima = {}
    for path in sorted(BENCHES.glob("*.toml")):
        p = load_presets(path)
        optima[path.stem] = find_optimum(p.get("cas_doped"), p.setup).doping
        assert f"doping {optima[path.stem]:.2f} e/dot" in path.read_text()
    assert optima["bench_low"] < 7.4 < optima["bench_mid"] < 7.8 < optima["bench_high"] <= 7.9


def test_a_twin_guided_campaign_shows_prior_vs_data_in_status_and_report(tmp_path):
    from gainloop.campaign import run_campaign
    from gainloop.catalog import Catalog

    with Catalog(data_dir_path=tmp_path / "data") as cat:
        cfg = CampaignConfig(strategy="nested", seed=0, twin_seed=0, budget_lab_h=None, max_trials=3, prior="twin")
        summary = run_campaign(cat, cfg)
        status = campaign_status(cat, summary["campaign_uid"])
        from gainloop.report import build_report

        page = build_report(cat, summary["campaign_uid"], tmp_path / "report").index.read_text()
    assert "Twin prior versus the data" in page and page.count("<tr>") >= 1 + 3
    prior = status["prior"]
    assert prior["source"] == "twin" and prior["sample"] == "cas_doped"
    assert len(prior["trials"]) == 3
    for row in prior["trials"]:
        assert row["residual_ln"] == pytest.approx(
            math.log(row["threshold_uJ_cm2"] / row["predicted_threshold_uJ_cm2"])
        )
    # the shipped twin is this bench's truth: its prediction is within the scans' noise
    assert prior["rms_residual_ln"] < 0.15


def test_a_warm_start_from_a_query_trains_on_stored_scans_of_the_material_and_pins_them(tmp_path, RE):
    """``--warm-start sample_id=...``: scans measured on their own (``gainloop measure``) are the model's data;
    the query is pinned to the campaign's start, so a resume reads the same runs and never its own trials."""
    from gainloop.campaign import prepare_campaign, rebuild_trials, run_campaign
    from gainloop.catalog import Catalog
    from sim.devices import default_twin_bench_path

    with Catalog(data_dir_path=tmp_path / "data") as cat:
        bench = twin_bench_devices(default_twin_bench_path(), seed=2)
        RE.subscribe(cat.writer())
        stored = {}
        for length in (400.0, 1000.0):
            result = RE(ase_fluence_scan(bench, "cas_doped-film", stripe_length_um=length)).plan_result
            stored[length] = result["threshold_uJ_cm2"]
        RE(ase_fluence_scan(bench, "core-film", stripe_length_um=1000.0))  # another material: not used
        cfg = CampaignConfig(
            seed=1, twin_seed=1, budget_lab_h=None, max_trials=1, warm_start=("sample_id=cas_doped-film",)
        )
        prepared = prepare_campaign(cat, cfg, bench=twin_bench_devices(default_twin_bench_path(), seed=1))
        prepared.plan.close()
        warm = prepared.optimizer.warm_data()
        assert sorted((r.params["stripe_length_um"], r.params["doping"]) for r in warm) == [(400.0, 7.4), (1000.0, 7.4)]
        assert sorted(r.outcome["threshold_uJ_cm2"] for r in warm) == sorted(stored.values())
        assert prepared.optimizer.training_data()["X"].shape[0] == 2 and prepared.optimizer.history() == []
        done = run_campaign(cat, cfg)
        stored_cfg, trials, _, _ = rebuild_trials(cat, done["campaign_uid"])
        (query,) = stored_cfg.warm_start
        assert query.startswith("sample_id=cas_doped-film,before=")  # pinned: the campaign's own scan is later
        assert len(trials) == 1
        status = campaign_status(cat, done["campaign_uid"])
        assert status["warm_start"] == {"campaigns": [], "queries": [query], "completed_trials": 2}
        # a query that finds no usable scan of the material, or is malformed, is a clear error before anything runs
        with pytest.raises(CampaignError, match=r"selects no usable ase_fluence_scan run.*another material"):
            run_campaign(cat, CampaignConfig(max_trials=1, warm_start=("sample_id=core-film",)))
        with pytest.raises(CampaignError, match="is not key=value"):
            CampaignConfig(warm_start=("sample_id=cas_doped-film,oops",))
        with pytest.raises(CampaignError, match="only ase_fluence_scan runs"):
            CampaignConfig(warm_start=("plan_name=vsl_scan",))


def test_a_warm_start_trains_on_an_earlier_campaigns_trials_and_never_measures_them_again(tmp_path):
    from gainloop.campaign import prepare_campaign, rebuild_trials, run_campaign
    from gainloop.catalog import Catalog
    from sim.devices import default_twin_bench_path, twin_bench_devices

    with Catalog(data_dir_path=tmp_path / "data") as cat:
        first = run_campaign(cat, CampaignConfig(seed=0, twin_seed=0, budget_lab_h=None, max_trials=3))
        uid = first["campaign_uid"]
        cfg = CampaignConfig(seed=1, twin_seed=1, budget_lab_h=None, max_trials=1, warm_start=(uid[:8],))
        prepared = prepare_campaign(cat, cfg, bench=twin_bench_devices(default_twin_bench_path(), seed=1))
        prepared.plan.close()
        opt = prepared.optimizer
        assert len(opt.warm_data()) == 3 and opt.history() == [] and opt.best() is None
        assert opt.training_data()["X"].shape[0] == 3  # the model's data from the start
        assert opt.next_trial_index() == 0 and opt.lab_state().films == (7.4,)  # not this bench's films
        second = run_campaign(cat, cfg)
        stored_cfg, trials, _, _ = rebuild_trials(cat, second["campaign_uid"])
        assert stored_cfg.warm_start == (uid,)  # recorded resolved in the campaign's record
        assert len(trials) == 1  # only its own trial was measured
        status = campaign_status(cat, second["campaign_uid"])
        assert status["warm_start"] == {"campaigns": [uid], "queries": [], "completed_trials": 3}
        with pytest.raises(CampaignError, match="same material"):
            other = CampaignConfig(material="PbS-core/EMII", max_trials=1, warm_start=(uid,))
            prepare_campaign(cat, other, bench=twin_bench_devices(default_twin_bench_path(), seed=1))
        with pytest.raises(CampaignError, match="warm start"):
            run_campaign(cat, CampaignConfig(max_trials=1, warm_start=("ffffffff",)))
    with pytest.raises(CampaignError, match="nested strategy only"):
        CampaignConfig(strategy="grid", warm_start=(uid,))
