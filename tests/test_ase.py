"""Stripe excitation: gain, VSL, ASE input-output, spectra and the optimisation landscape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import ParameterError
from twin.ase import (
    ase_output,
    ase_threshold_uJ_cm2,
    lambertw_of_exp,
    max_fluence_uJ_cm2,
    stripe_gain,
    vsl_output,
)
from twin.gain import film_kappa, gain_peak_nm, modal_gain_per_cm
from twin.landscape import find_optimum, threshold_map
from twin.spectra import SPECTROMETER_AXIS_NM, absorption_spectrum, emission_spectrum, integrate_meV


def test_lambertw_of_exp_solves_its_equation_without_overflow():
    y = np.array([-50.0, -1.0, 0.0, 1.0, 10.0, 300.0, 5000.0])
    w = lambertw_of_exp(y)
    assert np.allclose(w + np.log(w), y, rtol=0, atol=1e-9)


def test_modal_gain_saturates_at_confined_absorption_minus_losses(presets):
    s = presets.get("cas_doped")
    film = s.film
    g_hi = float(modal_gain_per_cm(60.0, s.doping_ne, s))
    loss = film.waveguide_loss_per_cm + float(
        film.intraband_loss_1s_per_cm * 7.4 + film.intraband_loss_1p_per_cm * (9.435 - 7.4)
    )
    assert g_hi == pytest.approx(film.confinement * film.alpha0_per_cm - loss, rel=2e-3)
    # unpumped film absorbs: g_net < 0
    assert float(modal_gain_per_cm(0.0, s.doping_ne, s)) < 0


def test_gain_rises_with_fluence_then_saturates(presets):
    s = presets.get("cas_doped")
    kappa = film_kappa(s.film)
    g = modal_gain_per_cm(kappa * np.array([200.0, 750.0, 1200.0, 2200.0]), s.doping_ne, s)
    assert np.all(np.diff(g) > 0)
    assert g[3] - g[2] < 0.5 * (g[1] - g[0])


def test_vsl_curve_grows_exponentially_then_saturates(presets, setup):
    s = presets.get("cas_doped")
    g = float(stripe_gain(2200.0, 20.0, s.doping_ne, s, setup).net_gain_per_cm())
    lengths = np.array([10.0, 20.0, 30.0, 200.0, 400.0])
    out = vsl_output(lengths, 2200.0, s.doping_ne, s, setup)
    # early growth close to exp(g dl) (background makes it a little slower)
    assert math.log(out[2] / out[1]) == pytest.approx(g * 10e-4, rel=0.25)
    # saturated: from 200 to 400 um (g l ~ 40 -> 80) it grows about linearly (x2, plus
    # the narrowing of the band), not by exp(g * 200 um)
    assert out[4] / out[3] < 5.0


def test_ase_output_has_a_kink_at_the_threshold(presets, setup):
    s = presets.get("cas_doped")
    thr = ase_threshold_uJ_cm2(1000.0, s.doping_ne, s, setup)
    below = ase_output(np.array([0.4, 0.5]) * thr, 1000.0, s.doping_ne, s, setup)
    above = ase_output(np.array([1.0, 1.25]) * thr, 1000.0, s.doping_ne, s, setup)
    slope_below = math.log(below[1] / below[0]) / math.log(0.5 / 0.4)
    slope_above = math.log(above[1] / above[0]) / math.log(1.25)
    assert slope_below < 2.0
    assert slope_above > 5 * slope_below


def test_spectrum_narrows_and_peaks_at_the_red_shifted_gain_peak(presets, setup):
    from plans.analysis import spectral_peak

    s = presets.get("cas")
    thr = ase_threshold_uJ_cm2(1000.0, s.doping_ne, s, setup)
    ax = SPECTROMETER_AXIS_NM
    high = spectral_peak(ax, emission_spectrum(ax, 2.0 * thr, 1000.0, s.doping_ne, s, setup))
    # the PL below threshold is ~100 meV (~200 nm) wide; the ASE band is a few tens of nm
    pl_fwhm_nm = s.spectra.pl_linewidth_meV * 1e-3 * high.wavelength_nm**2 / 1239.84
    assert high.fwhm_nm < 0.3 * pl_fwhm_nm
    assert high.wavelength_nm == pytest.approx(gain_peak_nm(s.spectra), abs=3.0)
    assert spectral_peak(ax, absorption_spectrum(ax, s.spectra)).wavelength_nm == pytest.approx(
        s.spectra.abs_peak_nm, abs=2.0
    )


def test_spectrum_integral_matches_the_batch_output_above_threshold(presets, setup):
    s = presets.get("cas_doped")
    ax = SPECTROMETER_AXIS_NM
    for f in (400.0, 1200.0):
        spec = integrate_meV(emission_spectrum(ax, f, 1000.0, s.doping_ne, s, setup), ax)
        assert spec == pytest.approx(float(ase_output(f, 1000.0, s.doping_ne, s, setup)), rel=0.03)


def test_pulse_energy_caps_fluence_on_long_stripes(setup):
    caps = max_fluence_uJ_cm2(np.array([100.0, 1000.0, 4000.0]), setup)
    assert caps[0] >= caps[1] > caps[2]
    # 4 mm stripe, 60 um wide: about 6 uJ over ~0.24 cm x 60 um
    assert 1000 < caps[2] < 6000


def test_landscape_has_an_interior_optimum(presets, setup):
    s = presets.get("cas_doped")
    opt = find_optimum(s, setup, "cas_doped")
    assert setup.stripe_length_min_um * 2 < opt.stripe_length_um < setup.stripe_length_max_um / 2
    assert 1.0 < opt.doping < 0.99 * 8 - 0.02
    _, _, thr = threshold_map(s, setup, 30, 30)
    assert opt.threshold_uJ_cm2 <= np.min(thr[np.isfinite(thr)]) + 1e-6
    # moving away from the optimum in either direction raises the threshold
    for dl, dd in ((0.5, 0), (2.0, 0), (1.0, -0.6), (1.0, +0.1)):
        other = float(ase_threshold_uJ_cm2(opt.stripe_length_um * dl, opt.doping + dd, s, setup))
        assert other > opt.threshold_uJ_cm2


@pytest.mark.parametrize(
    ("fluence", "length", "doping", "match"),
    [
        (math.nan, 1000.0, 7.0, "finite"),
        (-5.0, 1000.0, 7.0, "negative"),
        (100.0, 0.0, 7.0, "positive"),
        (100.0, -3.0, 7.0, "positive"),
        (100.0, 99999.0, 7.0, "out of range"),
        (100.0, 1000.0, 7.97, "outside the model's range"),
        (100.0, 1000.0, math.inf, "finite"),
    ],
)
def test_bad_conditions_raise_clear_errors(presets, setup, fluence, length, doping, match):
    with pytest.raises(ParameterError, match=match):
        ase_output(fluence, length, doping, presets.get("cas_doped"), setup)
