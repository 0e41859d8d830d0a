"""The optimiser's protocol: validation, safe set, failed results, idempotence, determinism, cost."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from core.errors import GainloopError, ParameterError
from optimizer import (
    STRATEGIES,
    CostModel,
    LabState,
    NotEnoughDataError,
    Proposal,
    SearchSpace,
    TrialResult,
    make_optimizer,
)
from twin.landscape import feasible_threshold

LIMIT = 3000.0


@pytest.fixture(scope="module")
def sample(presets):
    return presets.get("cas_doped")


def continuous_space(**kw):
    return SearchSpace(
        fluence_uJ_cm2=(10.0, 4000.0),
        stripe_length_um=(10.0, 4000.0),
        doping=(0.0, 7.92),
        fluence_limit_uJ_cm2=LIMIT,
        **kw,
    )


def discrete_space():
    return SearchSpace(
        fluence_uJ_cm2=(10.0, 3000.0),
        stripe_length_um=(10.0, 4000.0),
        doping=[0.0, 0.47, 7.4],
        fluence_limit_uJ_cm2=LIMIT,
    )


def nested_result(prop, sample, setup, rng, rel=0.02):
    """The twin's threshold at a proposal, with relative noise ``rel``."""
    p = prop.params
    thr = float(feasible_threshold(p["stripe_length_um"], p["doping"], sample, setup))
    if not math.isfinite(thr) or thr > LIMIT:
        return TrialResult(prop.trial_index, p, "infeasible", reason="no ASE up to the fluence cap")
    out = {"threshold_uJ_cm2": thr * (1 + rel * rng.standard_normal()), "threshold_err_uJ_cm2": rel * thr}
    return TrialResult(prop.trial_index, p, "completed", out, lab_time_s=100.0)


def run(opt, n, sample, setup, seed=0, result=nested_result):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        opt.ingest([result(p, sample, setup, rng) for p in opt.suggest(1)])
    return opt


# ---- search space ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"doping": 1.0}, ["stripe_length_um", "10 to 4000 um"]),
        ({"stripe_length_um": 5.0, "doping": 1.0}, ["stripe_length_um 5", "10 to 4000 um"]),
        ({"stripe_length_um": 100.0, "doping": 9.0}, ["doping 9", "0 to 7.92"]),
        ({"stripe_length_um": 100.0, "doping": math.nan}, ["doping", "finite"]),
        ({"stripe_length_um": 100.0, "doping": 1.0, "fluence_uJ_cm2": 3500.0}, ["fluence_uJ_cm2 3500", "3000"]),
        ({"stripe_length_um": 100.0, "doping": 1.0, "colour": "red"}, ["colour", "allowed"]),
        ({"stripe_length_um": "long", "doping": 1.0}, ["stripe_length_um", "number"]),
    ],
)
def test_validate_names_the_key_and_the_allowed_range(params, words):
    with pytest.raises(ParameterError) as err:
        continuous_space().validate(params)
    for w in words:
        assert w in str(err.value)


def test_validate_discrete_doping_and_fixed_parameters():
    space = SearchSpace((10.0, 3000.0), (10.0, 4000.0), [0.0, 7.4], fixed={"exposure_s": 3.0})
    assert space.validate({"stripe_length_um": 100.0, "doping": 7.4, "exposure_s": 3.0})["doping"] == 7.4
    with pytest.raises(ParameterError, match=r"not in the film library.*\[0.0, 7.4\]"):
        space.validate({"stripe_length_um": 100.0, "doping": 3.0})
    with pytest.raises(ParameterError, match="exposure_s"):
        space.validate({"stripe_length_um": 100.0, "doping": 7.4, "exposure_s": 1.0})
    with pytest.raises(ParameterError, match="fluence_uJ_cm2"):
        space.validate({"stripe_length_um": 100.0, "doping": 7.4}, joint=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fluence_uJ_cm2": (100.0, 10.0), "stripe_length_um": (10.0, 4000.0), "doping": (0.0, 7.9)},
        {"fluence_uJ_cm2": (0.0, 10.0), "stripe_length_um": (10.0, 4000.0), "doping": (0.0, 7.9)},
        {"fluence_uJ_cm2": (10.0, 100.0), "stripe_length_um": (10.0, 4000.0), "doping": []},
        {"fluence_uJ_cm2": (10.0, 100.0), "stripe_length_um": (10.0, 4000.0), "doping": "high"},
        {"fluence_uJ_cm2": (10.0, 100.0), "stripe_length_um": (10.0, 4000.0), "doping": (0, 1), "fixed": {"doping": 1}},
        {
            "fluence_uJ_cm2": (10.0, 100.0),
            "stripe_length_um": (10.0, 4000.0),
            "doping": (0.0, 7.9),
            "fluence_limit_uJ_cm2": 5.0,
        },
    ],
)
def test_bad_spaces_are_refused(kwargs):
    with pytest.raises(ParameterError):
        SearchSpace(**kwargs)


