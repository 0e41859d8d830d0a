"""The optimiser models the doping as measured, its measurement error as input noise (NIGP).

``fit_gp_input_noise`` adds ``(d mu / dx)^2 sigma_x^2`` to each observation's noise from the slope of
the GP's mean; with no input error it is ``fit_gp`` exactly. The strategies train on the observed
doping (``TrialResult.observed_params``), price and snap to the films as measured, and a film whose
doping is unknown gives neither a film nor a data point.
"""

from __future__ import annotations

import math

import pytest
import torch

from optimizer import CostModel, LabState, SearchSpace, TrialResult, make_optimizer
from optimizer._models import DTYPE, fit_gp, fit_gp_input_noise

SPACE = SearchSpace(fluence_uJ_cm2=(10.0, 3000.0), stripe_length_um=(100.0, 4000.0), doping=(0.0, 7.9))


def _steep_data(n: int = 16):
    """A function of doping (column 1) flat at both ends and steep in the middle (u = 0.5)."""
    g = torch.Generator().manual_seed(3)
    X = torch.rand(n, 2, generator=g, dtype=DTYPE)
    X[:, 1] = torch.linspace(0.0, 1.0, n, dtype=DTYPE)
    Y = torch.tanh(12.0 * (X[:, 1:2] - 0.5)) + 0.01 * torch.randn(n, 1, generator=g, dtype=DTYPE)
    Yvar = torch.full((n, 1), 1e-4, dtype=DTYPE)
    return X, Y, Yvar


def test_input_noise_is_largest_where_the_mean_is_steep():
    X, Y, Yvar = _steep_data()
    X_sd = torch.zeros_like(X)
    X_sd[:, 1] = 0.02  # a doping error of 0.02 of the range
    _, _info, Yvar_eff = fit_gp_input_noise(X, Y, Yvar, X_sd, maxiter=50)
    extra = (Yvar_eff - Yvar).squeeze(-1)
    assert bool((extra >= 0).all())
    steep = (X[:, 1] - 0.5).abs() < 0.06
    flat = (X[:, 1] - 0.5).abs() > 0.4
    # slope ~12 at the centre: extra ~ (12 * 0.02)^2 = 0.06; the flat ends' slope is ~0
    assert float(extra[steep].min()) > 0.01
    assert float(extra[steep].min()) > 50 * float(extra[flat].max())


def test_input_noise_only_counts_the_columns_with_an_error():
    X, Y, Yvar = _steep_data()
    X_sd = torch.zeros_like(X)
    X_sd[:, 0] = 0.02  # an error on the column the data do not depend on
    _, _, Yvar_eff = fit_gp_input_noise(X, Y, Yvar, X_sd, maxiter=50)
    assert float((Yvar_eff - Yvar).max()) < 1e-3


def test_zero_input_error_is_exactly_the_plain_fit():
    X, Y, Yvar = _steep_data()
    torch.manual_seed(0)
    plain, _ = fit_gp(X, Y, Yvar, maxiter=50)
    torch.manual_seed(0)
    noisy, _, Yvar_eff = fit_gp_input_noise(X, Y, Yvar, torch.zeros_like(X), maxiter=50)
    assert Yvar_eff is Yvar
    Xt = torch.rand(16, 2, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    with torch.no_grad():
        a, b = plain.posterior(Xt), noisy.posterior(Xt)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.variance, b.variance)


def test_learned_noise_gains_the_input_noise_too():
    X, Y, _ = _steep_data()
    X_sd = torch.zeros_like(X)
    X_sd[:, 1] = 0.02
    _, _, Yvar_eff = fit_gp_input_noise(X, Y, None, X_sd, maxiter=50)
    steep = (X[:, 1] - 0.5).abs() < 0.06
    flat = (X[:, 1] - 0.5).abs() > 0.4
    assert Yvar_eff is not None and float(Yvar_eff[steep].min()) > 5 * float(Yvar_eff[flat].max())


def _results(measured: dict[int, float] | None, err: float):
    """Six nested results on two films; ``measured``: trial index -> the film's measured doping."""
    rows = []
    for i, (length, doping, thr) in enumerate(
        [
            (200, 7.4, 140.0),
            (500, 7.4, 100.0),
            (1000, 7.4, 93.0),
            (2500, 7.4, 105.0),
            (1000, 7.8, 82.0),
            (500, 7.8, 90.0),
        ]
    ):
        obs = {} if measured is None or i not in measured else {"doping": measured[i]}
        rows.append(
            TrialResult(
                i,
                {"stripe_length_um": float(length), "doping": doping},
                outcome={"threshold_uJ_cm2": thr, "threshold_err_uJ_cm2": 0.03 * thr},
                observed_params=obs,
                observed_err={"doping": err} if obs else {},
            )
        )
    return rows


