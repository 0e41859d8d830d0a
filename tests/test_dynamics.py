"""Auger/radiative cascade and TA traces of the twin (twin.dynamics): closed forms, exactness, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg

from core.errors import ParameterError
from plans.analysis._lifetimes import biexciton_lifetime, gain_lifetime
from twin import dynamics
from twin.occupancy import exciton_distribution, gain_threshold, normalized_absorption
from twin.presets import AugerParams

TAU_XX = 230.0


def _auger(r=0.5, gamma=1.0, tau_xx=TAU_XX, tau_x_ns=1500.0) -> AugerParams:
    return AugerParams(tau_xx_ps=tau_xx, electron_fraction=r, scaling_exponent=gamma, tau_x_radiative_ns=tau_x_ns)


def _sample(presets, name="cas", *, doping=None, kind=None, exciton_yield=None, **auger):
    base = presets.get(name)
    update = {"auger": base.auger.model_copy(update=auger)}
    if doping is not None:
        update["doping_ne"] = doping
    if kind is not None:
        update["doping_distribution"] = kind
    if exciton_yield is not None:
        update["exciton_yield"] = exciton_yield
    return base.model_copy(update=update)


# ----------------------------------------------------------------------------- rates: closed forms


@pytest.mark.parametrize(("n", "tau_ps"), [(2, 230.0), (3, 51.1), (4, 19.2), (5, 9.2)])
def test_neutral_multiexciton_lifetimes_follow_statistical_scaling(n, tau_ps):
    k = float(dynamics.auger_rate(n, n, _auger()))
    assert 1.0 / k == pytest.approx(TAU_XX * 4.0 / (n**2 * (n - 1)), rel=1e-12)
    assert 1.0 / k == pytest.approx(tau_ps, abs=0.06)


def test_neutral_lifetimes_do_not_depend_on_the_electron_fraction():
    n = np.arange(2, 12)
    assert dynamics.auger_rate(n, n, _auger(r=0.05)) == pytest.approx(dynamics.auger_rate(n, n, _auger(r=0.9)))


def test_negative_trion_lives_four_biexciton_lifetimes_at_half_electron_fraction():
    assert 1.0 / float(dynamics.auger_rate(2, 1, _auger(r=0.5))) == pytest.approx(4.0 * TAU_XX, rel=1e-12)
    # k_XX = 2 k_X- + 2 k_X+
    a = _auger(r=0.3)
    k_xx = float(dynamics.auger_rate(2, 2, a))
    assert k_xx == pytest.approx(2 * float(dynamics.auger_rate(2, 1, a)) + 2 * float(dynamics.auger_rate(1, 2, a)))


@pytest.mark.parametrize("r", [0.5, 0.06])
@pytest.mark.parametrize("n", [1, 3, 7, 12])
def test_charged_exciton_lifetime_closed_form(n, r):
    tau = 1.0 / float(dynamics.auger_rate(n + 1, 1, _auger(r=r)))
    assert tau == pytest.approx(4.0 * TAU_XX / (n * (n + 1) * r), rel=1e-12)


def test_seven_fold_charged_exciton_lives_a_seventh_of_tau_xx():
    assert 1.0 / float(dynamics.auger_rate(8, 1, _auger(r=0.5))) == pytest.approx(TAU_XX / 7.0, rel=1e-12)
    assert TAU_XX / 7.0 == pytest.approx(32.9, abs=0.05)


def test_scaling_exponent_weakens_the_pathway_count():
    # S(3, 3) = 18, so k_3 = (18/4)^gamma / tau_XX
    assert float(dynamics.auger_rate(3, 3, _auger(gamma=0.5))) == pytest.approx(math.sqrt(4.5) / TAU_XX)
    # the biexciton is the reference: tau_XX whatever gamma
    assert float(dynamics.auger_rate(2, 2, _auger(gamma=0.7))) == pytest.approx(1.0 / TAU_XX)


def test_no_auger_without_a_third_carrier():
    assert dynamics.auger_rate([1, 0, 5, 1], [1, 3, 0, 0], _auger()) == pytest.approx([0, 0, 0, 0])


def test_radiative_rate_single_exciton_and_band_edge_cap():
    a = _auger(tau_x_ns=1500.0)
    assert 1.0 / float(dynamics.radiative_rate(1, 1, a, 8)) == pytest.approx(1.5e6)
    assert float(dynamics.radiative_rate(20, 11, a, 8)) == pytest.approx(64.0 / 1.5e6)
    assert float(dynamics.recombination_rate(3, 3, a, 8)) == pytest.approx(4.5 / TAU_XX + 9.0 / 1.5e6)


def test_multiexciton_lifetime_of_a_sample(presets):
    core = _sample(presets, "core", tau_xx_ps=230.0, scaling_exponent=1.0, tau_x_radiative_ns=1500.0)
    tau = dynamics.multiexciton_lifetime_ps([1, 2, 3, 4, 5], core)
    assert tau[0] == pytest.approx(1.5e6)
    assert tau[1:] == pytest.approx([230.0, 51.11, 19.17, 9.20], rel=2e-3)
    # a trion X^7- in a sample with r = 1/2
    doped = _sample(presets, "cas_doped", tau_xx_ps=230.0, electron_fraction=0.5, scaling_exponent=1.0)
    assert float(dynamics.multiexciton_lifetime_ps(1, doped, n_electrons=7)) == pytest.approx(230.0 / 7, rel=1e-3)


# ----------------------------------------------------------------------------- cascade


def test_populations_match_the_matrix_exponential(presets):
    s = _sample(presets, "cas", doping=0.8, scaling_exponent=0.9, electron_fraction=0.2)
    t = np.array([0.0, 0.3, 7.0, 55.0, 420.0, 2900.0])
    pops = dynamics.exciton_populations(t, 6.0, s)
    m = pops.probabilities.shape[-1]
    p0 = exciton_distribution(6.0 * s.exciton_yield, m - 1)
    n = np.arange(m, dtype=float)
    for e, n_el in enumerate(pops.n_electrons):
        k = dynamics.recombination_rate(n_el + n, n, s.auger, s.degeneracy)
        gen = np.diag(-k) + np.diag(k[1:], 1)
        ref = np.stack([linalg.expm(gen * ti) @ p0 for ti in t])
        assert pops.probabilities[:, e, :] == pytest.approx(ref, abs=1e-11)


def test_populations_are_conserved_and_excitons_only_decay(presets):
    s = _sample(presets, "cas_doped", tau_xx_ps=485.0, scaling_exponent=1.0, electron_fraction=0.06)
    t = np.concatenate([[0.0], np.geomspace(0.01, 1e7, 120)])
    pops = dynamics.exciton_populations(t, 2.5, s)
    assert pops.total_probability() == pytest.approx(1.0, abs=1e-12)
    assert pops.doping_weights.sum() == pytest.approx(1.0, abs=1e-13)
    assert np.all(pops.probabilities >= -1e-15)
    mean = pops.mean_excitons()
    assert mean[0] == pytest.approx(2.5, rel=1e-12)
    assert np.all(np.diff(mean) <= 1e-13)
    assert mean[-1] < 1e-2  # 1e7 ps = 7 radiative lifetimes (or less, charged)


def test_large_and_weakly_scaled_cascade_stays_exact(presets):
    """Long chains with close rates defeat the eigenvector (Bateman) solution; this one must not fail."""
    s = _sample(presets, "core", doping=0.0, exciton_yield=1.0, scaling_exponent=0.3)
    t = np.array([0.0, 1.0, 100.0, 3000.0])
    pops = dynamics.exciton_populations(t, 60.0, s)
    assert pops.total_probability() == pytest.approx(1.0, abs=1e-12)
    assert np.all(pops.probabilities >= -1e-15)
    m = pops.probabilities.shape[-1]
    n = np.arange(m, dtype=float)
    k = dynamics.recombination_rate(n, n, s.auger, s.degeneracy)
    gen = np.diag(-k) + np.diag(k[1:], 1)
    ref = linalg.expm(gen * 100.0) @ exciton_distribution(60.0, m - 1)
    assert pops.probabilities[2, 0, :] == pytest.approx(ref, abs=1e-10)


def test_cascade_covers_many_delays_dopings_and_excitons(presets):
    # (speed lives in benchmarks/, not in timed tests)
    s = _sample(presets, "cas_doped", doping=7.9, tau_xx_ps=485.0, scaling_exponent=1.0, electron_fraction=0.5)
    t = np.linspace(0.0, 3000.0, 200)
    pops = dynamics.exciton_populations(t, 20.0, s)
    assert pops.probabilities.shape[1] >= 40 and pops.probabilities.shape[2] >= 55
    assert pops.total_probability() == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------------------------------- TA traces


@pytest.mark.parametrize(
    ("name", "doping", "kind", "mean"),
    [
        ("core", 0.0, "fixed", 13.2),
        ("cas", 0.47, "poisson", 3.0),
        ("cas_doped", 7.4, "poisson", 1.4),
        ("cas_doped", 7.3, "binomial", 0.2),
        ("cas_doped", 6.5, "fixed", 0.0),
    ],
)
def test_ta_at_time_zero_is_the_static_absorption(presets, name, doping, kind, mean):
    s = _sample(presets, name, doping=doping, kind=kind)
    a0 = float(dynamics.ta_trace(np.array([0.0]), mean, s)[0])
    ref = float(normalized_absorption(mean, doping, s.degeneracy, kind, s.exciton_yield))
    assert a0 == pytest.approx(ref, abs=1e-12)


def test_ta_relaxes_monotonically_to_the_unpumped_absorption(presets):
    s = _sample(presets, "cas_doped", tau_xx_ps=485.0, scaling_exponent=1.0, electron_fraction=0.06)
    t = np.concatenate([np.linspace(0.0, 3000.0, 301), [1e8]])
    alpha = dynamics.ta_trace(t, 1.5, s)
    unpumped = float(normalized_absorption(0.0, s.doping_ne, s.degeneracy, s.doping_distribution))
    assert alpha[0] < 0 < unpumped
    assert np.all(np.diff(alpha) >= -1e-13)
    assert alpha[-1] == pytest.approx(unpumped, abs=1e-9)
    diff = dynamics.ta_trace(t, 1.5, s, differential=True)
    assert diff == pytest.approx(alpha - unpumped, abs=1e-14)
    assert dynamics.ta_trace(t, 0.0, s, differential=True) == pytest.approx(0.0, abs=1e-14)


def test_ta_trace_keeps_the_shape_of_the_delays(presets):
    s = presets.get("cas")
    assert dynamics.ta_trace(np.zeros((2, 3)), 2.0, s).shape == (2, 3)
    assert np.ndim(dynamics.ta_trace(5.0, 2.0, s)) == 0


# ----------------------------------------------------------------------------- gain lifetime


def test_gain_lifetime_is_where_the_trace_returns_to_zero(presets):
    s = _sample(presets, "cas", tau_xx_ps=485.0, scaling_exponent=1.0)
    tau = dynamics.gain_lifetime_ps(11.4, s)
    before, after = dynamics.ta_trace(np.array([tau * (1 - 1e-6), tau * (1 + 1e-6)]), 11.4, s)
    assert before < 0.0 <= after
    assert 40.0 < tau < 80.0


def test_gain_lifetime_grows_with_pump_for_neutral_dots(presets):
    s = _sample(presets, "core", doping=0.0, kind="fixed", exciton_yield=1.0, tau_xx_ps=230.0, scaling_exponent=1.0)
    pumps = [4.2, 5.0, 6.5, 9.0, 13.0, 20.0, 35.0]
    taus = [dynamics.gain_lifetime_ps(p, s) for p in pumps]
    assert np.all(np.diff(taus) > 0)
    # saturates near 0.13 tau_XX (physics notes, section 2)
    assert taus[-1] == pytest.approx(0.13 * 230.0, rel=0.1)
    assert dynamics.gain_lifetime_ps(3.9, s) == 0.0  # below <N_th> = 4.036


def test_gain_lifetime_of_doped_dots_lengthens_as_the_electron_channel_weakens(presets):
    taus = [
        dynamics.gain_lifetime_ps(1.44, _sample(presets, "cas_doped", tau_xx_ps=485.0, electron_fraction=r))
        for r in (0.5, 0.2, 0.05)
    ]
    assert taus[0] < taus[1] < taus[2]


def test_gain_that_never_ends_is_infinite(presets):
    s = _sample(presets, "cas_doped", doping=8.0, kind="fixed")
    assert dynamics.gain_lifetime_ps(0.5, s) == math.inf


def test_lab_analysis_of_twin_traces_recovers_the_model(presets):
    """The lab's fits on noiseless twin traces: tau_XX of neutral dots and the gain lifetime."""
    s = _sample(presets, "core", doping=0.0, kind="fixed", tau_xx_ps=230.0, scaling_exponent=1.0)
    t = np.linspace(0.0, 3000.0, 301)
    high = dynamics.ta_trace(t, 1.0, s, differential=True)
    low = dynamics.ta_trace(t, 0.1, s, differential=True)
    assert biexciton_lifetime(t, high, low).tau_ps == pytest.approx(230.0, rel=0.02)
    pump = 3.0 * float(gain_threshold(0.0, 8, "fixed", s.exciton_yield))
    tg = np.linspace(0.0, 200.0, 401)
    lab = gain_lifetime(tg, dynamics.ta_trace(tg, pump, s))
    assert lab.tau_ps == pytest.approx(dynamics.gain_lifetime_ps(pump, s), abs=lab.tau_err_ps)


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("delays", "mean", "doping", "match"),
    [
        ([0.0, math.nan], 1.0, None, "finite"),
        ([0.0, -5.0], 1.0, None, "before the pump"),
        ([0.0, 1.0], -0.1, None, "out of range"),
        ([0.0, 1.0], math.nan, None, "out of range"),
        ([0.0, 1.0], 61.0, None, "allowed: 0 to 60"),
        ([0.0, 1.0], [1.0, 2.0], None, "scalar"),
        ([0.0, 1.0], 1.0, 7.95, "7.92"),
        ([0.0, 1.0], 1.0, -1.0, "doping"),
        ([0.0, 1.0], 1.0, math.nan, "doping"),
    ],
)
def test_bad_inputs_raise_clear_errors(presets, delays, mean, doping, match):
    s = presets.get("cas_doped")
    with pytest.raises(ParameterError, match=match):
        dynamics.ta_trace(np.array(delays), mean, s, doping=doping)


def test_bad_rate_and_lifetime_inputs(presets):
    with pytest.raises(ParameterError, match="counts >= 0"):
        dynamics.auger_rate(-1, 2, _auger())
    with pytest.raises(ParameterError, match="counts >= 0"):
        dynamics.auger_rate(2, math.nan, _auger())
    with pytest.raises(ParameterError, match="positive integer"):
        dynamics.radiative_rate(1, 1, _auger(), 0)
    with pytest.raises(ParameterError, match=">= 1"):
        dynamics.multiexciton_lifetime_ps(0, presets.get("core"))
    with pytest.raises(ParameterError, match="1-D"):
        dynamics.exciton_populations(np.zeros((2, 2)), 1.0, presets.get("core"))
    with pytest.raises(ParameterError, match="before the pump"):
        dynamics.exciton_populations([-1.0], 1.0, presets.get("core"))