def test_space_round_trips_through_config_and_the_unit_cube():
    space = continuous_space(fixed={"exposure_s": 3.0})
    again = SearchSpace.from_dict(json.loads(json.dumps(space.as_dict())))
    assert again == space
    lib = SearchSpace.from_dict({**discrete_space().as_dict()})
    assert lib.discrete and lib.doping == [0.0, 0.47, 7.4]
    p = {"fluence_uJ_cm2": 200.0, "stripe_length_um": 1000.0, "doping": 7.4}
    u = space.to_unit(p, space.dims(joint=True))
    assert np.all((u >= 0) & (u <= 1))
    back = space.from_unit(u, space.dims(joint=True))
    assert all(math.isclose(back[k], p[k], rel_tol=1e-12) for k in p)
    assert space.from_unit([1.0, 1.0, 1.0], space.dims(joint=True))["fluence_uJ_cm2"] == LIMIT  # capped
    assert lib.from_unit([0.5, 0.06])["doping"] == 0.47  # snapped to the library


# ---- cost --------------------------------------------------------------------------------
def test_cost_prices_films_slit_and_measurement():
    cm = CostModel()
    state = LabState(current_doping=7.4, films=(0.47,), stripe_length_um=1000.0)
    scan = cm.scan_points * cm.acquisition_s
    assert cm.trial_cost_s({"stripe_length_um": 1000.0, "doping": 7.4}, state) == pytest.approx(scan)
    assert cm.trial_cost_s({"stripe_length_um": 1500.0, "doping": 7.4}, state) == pytest.approx(scan + 1.0)
    assert cm.trial_cost_s({"stripe_length_um": 1000.0, "doping": 0.47}, state) == pytest.approx(scan + 20.0)
    new = cm.trial_cost_s({"stripe_length_um": 1000.0, "doping": 3.0}, state)
    assert new == pytest.approx(scan + 6 * 3600.0 + 20.0)
    joint = cm.trial_cost_s({"stripe_length_um": 1000.0, "doping": 7.4, "fluence_uJ_cm2": 100.0}, state)
    assert joint == pytest.approx(cm.acquisition_s)
    two = [{"stripe_length_um": 1000.0, "doping": 3.0}, {"stripe_length_um": 1000.0, "doping": 3.0}]
    assert cm.batch_cost_s(two, state) == pytest.approx(new + scan)  # the second reuses the new film
    with pytest.raises(ParameterError, match="slit_speed"):
        CostModel(slit_speed_um_per_s=0.0)


