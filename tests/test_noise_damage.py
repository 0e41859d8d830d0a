"""Noise is seeded and reproducible; photo-damage is irreversible and negligible near threshold."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ParameterError
from twin.damage import accumulate_damage, damage_per_pulse, damaged_sample
from twin.instrument import acquire_stripe_spectrum
from twin.noise import NoiseParams, PumpDrift, detector_counts, jitter_average, jitter_nodes


def test_acquisitions_are_reproducible_for_a_seed_and_differ_between_seeds(presets, setup):
    s = presets.get("cas_doped")
    noise = NoiseParams()

    def read(seed):
        return acquire_stripe_spectrum(150.0, 1000.0, 7.4, s, setup, noise, np.random.default_rng(seed)).counts

    assert np.array_equal(read(1), read(1))
    assert not np.array_equal(read(1), read(2))


def test_shot_noise_scales_as_square_root_of_counts():
    noise = NoiseParams(read_noise_counts=0.0, dark_counts_per_s=0.0)
    rng = np.random.default_rng(0)
    signal = np.full(20000, 1000.0)
    counts = detector_counts(signal, 1.0, noise, rng).counts
    expected = 1000.0 * noise.counts_per_unit_s
    assert counts.mean() == pytest.approx(expected, rel=0.01)
    assert counts.std() == pytest.approx(np.sqrt(expected), rel=0.05)


def test_detector_flags_saturation():
    noise = NoiseParams(full_well_counts=1000.0)
    read = detector_counts(np.array([1.0, 1e6]), 1.0, noise, np.random.default_rng(0))
    assert read.saturated
    with pytest.raises(ValueError, match="exposure"):
        detector_counts(np.array([1.0]), 0.0, noise, np.random.default_rng(0))


def test_jitter_averaging_of_a_convex_response_raises_the_mean():
    mult, w = jitter_nodes(0.1)
    values = np.exp(10 * mult)  # steep, convex: like output just above threshold
    mean = jitter_average(values[:, None], w, 1e9, np.random.default_rng(0))
    assert float(mean[0]) > np.exp(10.0) * 1.2


def test_drift_is_a_fixed_function_of_lab_time():
    d1 = PumpDrift(NoiseParams(drift_rms=0.02), seed=7)
    d2 = PumpDrift(NoiseParams(drift_rms=0.02), seed=7)
    t = np.linspace(0, 36000, 2000)
    assert np.array_equal(d1.factor(t), d2.factor(t[::-1])[::-1])
    assert np.std(d1.factor(t)) == pytest.approx(0.02, rel=0.5)


def test_damage_is_steep_in_fluence_and_never_heals(presets):
    dmg = presets.get("cas_doped").damage
    near_threshold = float(damage_per_pulse(180.0, dmg))
    at_damage = float(damage_per_pulse(dmg.damage_fluence_uJ_cm2, dmg))
    assert at_damage == pytest.approx(dmg.damage_per_pulse_at_threshold)
    assert near_threshold < 1e-3 * at_damage
    # 8 h at 10 kHz near the doped laser's threshold: < 1 % of the dots; 1 h at the VSL fluence: > 10 %
    assert accumulate_damage(0.0, 180.0, 8 * 3600 * 1e4, dmg) < 0.01
    assert accumulate_damage(0.0, 2000.0, 3600 * 1e4, dmg) > 0.1
    dose = accumulate_damage(0.0, dmg.damage_fluence_uJ_cm2, 1e6, dmg)
    assert accumulate_damage(dose, 0.0, 1e9, dmg) == dose
    s = presets.get("cas_doped")
    assert damaged_sample(s, dose).film.alpha0_per_cm < s.film.alpha0_per_cm
    with pytest.raises(ParameterError):
        damaged_sample(s, -1.0)


def test_hours_of_hard_pumping_hurt_a_film_and_hours_near_threshold_do_not(presets, setup):
    """The dose law acts on a campaign's time scale: 1 h at the VSL fluence raises the doped film's
    ASE threshold noticeably; 8 h at 1.1x the DFB threshold (the stability row) barely moves it."""
    from twin.ase import ase_threshold_uJ_cm2

    s = presets.get("cas_doped")
    fresh = float(ase_threshold_uJ_cm2(1000.0, s.doping_ne, s, setup))
    hard = accumulate_damage(0.0, 2000.0, 3600 * 1e4, s.damage)
    gentle = accumulate_damage(0.0, 1.1 * 160.0, 8 * 3600 * 1e4, s.damage)
    assert float(ase_threshold_uJ_cm2(1000.0, s.doping_ne, damaged_sample(s, hard), setup)) > 1.1 * fresh
    assert float(ase_threshold_uJ_cm2(1000.0, s.doping_ne, damaged_sample(s, gentle), setup)) < 1.01 * fresh
