"""Occupancy statistics: the thresholds that follow from statistics alone, and the tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from core.errors import ParameterError
from twin.occupancy import (
    GainTable,
    doping_distribution,
    exciton_distribution,
    gain_threshold,
    normalized_absorption,
    normalized_gain,
    per_dot_absorption,
    poisson_mean_for_filling,
)


def test_neutral_eightfold_threshold_is_4036():
    assert gain_threshold(0.0, g=8, kind="fixed") == pytest.approx(4.0355, abs=5e-4)


def test_fixed_seven_electrons_threshold_is_lambert_w_of_one():
    assert gain_threshold(7.0, g=8, kind="fixed") == pytest.approx(float(special.lambertw(1.0).real), abs=1e-6)
    assert round(gain_threshold(7.0, g=8, kind="fixed"), 3) == 0.567


def test_uncapped_closed_form_for_twofold_material_small_doping():
    # g = 2 (CdSe-like): neutral threshold from <min(N,2)> = 1 under Poisson statistics
    n = gain_threshold(0.0, g=2, kind="fixed")
    p = exciton_distribution(n, 60)
    assert float(p @ np.minimum(np.arange(61), 2)) == pytest.approx(1.0, abs=1e-9)


def test_mix_of_seven_and_eight_gives_w_of_fraction():
    # fraction f7 of 7-electron dots: N_th = W(f7)
    for doping in (7.2, 7.5, 7.8):
        f7 = 8.0 - doping
        assert gain_threshold(doping, 8, "fixed") == pytest.approx(float(special.lambertw(f7).real), abs=1e-6)


def test_doped_thresholds_for_the_three_distributions_match_the_notes():
    assert gain_threshold(7.4, 8, "fixed") == pytest.approx(0.402, abs=2e-3)
    assert gain_threshold(7.4, 8, "binomial") == pytest.approx(0.430, abs=2e-3)
    assert gain_threshold(7.4, 8, "poisson") == pytest.approx(0.480, abs=2e-3)
    assert poisson_mean_for_filling(7.4, 8) == pytest.approx(9.43, abs=0.01)


def test_exciton_yield_rescales_the_nominal_threshold():
    assert gain_threshold(0.0, 8, "fixed", exciton_yield=0.917) == pytest.approx(4.0355 / 0.917, abs=1e-3)


def test_per_dot_absorption_limits():
    assert per_dot_absorption(0, 0, 8) == 1.0
    assert per_dot_absorption(8, 0, 8) == -1.0
    assert per_dot_absorption(1, 7, 8) == pytest.approx(-1 / 8)


@pytest.mark.parametrize("kind", ["fixed", "binomial", "poisson"])
def test_doping_distributions_are_normalised_with_the_requested_filling(kind):
    q = doping_distribution(np.array([0.0, 2.5, 7.4]), 8, kind)
    assert np.allclose(q.sum(axis=-1), 1.0)
    filling = q @ np.minimum(np.arange(q.shape[-1]), 8)
    assert np.allclose(filling, [0.0, 2.5, 7.4], atol=1e-6)


def test_poisson_doping_spills_into_1p():
    q = doping_distribution(7.4, 8, "poisson")
    assert float(q @ np.arange(q.size)) == pytest.approx(9.43, abs=0.01)
    assert float(q[9:].sum()) > 0.3


def test_absorption_runs_from_one_to_minus_one():
    a = normalized_absorption(np.array([0.0, 60.0]), 0.0, 8, "poisson")
    assert a[0] == pytest.approx(1.0)
    assert a[1] == pytest.approx(-1.0, abs=1e-6)
    assert np.all(np.diff(normalized_gain(np.linspace(0, 20, 50), 3.0, 8, "binomial")) > 0)


@pytest.mark.parametrize("kind", ["fixed", "binomial", "poisson"])
def test_gain_table_matches_exact_statistics(kind):
    rng = np.random.default_rng(1)
    mean = rng.uniform(0, 30, 400)
    hi = 7.9 if kind == "poisson" else 8.0
    dop = rng.uniform(0, hi, 400)
    table = GainTable(8, kind)
    assert np.max(np.abs(table.gain(mean, dop) - normalized_gain(mean, dop, 8, kind))) < 1e-4


@pytest.mark.parametrize(
    ("mean", "doping", "kind", "match"),
    [
        (math.nan, 0.0, "fixed", "finite"),
        (-1.0, 0.0, "fixed", "out of range"),
        (1.0, 8.5, "fixed", "out of range"),
        (1.0, 7.95, "poisson", "out of range"),
        (1.0, 1.0, "lognormal", "unknown doping distribution"),
    ],
)
def test_bad_inputs_raise_clear_errors(mean, doping, kind, match):
    with pytest.raises(ParameterError, match=match):
        normalized_absorption(mean, doping, 8, kind)
