"""Lab lifetime analysis (plans.analysis._lifetimes) on synthetic traces with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plans.analysis._lifetimes import biexciton_lifetime, fit_exponential, gain_lifetime
from plans.analysis._thresholds import AnalysisError

# ----------------------------------------------------------------------------- exponential fit


def test_exponential_fit_recovers_tau_within_its_uncertainty():
    rng = np.random.default_rng(11)
    t = np.linspace(0.0, 1500.0, 151)
    y = -0.08 * np.exp(-t / 230.0) - 0.01 + rng.normal(0.0, 1e-3, t.size)
    fit = fit_exponential(t, y)
    assert abs(fit.tau_ps - 230.0) < 3.0 * fit.tau_err_ps
    assert 0.5 < fit.tau_err_ps < 15.0
    assert fit.amplitude == pytest.approx(-0.08, abs=3 * fit.amplitude_err)
    assert fit.offset == pytest.approx(-0.01, abs=3 * fit.offset_err)
    assert fit.residual_rms == pytest.approx(1e-3, rel=0.2)
    assert fit(t[:3]) == pytest.approx(-0.08 * np.exp(-t[:3] / 230.0) - 0.01, abs=5e-3)


@pytest.mark.parametrize("known_sigma", [False, True])
def test_exponential_fit_uncertainty_is_calibrated(known_sigma):
    """About 68 % of repeated noisy fits lie within their own 1-sigma of the true tau."""
    rng = np.random.default_rng(5)
    t = np.linspace(100.0, 2000.0, 80)
    truth = 0.05 * np.exp(-t / 485.0) + 0.002
    pulls = []
    for _ in range(200):
        fit = fit_exponential(t, truth + rng.normal(0.0, 2e-3, t.size), sigma=2e-3 if known_sigma else None)
        pulls.append((fit.tau_ps - 485.0) / fit.tau_err_ps)
    inside = np.mean(np.abs(pulls) < 1.0)
    assert 0.58 < inside < 0.78
    assert abs(np.median(pulls)) < 0.25


def test_exponential_fit_without_offset_and_noiseless():
    t = np.linspace(10.0, 400.0, 40)
    fit = fit_exponential(t, 3.0 * np.exp(-t / 40.0), offset=False)
    assert fit.tau_ps == pytest.approx(40.0, rel=1e-8)
    assert fit.amplitude == pytest.approx(3.0 * math.exp(-10.0 / 40.0), rel=1e-8)
    assert fit.offset == 0.0 and fit.t_start_ps == 10.0


def test_exponential_fit_rejects_bad_data():
    t = np.linspace(0.0, 100.0, 20)
    with pytest.raises(AnalysisError, match="NaN"):
        fit_exponential(t, np.where(t > 50, math.nan, 1.0))
    with pytest.raises(AnalysisError, match="differ in length"):
        fit_exponential(t, np.ones(5))
    with pytest.raises(AnalysisError, match="at least"):
        fit_exponential([0.0, 1.0, 2.0], [3.0, 2.0, 1.0])
    with pytest.raises(AnalysisError, match="decay"):
        fit_exponential(t, 0.3 + np.random.default_rng(1).normal(0.0, 1e-3, t.size))
    with pytest.raises(AnalysisError, match="no significant decay"):
        noisy = 0.3 + 1e-3 * np.exp(-t / 30.0) + np.random.default_rng(1).normal(0.0, 1e-3, t.size)
        fit_exponential(t, noisy)
    with pytest.raises(AnalysisError, match="spike"):
        fit_exponential(t, np.r_[1.0, np.zeros(t.size - 1)] + 1e-9 * np.cos(t))
    with pytest.raises(AnalysisError, match="sigma"):
        fit_exponential(t, np.exp(-t / 20.0), sigma=0.0)


# ----------------------------------------------------------------------------- biexciton lifetime


def _bleach(t, singles, biexcitons, triexcitons=0.0, tau_xx=230.0, tau_3=60.0):
    """Bleach (negative) of single excitons (1.5 us), biexcitons and triexcitons (-> biexcitons)."""
    x = singles * np.exp(-t / 1.5e6)
    xx = biexcitons * np.exp(-t / tau_xx)
    # a triexciton first decays to a biexciton: its excess over one exciton is 2 -> 1 -> 0
    k3, k2 = 1.0 / tau_3, 1.0 / tau_xx
    xxx = triexcitons * (2.0 * np.exp(-k3 * t) + (np.exp(-k2 * t) - np.exp(-k3 * t)) * k3 / (k3 - k2))
    return -(x + xx + xxx)


def test_biexciton_lifetime_skips_triexcitons_and_recovers_tau_xx():
    rng = np.random.default_rng(2)
    t = np.linspace(0.0, 3000.0, 301)
    high = _bleach(t, 0.15, 0.06, 0.02) + rng.normal(0.0, 2e-4, t.size)
    low = _bleach(t, 0.024, 0.0012) + rng.normal(0.0, 2e-4, t.size)
    fit = biexciton_lifetime(t, high, low)
    assert abs(fit.tau_ps - 230.0) < 3.0 * fit.tau_err_ps
    assert fit.tau_err_ps < 15.0
    assert fit.fit_from_ps > 150.0  # started after the 60 ps triexciton decay
    assert fit.normalize_from_ps == pytest.approx(2000.0)
    assert fit.scale == pytest.approx(0.15 / 0.024, rel=0.05)


def test_biexciton_lifetime_with_known_noise_and_explicit_windows():
    rng = np.random.default_rng(9)
    t = np.linspace(0.0, 3000.0, 301)
    high = _bleach(t, 0.15, 0.05, tau_xx=485.0) + rng.normal(0.0, 2e-4, t.size)
    low = _bleach(t, 0.024, 0.001, tau_xx=485.0) + rng.normal(0.0, 2e-4, t.size)
    fit = biexciton_lifetime(t, high, low, normalize_from_ps=2500.0, fit_from_ps=100.0, sigma=2e-4)
    assert abs(fit.tau_ps - 485.0) < 3.0 * fit.tau_err_ps
    assert fit.fit.t_start_ps == 100.0 and fit.normalize_from_ps == 2500.0
    assert fit.as_dict()["tau_xx_ps"] == fit.tau_ps


def test_biexciton_lifetime_rejects_unusable_traces():
    t = np.linspace(0.0, 3000.0, 301)
    low = _bleach(t, 0.024, 0.0)
    with pytest.raises(AnalysisError, match="no multiexciton decay"):
        biexciton_lifetime(t, 5.0 * low, low)
    with pytest.raises(AnalysisError, match=r"low-pump trace.*differ in length"):
        biexciton_lifetime(t, _bleach(t, 0.1, 0.05), np.append(low, 0.0))
    with pytest.raises(AnalysisError, match="normalisation window"):
        biexciton_lifetime(t, _bleach(t, 0.1, 0.05), low, normalize_from_ps=2995.0)
    with pytest.raises(AnalysisError, match="zero"):
        biexciton_lifetime(t, _bleach(t, 0.1, 0.05), np.zeros(t.size))
    with pytest.raises(AnalysisError, match="sigma"):
        biexciton_lifetime(t, _bleach(t, 0.1, 0.05), low, sigma=-1.0)


# ----------------------------------------------------------------------------- gain lifetime


def _alpha(t):
    """alpha/alpha0: +0.1 before the pump, -0.5 at t = 0, recovering to +0.1 with 100 ps."""
    return np.where(t < 0, 0.1, 0.1 - 0.6 * np.exp(-np.clip(t, 0, None) / 100.0))


TAU_GAIN = 100.0 * math.log(6.0)  # 179.18 ps


def test_gain_lifetime_noiseless_interpolates_the_crossing():
    t = np.arange(-20.0, 600.0, 2.0)
    res = gain_lifetime(t, _alpha(t))
    assert res.tau_ps == pytest.approx(TAU_GAIN, abs=0.02)
    assert res.tau_err_ps == pytest.approx(2.0 / math.sqrt(12.0), rel=0.05)


def test_gain_lifetime_with_noise_is_unbiased_and_its_uncertainty_calibrated():
    rng = np.random.default_rng(4)
    t = np.linspace(0.0, 800.0, 801)
    clean = _alpha(t)
    results = [gain_lifetime(t, clean + rng.normal(0.0, 5e-3, t.size)) for _ in range(150)]
    taus = np.array([r.tau_ps for r in results])
    errs = np.array([r.tau_err_ps for r in results])
    # the first raw zero crossing of a noisy trace comes early; the fitted one does not
    assert abs(np.mean(taus) - TAU_GAIN) < 3 * np.std(taus) / math.sqrt(taus.size)
    inside = np.mean(np.abs(taus - TAU_GAIN) < errs)
    assert 0.55 < inside < 0.85
    assert np.median(errs) < 3.0
    assert results[0].noise == pytest.approx(5e-3, rel=0.2)


def test_gain_lifetime_respects_time_zero():
    t = np.arange(0.0, 600.0, 1.0)
    assert gain_lifetime(t + 10.0, _alpha(t), time_zero_ps=10.0).tau_ps == pytest.approx(TAU_GAIN, abs=0.05)


def test_gain_lifetime_clear_errors():
    t = np.linspace(0.0, 500.0, 101)
    with pytest.raises(AnalysisError, match="never shows net gain"):
        gain_lifetime(t, 0.2 + 0.1 * np.exp(-t / 50))
    with pytest.raises(AnalysisError, match="persists to the last delay"):
        gain_lifetime(t, -0.5 * np.exp(-t / 5000))
    with pytest.raises(AnalysisError, match="NaN"):
        gain_lifetime(t, np.full(t.size, math.nan))
    with pytest.raises(AnalysisError, match="noise"):
        gain_lifetime(t, _alpha(t), noise=-1.0)
