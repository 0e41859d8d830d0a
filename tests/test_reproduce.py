"""`gainloop twin reproduce`: every number of the paper, measured on the twin, within tolerance."""

from __future__ import annotations

import math
import tomllib

import pytest

from gainloop.reproduce import PROTOCOLS, load_paper_numbers, paper_numbers_path, reproduce

from .conftest import REPO

NUMBERS = load_paper_numbers()
SHARED_TABLE = REPO.parent / "shared" / "reference" / "paper_numbers.toml"


@pytest.fixture(scope="module")
def rows(presets):
    return {r.id: r for r in reproduce(presets, seed=0)}


def test_the_shipped_table_equals_the_shared_reference():
    if not SHARED_TABLE.exists():
        pytest.skip(f"no shared reference table at {SHARED_TABLE} (only in the developers' checkout)")
    assert tomllib.loads(paper_numbers_path().read_text()) == tomllib.loads(SHARED_TABLE.read_text())


def test_every_row_has_a_measurement_protocol():
    assert {n.id for n in NUMBERS} <= set(PROTOCOLS)
    assert len(NUMBERS) >= 27


@pytest.mark.parametrize("number", NUMBERS, ids=[n.id for n in NUMBERS])
def test_row_is_reproduced(rows, number):
    row = rows[number.id]
    assert row.note == ""
    if number.compare == "at_least":
        assert row.twin >= number.value
    else:
        assert abs(row.twin - number.value) <= number.tol, f"{number.id}: twin {row.twin:.4g} vs {number.value}"
    assert row.ok


def test_a_different_seed_gives_different_noise_but_still_passes(presets):
    ids = {"ase_threshold_cas_doped", "net_modal_gain_max_cas_doped"}
    a = {r.id: r for r in reproduce(presets, seed=0, only=ids)}
    b = {r.id: r for r in reproduce(presets, seed=11, only=ids)}
    assert all(b[i].ok for i in ids)
    assert a["ase_threshold_cas_doped"].twin != b["ase_threshold_cas_doped"].twin


def test_a_changed_preset_changes_the_measured_value(presets):
    """The rows are measured, not returned: a lossier film has a higher ASE threshold."""
    s = presets.get("cas_doped")
    film = s.film.model_copy(update={"waveguide_loss_per_cm": s.film.waveguide_loss_per_cm + 60.0})
    lossy = presets.model_copy(update={"sample": {**presets.sample, "cas_doped": s.model_copy(update={"film": film})}})
    ids = {"ase_threshold_cas_doped"}
    base = reproduce(presets, only=ids)[0]
    worse = reproduce(lossy, only=ids)[0]
    assert worse.twin > base.twin * 1.2
    assert not worse.ok


def test_rows_for_samples_missing_from_user_presets_fail_with_a_note(presets):
    only_doped = presets.model_copy(update={"sample": {"cas_doped": presets.get("cas_doped")}})
    rows = {r.id: r for r in reproduce(only_doped, only={"ase_threshold_core", "ase_threshold_cas_doped"})}
    assert not rows["ase_threshold_core"].ok
    assert "not in these presets" in rows["ase_threshold_core"].note
    assert rows["ase_threshold_cas_doped"].ok


def test_stability_is_measured_a_fragile_film_fails(presets):
    s = presets.get("cas_doped")
    fragile = s.model_copy(update={"damage": s.damage.model_copy(update={"damage_fluence_uJ_cm2": 400.0})})
    p = presets.model_copy(update={"sample": {**presets.sample, "cas_doped": fragile}})
    row = reproduce(p, only={"dfb_stability_hours"})[0]
    assert row.twin < 8.0
    assert not row.ok


def test_every_row_declares_a_basis_of_real_preset_parameters(presets, rows):
    """The bookkeeping is checkable: each calibrated row names parameters the shipped presets have."""
    from gainloop.reproduce import ROW_BASIS, free_parameters
    from twin.presets import get_parameter

    assert {n.id for n in NUMBERS} <= set(ROW_BASIS)
    for r in rows.values():
        assert r.basis == "predicted" or (isinstance(r.basis, tuple) and r.basis), r.id
        if not r.predicted:
            for name in r.basis:
                assert math.isfinite(get_parameter(presets, name)), name
    assert len(free_parameters(list(rows.values()))) >= 1
    assert rows["gain_threshold_poisson_neutral"].predicted