def test_the_vectorised_cost_is_the_recorded_cost():
    cm = CostModel()
    state = LabState(current_doping=7.4, films=(0.47,), stripe_length_um=1000.0)
    length = torch.tensor([1000.0, 1500.0, 1000.0, 250.0], dtype=torch.float64, requires_grad=True)
    doping = torch.tensor([7.4, 7.4, 0.47, 3.0], dtype=torch.float64)
    for joint in (False, True):
        fluence = {"fluence_uJ_cm2": 100.0} if joint else {}
        cost = cm.cost_s(length, doping, state, joint=joint)
        assert cost.dtype == torch.float64 and cost.shape == (4,)
        record = [
            cm.trial_cost_s({"stripe_length_um": v, "doping": d, **fluence}, state)
            for v, d in zip(length.tolist(), doping.tolist(), strict=True)
        ]
        assert cost.tolist() == record  # one formula: the same numbers to the last bit
    # differentiable in stripe length (the slit move), as an acquisition polished by gradient needs
    cost.sum().backward()
    speed = cm.slit_speed_um_per_s
    assert length.grad.tolist() == pytest.approx([0.0, 1.0 / speed, 0.0, -1.0 / speed])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_with_nothing_mounted_a_new_film_is_not_free_and_decision_and_record_agree(strategy):
    cm = CostModel()
    joint = False  # every strategy measures a trial by a fluence scan
    meas = cm.measurement_s(joint)
    opt = make_optimizer(strategy, continuous_space(), seed=0, cost=cm, lab_state=LabState(films=(5.0,)))
    state = opt.lab_state()
    assert state.current_doping is None and state.stripe_length_um is None  # nothing mounted, slit unknown
    fluence = {"fluence_uJ_cm2": 100.0} if joint else {}
    new = {"stripe_length_um": 300.0, "doping": 3.0, **fluence}
    made = {"stripe_length_um": 300.0, "doping": 5.0, **fluence}
    record = [cm.trial_cost_s(p, state) for p in (new, made)]
    assert record == pytest.approx([cm.new_film_s + cm.sample_change_s + meas, cm.sample_change_s + meas], rel=1e-12)
    # the decision: what the strategy's acquisition divides by, at the same points (unit cube)
    X = torch.tensor(np.array([opt.space.to_unit(p, opt.space.dims(joint)) for p in (new, made)]))
    assert opt.expected_cost_s(X).tolist() == pytest.approx(record, rel=1e-12)
    # the first proposal on an empty bench makes a film: its record is not free, and is the decision's price
    empty = make_optimizer(strategy, continuous_space(), seed=0, cost=cm, lab_state=LabState())
    (p,) = empty.suggest(1)
    assert p.expected_cost_s == pytest.approx(cm.new_film_s + cm.sample_change_s + meas, rel=1e-12)
    u = torch.tensor(empty.space.to_unit(p.params, empty.space.dims(joint)))
    assert float(empty.expected_cost_s(u, LabState())) == pytest.approx(p.expected_cost_s, rel=1e-12)


@pytest.mark.parametrize(
    ("strategy", "cost", "n"),
    [
        # films cheap enough (never free) that the search makes new ones: every price is checked
        ("nested", CostModel(new_film_s=300.0), 9),
    ],
)
def test_the_cost_the_acquisition_divides_by_is_the_cost_the_proposal_records(strategy, cost, n, sample, setup):
    result = nested_result
    opt = make_optimizer(strategy, continuous_space(), seed=4, cost=cost, lab_state=LabState(current_doping=7.4))
    meas = cost.measurement_s(joint=False)
    rng = np.random.default_rng(0)
    n_bo, n_new = 0, 0
    for _ in range(n):
        before = opt.lab_state()
        (p,) = opt.suggest(1)
        assert p.expected_cost_s == cost.trial_cost_s(p.params, before)  # priced from the state it starts from
        if not p.predicted.get("design"):
            (last,) = opt.state()["last_acquisition"]
            assert last["trial_index"] == p.trial_index
            assert last["cost_s"] == pytest.approx(p.expected_cost_s, rel=1e-9)
            assert p.acquisition_value == pytest.approx(last["log_acquisition"] - math.log(last["cost_s"] / meas))
            n_bo += 1
            if not cost.film_cost_s(p.params["doping"], before) < cost.new_film_s:
                n_new += 1
                assert p.expected_cost_s >= cost.new_film_s + cost.sample_change_s + meas
        opt.ingest([result(p, sample, setup, rng)])
    assert n_bo >= 4 and n_new >= 1


