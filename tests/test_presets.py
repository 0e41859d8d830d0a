"""Preset files: the shipped file validates; malformed user files give clear errors."""

from __future__ import annotations

import pytest

from core.errors import PresetError
from twin.presets import default_presets_path, excitons_per_fluence, load_presets


def test_shipped_presets_have_the_three_samples(presets):
    assert set(presets.sample) >= {"core", "cas", "cas_doped"}
    assert presets.get("cas_doped").doping_ne == pytest.approx(7.4)
    assert presets.get("cas").dfb.grating_period_nm == 860.0


def test_unknown_sample_lists_the_ones_there_are(presets):
    with pytest.raises(PresetError, match=r"unknown sample 'nope'.*cas_doped"):
        presets.get("nope")


def test_kappa_of_the_doped_dfb_film_matches_the_papers_conversion():
    # 19 % absorbed, 74 % packing, 160 nm film: 160 uJ/cm^2 is <N> = 0.87
    assert 160 * excitons_per_fluence(0.19, 160, 0.74, 5.0) == pytest.approx(0.87, abs=0.01)


def _write(tmp_path, text):
    p = tmp_path / "p.toml"
    p.write_text(text)
    return p


def test_missing_file(tmp_path):
    with pytest.raises(PresetError, match="does not exist"):
        load_presets(tmp_path / "absent.toml")


def test_not_toml(tmp_path):
    with pytest.raises(PresetError, match="not valid TOML"):
        load_presets(_write(tmp_path, "[sample\nx = "))


def test_unknown_key_is_named(tmp_path):
    text = default_presets_path().read_text().replace("tau_xx_ps = 540.0", "tau_xx_ps = 540.0\ntau_xxx_ps = 1.0", 1)
    with pytest.raises(PresetError, match=r"sample\.cas\.auger\.tau_xxx_ps: unknown key"):
        load_presets(_write(tmp_path, text))


def test_out_of_range_value_is_named_with_its_bound(tmp_path):
    text = default_presets_path().read_text().replace("packing_fraction = 0.74", "packing_fraction = 0.9", 1)
    with pytest.raises(PresetError, match=r"film\.packing_fraction: Input should be less than or equal to 0.75"):
        load_presets(_write(tmp_path, text))


def test_doping_beyond_the_distributions_range(tmp_path):
    text = default_presets_path().read_text().replace("doping_ne = 7.4", "doping_ne = 7.99", 1)
    with pytest.raises(PresetError, match=r"doping_ne = 7\.99 is outside 0 to 7\.92"):
        load_presets(_write(tmp_path, text))


def test_a_new_material_with_twofold_degeneracy_loads(tmp_path):
    text = default_presets_path().read_text().replace("degeneracy = 8", "degeneracy = 2", 1)
    text = text.replace("doping_ne = 0.0                      # electrons/dot", "doping_ne = 0.0", 1)
    p = load_presets(_write(tmp_path, text))
    assert p.get("core").degeneracy == 2


def test_a_value_outside_its_physical_range_is_refused_with_range_and_source(tmp_path):
    text = default_presets_path().read_text()
    text = text.replace("waveguide_loss_per_cm = 3.0 ", "waveguide_loss_per_cm = 900.0 ", 1)
    with pytest.raises(
        PresetError, match=r"film\.waveguide_loss_per_cm = 900 is outside its physical range 0 to 200 \("
    ):
        load_presets(_write(tmp_path, text))


def test_every_ranged_parameter_of_the_shipped_presets_is_inside_its_range(presets):
    from twin.presets import PHYSICAL_RANGES, get_parameter

    for sid in presets.sample:
        for name, rng in PHYSICAL_RANGES.items():
            assert rng.lo < rng.hi and rng.source
            assert rng.lo <= get_parameter(presets, f"{sid}.{name}") <= rng.hi, (sid, name)
