"""The twin's acquisition evaluates its pulse-jitter nodes in one pass: the per-node model's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from twin.instrument import _jitter_nodes, _logsumexp_rows, _node_intensities, acquire_stripe_spectrum, pulses_in
from twin.noise import NoiseParams, PumpDrift, detector_counts
from twin.spectra import SPECTROMETER_AXIS_NM, emission_spectrum, energy_bin_widths_meV


@pytest.mark.parametrize("preset", ["cas_doped", "cas", "core"])
@pytest.mark.parametrize("fluence_uJ_cm2", [0.0, 20.0, 150.0, 1500.0])
@pytest.mark.parametrize("stripe_length_um", [50.0, 1000.0])
def test_node_intensities_equal_the_per_node_emission_spectrum(
    presets, setup, preset, fluence_uJ_cm2, stripe_length_um
):
    sample = presets.get(preset)
    mult, _ = _jitter_nodes(0.05)
    lam = SPECTROMETER_AXIS_NM
    batch = _node_intensities(lam, fluence_uJ_cm2 * mult, stripe_length_um, sample.doping_ne, sample, setup)
    one_by_one = _per_node(lam, fluence_uJ_cm2 * mult, stripe_length_um, sample, setup)
    assert batch.shape == (mult.size, lam.size)
    # float64 round-off only: the stripe quadrature is one matrix product here, seven dot products there
    np.testing.assert_allclose(batch, one_by_one, rtol=1e-12, atol=0.0)


def _per_node(lam, fluences, stripe_length_um, sample, setup):
    widths = energy_bin_widths_meV(lam)
    return np.stack(
        [emission_spectrum(lam, f, stripe_length_um, sample.doping_ne, sample, setup) * widths for f in fluences]
    )


def _acquire_node_by_node(fluence, stripe_length_um, sample, setup, noise, rng, exposure_s, lab_time_s, drift):
    """The acquisition as it was written before the node batch: one emission spectrum per node."""
    delivered = fluence * float(drift.factor(lab_time_s))
    mult, weights = _jitter_nodes(noise.pulse_jitter_rms)
    per_node = _per_node(SPECTROMETER_AXIS_NM, [delivered * m for m in mult], stripe_length_um, sample, setup)
    mean = np.tensordot(weights, per_node, axes=1)
    totals = per_node.sum(axis=1)
    tot_mean = float(weights @ totals)
    rel = np.sqrt(float(weights @ (totals - tot_mean) ** 2)) / max(tot_mean, 1e-300)
    rel /= np.sqrt(max(pulses_in(exposure_s, setup), 1.0))
    mean = mean * (1.0 + rel * rng.standard_normal())
    return detector_counts(mean, exposure_s, noise, rng).counts


@pytest.mark.parametrize("preset", ["cas_doped", "core"])
@pytest.mark.parametrize(("fluence_uJ_cm2", "exposure_s"), [(0.0, 3.0), (60.0, 3.0), (900.0, 0.01), (2500.0, 0.5)])
def test_seeded_acquisitions_give_the_same_counts_as_node_by_node(presets, setup, preset, fluence_uJ_cm2, exposure_s):
    sample, noise = presets.get(preset), NoiseParams()
    drift = PumpDrift(noise, 11)
    batch = acquire_stripe_spectrum(
        fluence_uJ_cm2,
        800.0,
        sample.doping_ne,
        sample,
        setup,
        noise,
        np.random.default_rng(4),
        exposure_s=exposure_s,
        lab_time_s=250.0,
        drift=drift,
    ).counts
    one_by_one = _acquire_node_by_node(
        fluence_uJ_cm2, 800.0, sample, setup, noise, np.random.default_rng(4), exposure_s, 250.0, drift
    )
    assert np.array_equal(batch, one_by_one)


def test_logsumexp_rows_is_scipys_bit_for_bit():
    rng = np.random.default_rng(3)
    for k in range(200):
        x = rng.normal(scale=rng.uniform(0.1, 300.0), size=(7, 64)) + rng.uniform(-700.0, 700.0)
        if k % 5 == 0:
            x[:, :3] = x.max(axis=1, keepdims=True)  # ties at the maximum
        assert np.array_equal(_logsumexp_rows(x), logsumexp(x, axis=-1))
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, -np.inf]])  # scipy's own path for non-finite rows
    np.testing.assert_array_equal(_logsumexp_rows(x), logsumexp(x, axis=-1))


def test_cached_nodes_are_read_only():
    mult, weights = _jitter_nodes(0.02)
    with pytest.raises(ValueError, match="read-only"):
        mult[0] = 2.0
    assert _jitter_nodes(0.02)[0] is mult and weights.sum() == pytest.approx(1.0)