# ---- records -----------------------------------------------------------------------------
def test_records_are_json_and_round_trip():
    r = TrialResult(3, {"stripe_length_um": 100.0, "doping": 7.4}, "failed", {"threshold_uJ_cm2": math.nan}, "x")
    d = json.loads(json.dumps(r.as_dict(), allow_nan=False))
    assert d["outcome"]["threshold_uJ_cm2"] is None
    back = TrialResult.from_dict(d)
    assert back.trial_index == 3 and back.status == "failed" and math.isnan(back.outcome["threshold_uJ_cm2"])
    p = Proposal(np.int64(4), {"stripe_length_um": 100.0, "doping": 7.4}, {"threshold_uJ_cm2": 90.0}, 98.0, -2.0)
    assert Proposal.from_dict(json.loads(json.dumps(p.as_dict(), allow_nan=False))) == p
    with pytest.raises(ParameterError, match="status"):
        TrialResult(0, {}, "done")
    with pytest.raises(ParameterError, match="trial_index"):
        TrialResult(-1, {})


def test_make_optimizer_refuses_bad_arguments():
    space = continuous_space()
    with pytest.raises(ParameterError, match="strategy"):
        make_optimizer("annealing", space, seed=0)
    with pytest.raises(ParameterError, match="objectives"):
        make_optimizer("nested", space, seed=0, objectives=("gnet",))
    with pytest.raises(ParameterError, match="batch_size"):
        make_optimizer("nested", space, seed=0, batch_size=0)
    with pytest.raises(ParameterError, match="seed"):
        make_optimizer("random", space, seed=-1)


def test_strategies_are_named_once_and_built_by_name():
    assert STRATEGIES == ("nested", "random", "grid")
    for name in STRATEGIES:
        opt = make_optimizer(name, continuous_space(), seed=0)
        assert opt.strategy == name and opt.joint is False
    with pytest.raises(ParameterError, match="allowed: nested, random, grid"):
        make_optimizer("bayes", continuous_space(), seed=0)
    with pytest.raises(ParameterError, match="allowed: nested, random, grid"):
        make_optimizer("joint", continuous_space(), seed=0)  # removed: it never reached the optimum


# ---- failed results, idempotence ---------------------------------------------------------
def _params(length=1000.0, doping=7.4):
    return {"stripe_length_um": length, "doping": doping}


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ({"threshold_uJ_cm2": math.nan, "threshold_err_uJ_cm2": 1.0}, "nan"),
        ({"threshold_uJ_cm2": math.inf, "threshold_err_uJ_cm2": 1.0}, "inf"),
        ({"threshold_uJ_cm2": -5.0, "threshold_err_uJ_cm2": 1.0}, "positive"),
        ({"threshold_uJ_cm2": 90.0, "threshold_err_uJ_cm2": math.nan}, "threshold_err"),
        ({}, "without threshold"),
        ({"threshold_uJ_cm2": "ninety"}, "ninety"),
    ],
)
def test_unusable_outcomes_are_recorded_as_failed_and_never_fitted(outcome, reason):
    opt = make_optimizer("nested", continuous_space(), seed=0)
    good = [TrialResult(i, _params(200.0 * (i + 1)), "completed", {"threshold_uJ_cm2": 100.0 + i}) for i in range(4)]
    opt.ingest(good)
    opt.ingest([TrialResult(4, _params(500.0), "completed", outcome)])
    rec = opt.history()[-1]
    assert rec.status == "failed" and reason in rec.reason
    data = opt.training_data()
    assert data["X"].shape[0] == 4 and bool(np.isfinite(data["Y"].numpy()).all())
    (p,) = opt.suggest(1)  # and suggesting still works
    opt.space.validate(p.params)


def test_out_of_space_params_are_failed_with_the_reason():
    opt = make_optimizer("nested", continuous_space(), seed=0)
    opt.ingest([TrialResult(0, _params(length=9000.0), "completed", {"threshold_uJ_cm2": 90.0})])
    assert opt.history()[0].status == "failed" and "outside the search space" in opt.history()[0].reason
    opt.ingest([TrialResult(1, {"doping": 7.4}, "infeasible")])
    assert opt.history()[1].status == "failed" and "stripe_length_um" in opt.history()[1].reason


def test_ingest_is_idempotent_per_trial_index():
    opt = make_optimizer("nested", continuous_space(), seed=0)
    r = TrialResult(0, _params(), "completed", {"threshold_uJ_cm2": 95.0, "threshold_err_uJ_cm2": 2.0})
    opt.ingest([r])
    opt.ingest([r])
    opt.ingest([r.as_dict()])
    assert opt.state()["n_observations"] == 1 and len(opt.history()) == 1
    assert opt.training_data()["X"].shape[0] == 1


