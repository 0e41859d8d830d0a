"""Lab analysis on synthetic data with known answers (no twin involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plans.analysis import (
    AnalysisError,
    kink_threshold,
    level_crossing,
    peak_shift_meV,
    plateau_level,
    spectral_peak,
    vsl_gain,
)


def _broken_stick(f, f_th, s1=1.0, s2=12.0):
    x = np.log10(f / f_th)
    return 10 ** (np.where(x < 0, s1 * x, s2 * x))


def test_kink_threshold_recovers_a_known_kink_within_its_uncertainty():
    rng = np.random.default_rng(3)
    f = np.geomspace(50, 400, 30)
    y = _broken_stick(f, 150.0) * (1 + 0.03 * rng.standard_normal(f.size))
    fit = kink_threshold(f, y)
    assert abs(fit.threshold - 150.0) < 3 * fit.threshold_err
    assert fit.threshold_err < 10.0
    assert fit.slope_above > 8 and fit.slope_below < 2


def test_kink_threshold_with_saturation_picks_the_onset():
    f = np.geomspace(30, 3000, 40)
    x = np.log10(f / 100.0)
    y = 10 ** np.where(x < 0, x, np.minimum(15 * x, 3.0 + 1.0 * (x - 0.2)))
    fit = kink_threshold(f, y)
    assert fit.n_segments == 3
    assert fit.threshold == pytest.approx(100.0, rel=0.05)


def test_kink_threshold_rejects_bad_data():
    with pytest.raises(AnalysisError, match="NaN"):
        kink_threshold([1, 2, 3, 4, 5, math.nan], [1, 2, 3, 4, 5, 6])
    with pytest.raises(AnalysisError, match="at least"):
        kink_threshold([1, 2, 3], [1, 2, 3])
    with pytest.raises(AnalysisError, match="positive"):
        kink_threshold([1, 2, 3, 4, 5, 6], [1, 2, 3, -4, 5, 6])
    with pytest.raises(AnalysisError, match="no threshold kink"):
        kink_threshold(np.geomspace(1, 100, 12), np.geomspace(1, 100, 12) ** 0.5 * (1 + np.arange(12) * 1e-3))


def test_vsl_gain_recovers_gain_and_ignores_saturated_points():
    rng = np.random.default_rng(5)
    g = 2000.0  # 1/cm
    lengths = np.linspace(5, 80, 24)
    l_cm = lengths * 1e-4
    unsat = 50.0 * np.expm1(g * l_cm) + 300.0 * lengths
    i_sat = 50.0 * math.expm1(g * 35e-4)
    y = np.where(unsat < i_sat, unsat, i_sat * (1 + np.log(unsat / i_sat)))
    y = y * (1 + 0.01 * rng.standard_normal(y.size))
    fit = vsl_gain(lengths, y)
    assert abs(fit.gain_per_cm - g) < max(3 * fit.gain_err_per_cm, 0.05 * g)
    assert fit.max_stripe_um <= 35.0


def test_vsl_gain_rejects_data_without_growth():
    with pytest.raises(AnalysisError):
        vsl_gain(np.linspace(10, 100, 10), np.full(10, 5.0))


def test_spectral_peak_and_width_of_a_gaussian():
    x = np.linspace(1500, 1700, 801)
    y = 3.0 * np.exp(-0.5 * ((x - 1623.3) / (10.0 / 2.3548)) ** 2) + 0.1
    p = spectral_peak(x, y)
    assert p.wavelength_nm == pytest.approx(1623.3, abs=0.02)
    assert p.fwhm_nm == pytest.approx(10.0, abs=0.05)
    with pytest.raises(AnalysisError, match="edge"):
        spectral_peak(x[:380], y[:380] + np.linspace(0, 5, 380))


def test_peak_shift_in_meV():
    assert peak_shift_meV(1592.0, 1660.0) == pytest.approx(31.9, abs=0.1)


def test_plateau_level_and_its_absence():
    f = np.array([200, 400, 800, 1200, 1600, 2200.0])
    g = np.array([100, 900, 1800, 1950, 2000, 2020.0])
    p = plateau_level(f, g)
    assert p.start_x == 800 and p.level == pytest.approx(np.mean(g[2:]))
    with pytest.raises(AnalysisError, match="no plateau"):
        plateau_level(f, f * 2.0)


def test_level_crossing_interpolates_between_points():
    c = level_crossing([1, 2, 3, 4], [0.2, 0.6, 1.4, 2.0], 1.0)
    assert c.x == pytest.approx(2.5)
    with pytest.raises(AnalysisError, match="do not cross"):
        level_crossing([1, 2, 3], [0.1, 0.2, 0.3], 1.0)


# ---------------------------------------------------------------- counts per second and the input-output curve
def _spectrometer_columns():
    spectra = np.zeros((3, 11))
    spectra[:, 5] = [100.0, 400.0, 900.0]
    spectra[:, 4] = spectra[:, 6] = 10.0
    spectra[:, 0] = 1000.0  # outside the peak's pixels
    return {
        "spectrometer_exposure": np.array([2.0, 2.0, 0.5]),
        "spectrometer_saturated": np.array([0, 1, 0]),
        "spectrometer_integrated": spectra.sum(axis=1),
        "spectrometer_spectrum": spectra,
        "pump_fluence": np.array([50.0, 100.0, 0.0]),
    }


def test_counts_per_s_integrated_or_at_the_peak_and_nan_where_saturated():
    from plans.analysis import PEAK_HALF_WIDTH_PX, counts_per_s

    data = _spectrometer_columns()
    rate = counts_per_s(data)
    assert rate[0] == pytest.approx((1000.0 + 100.0 + 20.0) / 2.0) and math.isnan(rate[1])
    assert rate[2] == pytest.approx((1000.0 + 900.0 + 20.0) / 0.5)
    # the brightest pixel is pixel 0 in the first event: the peak sum is its PEAK_HALF_WIDTH_PX neighbours
    peak = counts_per_s(data, at_peak=True)
    assert PEAK_HALF_WIDTH_PX == 2
    assert peak[0] == pytest.approx(1000.0 / 2.0) and math.isnan(peak[1])
    assert peak[2] == pytest.approx(1000.0 / 0.5)  # pixel 0 (1000) still beats pixel 5 (900)
    no_exposure = {**data, "spectrometer_exposure": np.array([0.0, 2.0, 0.5])}
    assert math.isnan(counts_per_s(no_exposure)[0])


def test_input_output_keeps_events_with_a_measured_fluence_and_output():
    from plans import lasing, measurements
    from plans.analysis import input_output

    fluence, output = input_output(_spectrometer_columns())
    # the saturated event and the one at zero fluence are left out
    np.testing.assert_array_equal(fluence, [50.0])
    np.testing.assert_allclose(output, [560.0])
    # one function for the ASE and the lasing plans
    assert measurements.input_output is input_output is lasing.input_output
