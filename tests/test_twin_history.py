"""The twin's films carry their photo-damage from one command to the next (``gainloop.twin_history``)."""

from __future__ import annotations

import pytest

from gainloop.catalog import Catalog
from gainloop.twin_history import restore_film_doses
from plans.measurements import ase_fluence_scan
from sim.devices import default_twin_bench_path, twin_bench_devices

FILM = "cas_doped-film"


def test_a_new_twin_continues_each_films_dose_from_its_stored_runs(tmp_path, RE):
    with Catalog(data_dir_path=tmp_path / "data") as cat:
        RE.subscribe(cat.writer())
        first = twin_bench_devices(default_twin_bench_path(), seed=4)
        assert restore_film_doses(first, cat) == {}  # nothing stored yet: the films are as made
        RE(ase_fluence_scan(first, FILM, stripe_length_um=800.0))
        RE(ase_fluence_scan(first, FILM, stripe_length_um=2000.0))
        taken = first.engine.film_dose(FILM)
        assert taken > 0
        # another command: a new twin, the same bench; the film continues from its history
        second = twin_bench_devices(default_twin_bench_path(), seed=5)
        assert second.engine.film_dose(FILM) == 0.0
        restored = restore_film_doses(second, cat)
        assert set(restored) == {FILM}  # only the film that was pumped
        # counted from the stored fluence readbacks, as the twin counted the delivered pulses
        assert second.engine.film_dose(FILM) == pytest.approx(taken, rel=0.02)
        assert second.engine.film_dose("cas-film") == 0.0
        # and its next run records where it started
        uid = RE(ase_fluence_scan(second, FILM, stripe_length_um=800.0)).plan_result["uid"]
        assert cat.run(uid).start["twin"]["film_dose"] == pytest.approx(taken, rel=0.02)


def test_a_bad_dose_is_refused_and_a_real_bench_is_left_alone(tmp_path):
    from core.errors import ParameterError

    bench = twin_bench_devices(default_twin_bench_path(), seed=1)
    with pytest.raises(ParameterError, match="finite and >= 0"):
        bench.engine.restore_film_dose(FILM, float("nan"))
    with pytest.raises(ParameterError, match="not in the library"):
        bench.engine.restore_film_dose("no-such-film", 0.1)

    class RealBench:  # what restore sees of a bench without a twin engine
        engine = None

    with Catalog(data_dir_path=tmp_path / "data") as cat:
        assert restore_film_doses(RealBench(), cat) == {}