# ---- the safe set over many seeds and adversarial histories ------------------------------
def _adversarial_histories():
    p = _params
    return {
        "empty": [],
        "all_nan": [TrialResult(i, p(100.0 * (i + 1)), "completed", {"threshold_uJ_cm2": math.nan}) for i in range(5)],
        "all_infeasible": [TrialResult(i, p(10.0 * (i + 1), 0.0), "infeasible") for i in range(5)],
        "mixed": [
            TrialResult(0, p(10.0, 0.0), "completed", {"threshold_uJ_cm2": 1e9, "threshold_err_uJ_cm2": 0.0}),
            TrialResult(1, p(4000.0, 7.92), "completed", {"threshold_uJ_cm2": 1e-6, "threshold_err_uJ_cm2": 1e-9}),
            TrialResult(2, p(1000.0, 7.4), "completed", {"threshold_uJ_cm2": math.inf}),
            TrialResult(3, p(1000.0, 7.4), "failed", {}, "spectrometer timeout"),
            TrialResult(4, p(1000.0, 7.4), "infeasible", {}, "no lasing"),
            TrialResult(5, p(1000.0, 7.4), "completed", {"threshold_uJ_cm2": 80.0, "threshold_err_uJ_cm2": 1.0}),
            TrialResult(6, p(1000.0, 7.4), "completed", {"threshold_uJ_cm2": 120.0, "threshold_err_uJ_cm2": 1.0}),
            TrialResult(7, p(20000.0, 7.4), "completed", {"threshold_uJ_cm2": 5.0}),
            TrialResult(8, p(1000.0, 7.4), "abandoned"),
        ],
        "duplicates": [
            TrialResult(i, p(500.0, 7.4), "completed", {"threshold_uJ_cm2": 100.0, "threshold_err_uJ_cm2": 0.0})
            for i in range(6)
        ],
    }


@pytest.mark.parametrize("strategy", ["nested", "random", "grid"])
@pytest.mark.parametrize("history", list(_adversarial_histories()))
def test_proposals_stay_in_the_space_and_the_safe_set(strategy, history):
    results = _adversarial_histories()[history]
    for space in (continuous_space(), discrete_space()):
        for seed in range(2):
            opt = make_optimizer(strategy, space, seed=seed, lab_state=LabState(current_doping=7.4))
            opt.ingest(results)
            for p in opt.suggest(2):
                space.validate(p.params)
                assert p.params.get("fluence_uJ_cm2", 0.0) <= LIMIT
                assert math.isfinite(p.expected_cost_s)
            json.dumps(opt.state(), allow_nan=False)


def test_nested_bo_proposals_stay_inside_over_many_seeds(sample, setup):
    for seed in range(4):
        space = continuous_space() if seed % 2 else discrete_space()
        opt = run(make_optimizer("nested", space, seed=seed), 7, sample, setup, seed=seed)
        for p in opt.pending() + opt.suggest(3):
            space.validate(p.params)
            lo, hi = space.stripe_length_um
            assert lo <= p.params["stripe_length_um"] <= hi


# ---- determinism, resume, pending --------------------------------------------------------
def test_same_seed_and_history_give_the_same_proposal(sample, setup):
    a = run(make_optimizer("nested", continuous_space(), seed=3), 6, sample, setup)
    b = make_optimizer("nested", continuous_space(), seed=3)
    b.ingest(a.history())
    pa, pb = a.suggest(2), b.suggest(2)
    assert [p.params for p in pa] == [p.params for p in pb]
    assert [p.trial_index for p in pa] == [p.trial_index for p in pb] == [6, 7]


@pytest.mark.parametrize("strategy", ["nested", "random", "grid"])
def test_a_resumed_campaign_proposes_what_the_uninterrupted_one_would(strategy, sample, setup):
    result = nested_result
    n = 6
    state = LabState(current_doping=7.4)
    whole = make_optimizer(strategy, continuous_space(), seed=11, lab_state=state)
    run(whole, n, sample, setup, result=result)
    resumed = make_optimizer(strategy, continuous_space(), seed=11, lab_state=state)
    resumed.ingest([r.as_dict() for r in reversed(whole.history())])  # order of re-ingestion does not matter
    assert resumed.suggest(1)[0].as_dict() == whole.suggest(1)[0].as_dict()


