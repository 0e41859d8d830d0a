"""Leave-one-out: rows measured on a twin refitted without them (gainloop.reproduce_loo).

The whole table takes ~2.5 min (benchmarks/reproduce_loo.py reports it: 22 of 27 rows within
2x their tolerance on the shipped presets). This test runs the rows whose leave-one-out refit
is cheap (< 3 s each) outside the DFB (whose rows are today's DFB model, being reworked; the
benchmark reports them), and holds them to the issue's criterion: >= 2/3 within 2x tolerance.
"""

from __future__ import annotations

import math

import pytest

from gainloop.reproduce import PREDICTED, ROW_BASIS
from gainloop.reproduce_loo import PRIORS, leave_one_out

CHEAP_NON_DFB = {
    "gain_threshold_poisson_neutral",
    "gain_threshold_charged_ne7",
    "ta_gain_threshold_core",
    "ta_gain_threshold_cas_doped",
    "gain_lifetime_core",
    "gain_lifetime_cas",
    "ase_threshold_core",
    "ase_threshold_cas",
    "ase_threshold_N_cas",
    "ase_threshold_N_cas_doped",
    "ase_redshift_cas",
    "ase_redshift_core",
    "net_modal_gain_saturation_cas_doped",
}


@pytest.mark.slow(seconds=20)
def test_two_thirds_of_the_cheap_rows_land_within_twice_their_tolerance_out_of_sample(presets):
    rows = {r.id: r for r in leave_one_out(presets, only=CHEAP_NON_DFB)}
    assert set(rows) == CHEAP_NON_DFB
    for r in rows.values():
        if ROW_BASIS[r.id] == PREDICTED:
            assert r.loo == r.full  # leaving a prediction out changes no parameter
        else:
            assert r.refit != "none (predicted)"
    # a knob no other row constrains falls back to its prior, and its row is measured there
    assert "(prior: no other row)" in rows["ase_redshift_cas"].refit
    assert f"={PRIORS['cas.spectra.ase_redshift_meV'].value:.4g}" in rows["ase_redshift_cas"].refit
    assert all(math.isfinite(r.loo) for r in rows.values())
    n_ok = sum(r.within_2tol for r in rows.values())
    assert n_ok >= math.ceil(2 * len(rows) / 3), {r.id: (r.paper, r.loo) for r in rows.values()}


def test_every_calibrated_parameter_has_a_prior_inside_its_physical_range(presets):
    from twin.presets import PHYSICAL_RANGES

    names = {x for b in ROW_BASIS.values() if b != PREDICTED for x in b}
    assert names <= set(PRIORS), names - set(PRIORS)
    for name in names:
        prior = PRIORS[name]
        assert prior.width > 0 and prior.source
        rng = PHYSICAL_RANGES.get(name.split(".", 1)[1])
        if rng is not None:
            assert rng.lo <= prior.value <= rng.hi, name