def test_the_nested_model_trains_on_the_measured_doping_with_its_error():
    opt = make_optimizer("nested", SPACE, seed=0, lab_state=LabState(current_doping=7.4, films=(7.4,)))
    opt.ingest(_results({4: 7.71, 5: 7.71}, 0.04))
    data = opt.training_data()
    assert data["X"][4:, 1].tolist() == pytest.approx([7.71 / 7.9] * 2)
    assert data["X_sd"][4:, 1].tolist() == pytest.approx([0.04 / 7.9] * 2)
    assert data["X_sd"][:4].abs().sum() == 0  # the library film's doping is known
    assert 7.71 in opt.lab_state().films and 7.8 not in opt.lab_state().films
    assert opt.best()["doping"] == 7.71 and opt.best()["requested_doping"] == 7.8


def test_measured_equal_to_requested_with_no_error_proposes_as_before():
    a = make_optimizer("nested", SPACE, seed=2, lab_state=LabState(current_doping=7.4, films=(7.4,)))
    b = make_optimizer("nested", SPACE, seed=2, lab_state=LabState(current_doping=7.4, films=(7.4,)))
    a.ingest(_results(None, 0.0))
    b.ingest(_results({4: 7.8, 5: 7.8}, 0.0))
    pa, pb = a.suggest(), b.suggest()
    assert [p.params for p in pa] == [p.params for p in pb]


def test_a_film_never_measured_gives_no_film_and_no_data():
    opt = make_optimizer("nested", SPACE, seed=0, lab_state=LabState(current_doping=7.4, films=(7.4,)))
    rows = [
        *_results(None, 0.0)[:4],
        TrialResult(
            4,
            {"stripe_length_um": 1000.0, "doping": 7.8},
            status="failed",
            reason="film not measured: saturated",
            observed_params={"doping": math.nan},
        ),
    ]
    opt.ingest(rows)
    assert opt.lab_state().films == (7.4,)  # the unmeasured film at 7.8 is never used: it is not "there"
    assert opt.training_data()["X"].shape[0] == 4


def test_a_measured_doping_outside_the_range_is_modelled_at_its_edge():
    opt = make_optimizer("nested", SPACE, seed=0, lab_state=LabState(current_doping=7.4, films=(7.4,)))
    opt.ingest(_results({4: 8.3, 5: 8.3}, 0.03))
    assert float(opt.training_data()["X"][:, 1].max()) == pytest.approx(1.0 + opt.MODEL_CUBE_MARGIN)
    opt.suggest()  # fits and proposes without BoTorch's out-of-cube warning (warnings are errors here)


def test_a_new_film_costs_its_measurement_too():
    cost = CostModel(film_measurement_s=300.0)
    state = LabState(current_doping=7.4, films=(7.4, 6.0))
    base = CostModel()
    new = {"stripe_length_um": 1000.0, "doping": 5.0}
    existing = {"stripe_length_um": 1000.0, "doping": 6.0}
    assert cost.trial_cost_s(new, state) - base.trial_cost_s(new, state) == pytest.approx(300.0)
    assert cost.trial_cost_s(existing, state) == pytest.approx(base.trial_cost_s(existing, state))
    with pytest.raises(Exception, match="film_measurement_s"):
        CostModel(film_measurement_s=-1.0)


@pytest.mark.parametrize("strategy", ["nested", "grid"])
def test_a_design_repeats_its_film_as_it_came_out_not_the_request(strategy):
    """The design (or grid) plays several trials on one film: once made and measured, the next trial
    asks for that film at its measured doping (no new film), unless it could not be measured."""
    opt = make_optimizer(strategy, SPACE, seed=0, cost=CostModel())
    first = opt.suggest()[0]
    d0 = first.params["doping"]
    came_out = d0 - 0.1 if d0 > 1.0 else d0 + 0.1
    opt.ingest(
        TrialResult(
            first.trial_index,
            first.params,
            outcome={"threshold_uJ_cm2": 120.0, "threshold_err_uJ_cm2": 4.0},
            observed_params={"doping": came_out},
            observed_err={"doping": 0.01},
        )
    )
    second = opt.suggest()[0]
    assert second.params["doping"] == pytest.approx(came_out)
    assert second.expected_cost_s < 3600.0  # the film exists: no new one

    unmeasured = make_optimizer(strategy, SPACE, seed=0, cost=CostModel())
    p = unmeasured.suggest()[0]
    unmeasured.ingest(
        TrialResult(p.trial_index, p.params, "failed", reason="film not measured", observed_params={"doping": math.nan})
    )
    again = unmeasured.suggest()[0]
    assert again.params["doping"] == pytest.approx(d0) and again.expected_cost_s > 6 * 3600.0