def test_pending_proposals_are_fantasised_and_not_repeated(sample, setup):
    opt = run(make_optimizer("nested", continuous_space(), seed=1), 6, sample, setup)
    batch = opt.suggest(3)
    assert [p.trial_index for p in batch] == [6, 7, 8]
    units = {tuple(np.round(opt.space.to_unit(p.params), 6)) for p in batch}
    assert len(units) == 3
    assert [p.trial_index for p in opt.pending()] == [6, 7, 8]
    nxt = opt.suggest(1)[0]
    assert nxt.trial_index == 9 and tuple(np.round(opt.space.to_unit(nxt.params), 6)) not in units
    # a fresh optimiser told about the same pending proposals proposes the same next one
    other = make_optimizer("nested", continuous_space(), seed=1)
    other.ingest(opt.history())
    other.mark_pending([p.as_dict() for p in batch])
    assert other.suggest(1)[0].params == nxt.params
    opt.ingest([nested_result(batch[0], sample, setup, np.random.default_rng(0))])
    assert [p.trial_index for p in opt.pending()] == [7, 8, 9]


# ---- cost awareness ----------------------------------------------------------------------
def _stays_on_film(cost, sample, setup):
    """Doping of the next five proposals after four scans on the mounted 5.0 film."""
    space = continuous_space()
    opt = make_optimizer("nested", space, seed=2, cost=cost, lab_state=LabState(current_doping=5.0))
    rng = np.random.default_rng(0)
    dopings = []
    for _ in range(9):
        (p,) = opt.suggest(1)
        if opt.state()["n_observations"] >= 4:
            dopings.append(p.params["doping"])
        opt.ingest([nested_result(p, sample, setup, rng)])
    return dopings


def test_a_campaign_uses_its_film_before_asking_for_another(sample, setup):
    # cost-aware: the mounted film (5.0) is used for the next proposals ...
    assert _stays_on_film(CostModel(), sample, setup) == [5.0] * 5
    # ... while the same optimiser with free films leaves it at once (the test can fail)
    free = _stays_on_film(CostModel(new_film_s=0.0, sample_change_s=0.0), sample, setup)
    assert any(d != 5.0 for d in free)


def test_a_new_film_is_reused_rather_than_made_again(sample, setup):
    opt = run(make_optimizer("nested", continuous_space(), seed=5), 16, sample, setup)
    dopings = [r.params["doping"] for r in opt.history()]
    changes = sum(a != b for a, b in itertools.pairwise(dopings))
    assert 1 <= len(set(dopings)) - 1 <= 4 and changes == len(set(dopings)) - 1  # each film made once, then used


# ---- the posterior -----------------------------------------------------------------------
def test_posterior_is_the_model_the_next_proposal_comes_from(sample, setup):
    few = make_optimizer("nested", continuous_space(), seed=0)
    few.ingest([TrialResult(0, _params(), "completed", {"threshold_uJ_cm2": 95.0, "threshold_err_uJ_cm2": 2.0})])
    few.ingest([TrialResult(1, _params(500.0), "infeasible", {}, "no lasing up to the cap")])
    with pytest.raises(NotEnoughDataError, match=r"1 usable threshold.*at least 2") as err:
        few.posterior(1000.0, 7.4)
    assert isinstance(err.value, GainloopError)

    opt = run(make_optimizer("nested", continuous_space(), seed=0), 6, sample, setup)
    L, D = np.meshgrid(np.geomspace(10.0, 4000.0, 5), [0.0, 3.0, 7.4])
    post = opt.posterior(L, D)
    thr, sd = post["threshold_uJ_cm2"], post["sd_ln_threshold"]
    assert thr.shape == sd.shape == (3, 5)
    assert np.all(np.isfinite(thr) & (thr > 0)) and np.all(np.isfinite(sd) & (sd >= 0))
    assert post["n_thresholds"] == opt.training_data()["X"].shape[0] == 6
    json.dumps(post["messages"])
    # near a measured threshold (2 % noise) the median is close to it and the model is sure of it
    best = opt.best()
    at_best = opt.posterior(best["stripe_length_um"], best["doping"])
    assert at_best["threshold_uJ_cm2"].shape == ()
    assert float(at_best["threshold_uJ_cm2"]) == pytest.approx(best["threshold_uJ_cm2"], rel=0.1)
    assert float(at_best["sd_ln_threshold"]) < float(sd.max())
    # the proposal's prediction is the posterior's at its parameters (same fit, same seed)
    (p,) = opt.suggest(1)
    assert "design" not in p.predicted
    opt.clear_pending([p.trial_index])
    here = opt.posterior(p.params["stripe_length_um"], p.params["doping"])
    median = float(here["threshold_uJ_cm2"])
    assert median == pytest.approx(p.predicted["threshold_uJ_cm2"], rel=1e-9)
    assert median * float(here["sd_ln_threshold"]) == pytest.approx(p.predicted["threshold_err_uJ_cm2"], rel=1e-9)
    assert opt.suggest(1)[0] == p  # reading the posterior changes nothing the optimiser does


# ---- infeasible results, gnet, baselines ------------------------------------------
def test_infeasible_trials_become_a_constraint_not_a_number(sample, setup):
    opt = make_optimizer("nested", continuous_space(), seed=0)
    ok = [TrialResult(i, _params(300.0 * (i + 1), 7.4), "completed", {"threshold_uJ_cm2": 90.0 + i}) for i in range(4)]
    bad = [TrialResult(4 + i, _params(10.0 + i, 0.0), "infeasible", {}, "no lasing up to the cap") for i in range(2)]
    opt.ingest(ok + bad)
    data = opt.training_data()
    assert data["X"].shape[0] == 4 and data["X_infeasible"].shape[0] == 2
    (p,) = opt.suggest(1)
    assert 0.0 <= p.predicted["p_lasing"] <= 1.0
    assert "feasible" in opt.state()["model"]
    assert opt.best()["threshold_uJ_cm2"] == 90.0


def test_state_reports_model_hyperparameters(sample, setup):
    opt = run(make_optimizer("nested", continuous_space(), seed=0), 6, sample, setup)
    st = json.loads(json.dumps(opt.state(), allow_nan=False))
    assert st["n_observations"] == 6 and st["strategy"] == "nested"
    model = st["model"]["threshold"]
    assert set(model["lengthscales"]) == {"stripe_length_um", "doping"}
    assert model["noise"] > 0 and model["outputscale"] > 0
    assert st["last_acquisition"][0]["trial_index"] == 5


def test_gnet_gives_a_pareto_front(sample, setup):
    opt = make_optimizer("nested", continuous_space(), seed=0, objectives=("threshold", "gnet"))
    rng = np.random.default_rng(0)
    for _ in range(7):
        (p,) = opt.suggest(1)
        r = nested_result(p, sample, setup, rng)
        gnet = 50.0 * p.params["doping"] / 7.92 + 20.0 * math.log(p.params["stripe_length_um"] / 10.0)
        opt.ingest([TrialResult(r.trial_index, r.params, r.status, {**r.outcome, "gnet_per_cm": gnet})])
    for p in opt.suggest(2):
        opt.space.validate(p.params)
    front = opt.pareto()
    assert front and all({"threshold_uJ_cm2", "gnet_per_cm"} <= set(f) for f in front)
    assert "gnet" in opt.state()["model"]


def test_grid_goes_film_by_film_and_random_is_reproducible():
    grid = make_optimizer("grid", continuous_space(), seed=0, lab_state=LabState(current_doping=7.4))
    props = grid.suggest(30)
    dopings = [p.params["doping"] for p in props]
    changes = sum(a != b for a, b in itertools.pairwise(dopings))
    assert dopings[0] == 7.4 and changes == 4 and len(set(dopings)) == 5
    a = make_optimizer("random", continuous_space(), seed=9).suggest(3)
    b = make_optimizer("random", continuous_space(), seed=9).suggest(3)
    assert [p.params for p in a] == [p.params for p in b]
