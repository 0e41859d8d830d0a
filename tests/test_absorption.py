"""Films as they come out, and their doping measured from the 1S bleach of their absorption.

The twin's absorption (``twin.absorption``), the film factory's scatter (``twin.films``,
``sim.engine.TwinBench.make_film``), the white-light source (``bench.lamp``), the plan
``plans.absorption.absorption_spectrum`` with its analysis, and the public API a campaign calls
(``measure_film_doping``, ``absorption_lab_time_s``, ``DopingMeasurement``, ``AbsorptionError``).
"""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
from bluesky import Msg
from bluesky.preprocessors import plan_mutator
from bluesky.utils import RunEngineInterrupted

from devices import BenchConfigError, parse_bench
from harness.documents import collect, event_columns, one, stream_events
from plans.absorption import absorption_lab_time_s, absorption_spectrum, measure_film_doping
from plans.analysis import (
    ABSORPTION_REASONS,
    AbsorptionError,
    AnalysisError,
    DopingMeasurement,
    analyse_absorption_spectrum,
    doping_from_absorbance,
)
from plans.registry import PLANS
from sim.devices import twin_bench_devices
from twin import absorption as ab
from twin.films import FilmScatter, draw_film, film_generator
from twin.spectra import SPECTROMETER_AXIS_NM
from twin.spectra import absorption_spectrum as twin_absorption_spectrum

from .conftest import REPO

pytestmark = pytest.mark.slow(seconds=60)  # CLI subprocesses and an IOC: it runs early (tests/conftest.py)

BENCH_FILE = REPO / "examples" / "twin_bench.toml"
FILM = "cas_doped-film"


def _cfg(**twin):
    """The example bench file with ``[twin]`` keys changed."""
    data = tomllib.loads(BENCH_FILE.read_text())
    data.setdefault("twin", {}).update(twin)
    return parse_bench(data, f"{BENCH_FILE} (test)")


def _bench(presets, seed=0, **twin):
    return twin_bench_devices(_cfg(**twin), seed=seed, presets=presets)


def _new_film(bench, doping: float) -> str:
    bench.stage.request_film(doping)
    return bench.stage.sample.get()


# ---------------------------------------------------------------- the twin's absorption
def test_parts_add_up_to_the_twins_absorption_and_the_1s_band_bleaches_by_one_minus_n_over_8(presets):
    sample = presets.get("cas_doped")
    lam = SPECTROMETER_AXIS_NM
    total = ab.one_s_band(lam, sample.spectra) + ab.higher_transitions(lam, sample.spectra)
    np.testing.assert_allclose(total, twin_absorption_spectrum(lam, sample.spectra), rtol=1e-12)
    neutral = ab.neutral_absorbance(lam, sample)
    scale = sample.film.alpha0_per_cm * sample.film.thickness_nm * 1e-7 / math.log(10.0)
    np.testing.assert_allclose(neutral.total, scale * total, rtol=1e-12)
    for n in (0.5, 3.0, 7.4):
        doped = ab.absorbance_parts(lam, n, sample)
        np.testing.assert_allclose(doped.higher, neutral.higher, rtol=1e-12)  # the background is not bleached
        # the paper's reading at the 1S peak: <n_e> = 8 (1 - alpha_doped / alpha_neutral) of the 1S band
        i = int(np.argmax(neutral.one_s))
        assert 8 * (1 - doped.one_s[i] / neutral.one_s[i]) == pytest.approx(n, rel=1e-12)
    # the 1S peak sits at the preset's wavelength (within a pixel)
    assert lam[int(np.argmax(neutral.one_s))] == pytest.approx(sample.spectra.abs_peak_nm, abs=1.0)
    # thicker films absorb more, in proportion
    thick = ab.absorbance(lam, 2.0, sample, thickness_nm=2 * sample.film.thickness_nm)
    np.testing.assert_allclose(thick, 2 * ab.absorbance(lam, 2.0, sample), rtol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: ab.absorbance(SPECTROMETER_AXIS_NM, -0.1, s), "outside"),
        (lambda s: ab.absorbance(SPECTROMETER_AXIS_NM, math.nan, s), "outside"),
        (lambda s: ab.absorbance(SPECTROMETER_AXIS_NM, 9.0, s), "outside"),
        (lambda s: ab.absorbance(SPECTROMETER_AXIS_NM, 1.0, s, thickness_nm=0.0), "thickness"),
        (lambda s: ab.absorbance([1500.0, -1.0], 1.0, s), "wavelengths"),
        (lambda s: ab.absorbance(SPECTROMETER_AXIS_NM, 1.0, s, kind="disc"), "kind"),
        (lambda s: ab.bleach_factor(9.0), "0 to 8"),
        (lambda s: ab.LampDrift(0.7, 0), "rms"),
        (lambda s: ab.transmitted_counts_per_s(SPECTROMETER_AXIS_NM, -1.0), "lamp counts"),
    ],
)
def test_bad_absorption_inputs_say_what_is_allowed(presets, call, match):
    with pytest.raises(ValueError, match=match):
        call(presets.get("cas_doped"))


# ---------------------------------------------------------------- the film factory's scatter
def test_draws_are_reproducible_per_seed_and_film_and_zero_spread_is_the_request(presets):
    preset = presets.get("cas_doped")
    scatter = FilmScatter()
    a = draw_film("film-001-ne7.00", 7.0, preset, scatter, film_generator(3, "film-001-ne7.00"))
    b = draw_film("film-001-ne7.00", 7.0, preset, scatter, film_generator(3, "film-001-ne7.00"))
    c = draw_film("film-001-ne7.00", 7.0, preset, scatter, film_generator(4, "film-001-ne7.00"))
    d = draw_film("film-002-ne7.00", 7.0, preset, scatter, film_generator(3, "film-002-ne7.00"))
    assert a == b and a != c and a != d
    assert a.doping_e_per_dot != 7.0 and a.thickness_nm != preset.film.thickness_nm
    none = FilmScatter(0.0, 0.0, 0.0)
    assert none.none and not scatter.none
    z = draw_film("f", 7.0, preset, none, film_generator(3, "f"))
    assert (z.doping_e_per_dot, z.thickness_nm, z.waveguide_loss_per_cm) == (
        7.0,
        preset.film.thickness_nm,
        preset.film.waveguide_loss_per_cm,
    )
    # the doping stays in the model's physical range (0.99 g for a Poisson distribution)
    dopings = [
        draw_film(f"f{i}", 7.9, preset, FilmScatter(1.0), film_generator(0, f"f{i}")).doping_e_per_dot
        for i in range(40)
    ] + [
        draw_film(f"g{i}", 0.0, preset, FilmScatter(1.0), film_generator(0, f"g{i}")).doping_e_per_dot
        for i in range(40)
    ]
    assert min(dopings) == 0.0 and max(dopings) == pytest.approx(0.99 * 8)
    # the spreads are what they say (sigma), measured on 400 films
    draws = [draw_film(f"h{i}", 4.0, preset, scatter, film_generator(1, f"h{i}")) for i in range(400)]
    assert np.std([t.doping_e_per_dot for t in draws]) == pytest.approx(0.1, rel=0.15)
    assert np.std([t.thickness_nm / preset.film.thickness_nm for t in draws]) == pytest.approx(0.03, rel=0.15)
    assert np.std([t.waveguide_loss_per_cm / preset.film.waveguide_loss_per_cm for t in draws]) == pytest.approx(
        0.05, rel=0.15
    )
    with pytest.raises(ValueError, match="doping_spread_e_per_dot must be a number 0 to 2"):
        FilmScatter(-0.1)


def test_the_twins_new_films_scatter_reproducibly_and_library_films_keep_what_they_have(presets):
    one_ = _bench(presets, seed=5)
    two = _bench(presets, seed=5)
    other = _bench(presets, seed=6)
    ids = [_new_film(one_, d) for d in (2.0, 7.4)]
    assert [_new_film(two, d) for d in (2.0, 7.4)] == ids
    assert [_new_film(other, d) for d in (2.0, 7.4)] == ids
    for fid, req in zip(ids, (2.0, 7.4), strict=True):
        truth = one_.film_truth(fid)
        assert truth == two.film_truth(fid) != other.film_truth(fid)
        assert truth.requested_doping_e_per_dot == req and truth.doping_e_per_dot != req
        assert abs(truth.doping_e_per_dot - req) < 0.5  # 5 sigma
        assert one_.stage.doping.get() == 7.4 and one_.stage.library[fid].doping == req  # the bench knows the request
    # the bench file's films are what their entries say
    lib = one_.film_truth(FILM)
    assert lib.doping_e_per_dot == lib.requested_doping_e_per_dot == 7.4
    assert lib.thickness_nm == presets.get("cas_doped").film.thickness_nm
    # a film put back from an earlier session (same seed, same id) is the same film
    again = _bench(presets, seed=5)
    again.stage.add_film(again.config.new_film_entry(ids[1], 7.4))
    assert again.film_truth(ids[1]) == one_.film_truth(ids[1])
    # the physics uses the truth: the kappa of the film follows its drawn thickness
    kappa = one_.excitons_per_uJ_cm2(ids[1]) * one_.film_truth(ids[1]).thickness_nm
    assert kappa == pytest.approx(one_.excitons_per_uJ_cm2(FILM) * lib.thickness_nm, rel=1e-12)
    with pytest.raises(ValueError, match="not in the library"):
        one_.film_truth("no-such-film")


def test_zero_spread_gives_films_exactly_as_requested(presets, RE):
    flat = _bench(presets, seed=5, film_doping_spread=0.0, film_thickness_rel_spread=0.0, film_loss_rel_spread=0.0)
    scattered = _bench(presets, seed=5)
    fid = _new_film(flat, 7.4)
    assert _new_film(scattered, 7.4) == fid
    truth = flat.film_truth(fid)
    entry = flat.stage.library[fid]
    assert truth.doping_e_per_dot == 7.4
    assert flat.engine.true_sample(entry) == flat.engine.sample_for(entry)  # the physics is the request's
    # identical acquisitions to the bench file's film of the same preset and doping
    lib = _bench(presets, seed=5, film_doping_spread=0.0, film_thickness_rel_spread=0.0, film_loss_rel_spread=0.0)
    lib.stage.set(FILM)
    lib.engine.set_lab_time(flat.engine.lab_time_s)
    lib.engine.rng = np.random.default_rng(99)
    flat.engine.rng = np.random.default_rng(99)
    scattered.engine.set_lab_time(flat.engine.lab_time_s)
    scattered.engine.rng = np.random.default_rng(99)
    got = {}
    for name, b in (("flat", flat), ("lib", lib), ("scattered", scattered)):
        b.slit.move(1000.0)
        b.pump.fluence.put(400.0)
        b.pump.shutter.put(1)
        b.spectrometer.trigger()
        got[name] = b.spectrometer.spectrum.get().copy()
    np.testing.assert_array_equal(got["flat"], got["lib"])
    assert not np.array_equal(got["flat"], got["scattered"])  # scattered films emit as they are


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("film_doping_spread", -0.1, "greater than or equal to 0"),
        ("film_doping_spread", 3.0, "less than or equal to 2"),
        ("film_thickness_rel_spread", 0.5, "less than or equal to 0.3"),
        ("film_loss_rel_spread", -1.0, "greater than or equal to 0"),
        ("lamp_counts_per_s", 0.0, "greater than 0"),
        ("lamp_drift_rms", 0.6, "less than 0.5"),
        ("film_doping_spred", 0.1, "unknown key"),
    ],
)
def test_bad_twin_settings_are_refused_naming_the_key(key, value, allowed):
    with pytest.raises(BenchConfigError) as err:
        _cfg(**{key: value})
    assert f"twin.{key}" in str(err.value) and allowed in str(err.value)


# ---------------------------------------------------------------- the measurement: recovery, lab time
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_known_doping_is_recovered_within_its_stated_error(presets, RE, seed):
    bench = _bench(presets, seed=seed)
    pulls = []
    for requested in (0.0, 1.0, 3.0, 5.0, 6.5, 7.4, 7.9):
        fid = _new_film(bench, requested)
        truth = bench.film_truth(fid).doping_e_per_dot
        lab0 = bench.lab_time_s()
        m = RE(measure_film_doping(bench)).plan_result
        assert isinstance(m, DopingMeasurement) and len(m.uid) == 36
        assert bench.lab_time_s() - lab0 == pytest.approx(absorption_lab_time_s(bench), abs=1e-9)
        assert 0.003 < m.doping_err_e_per_dot < 0.05  # well below the films' 0.1 e/dot scatter
        pull = (m.doping_e_per_dot - truth) / m.doping_err_e_per_dot
        assert abs(pull) < 4.0, (requested, truth, m)
        pulls.append(pull)
    rms = math.sqrt(float(np.mean(np.square(pulls))))
    assert 0.3 < rms < 1.8, pulls


def _other_dots(presets):
    """The shipped presets with the new films' dots changed as another lab's would be: the 1S peak
    55 nm to the red, a 30 % broader line, alpha0 0.7x and films 25 % thicker."""
    name = tomllib.loads(BENCH_FILE.read_text()).get("twin", {}).get("new_film_preset", "cas_doped")
    s = presets.get(name)
    other = s.model_copy(
        update={
            "spectra": s.spectra.model_copy(
                update={
                    "abs_peak_nm": s.spectra.abs_peak_nm + 55.0,
                    "abs_linewidth_meV": 1.3 * s.spectra.abs_linewidth_meV,
                }
            ),
            "film": s.film.model_copy(
                update={"alpha0_per_cm": 0.7 * s.film.alpha0_per_cm, "thickness_nm": 1.25 * s.film.thickness_nm}
            ),
        }
    )
    return presets.model_copy(update={"sample": {**presets.sample, name: other}}), s, other


def test_dots_unlike_the_shipped_preset_are_measured_as_well(presets, RE):
    """Nothing in the analysis is tuned to the shipped dots: on a bench whose dots differ (peak, width,
    alpha0, thickness), measured against the neutral reference of those dots, dopings across the range
    are recovered within their stated errors."""
    changed, shipped, other = _other_dots(presets)
    bench = _bench(changed, seed=5)
    lam = SPECTROMETER_AXIS_NM
    assert not np.allclose(
        ab.neutral_absorbance(lam, other).total, ab.neutral_absorbance(lam, shipped).total, rtol=0.05
    )
    pulls = []
    for requested in (0.5, 2.5, 4.5, 6.5, 7.6):
        fid = _new_film(bench, requested)
        truth = bench.film_truth(fid).doping_e_per_dot
        assert bench.film_truth(fid).thickness_nm == pytest.approx(other.film.thickness_nm, rel=0.15)  # those dots
        m = RE(measure_film_doping(bench)).plan_result
        assert 0.003 < m.doping_err_e_per_dot < 0.05
        pulls.append((m.doping_e_per_dot - truth) / m.doping_err_e_per_dot)
    assert max(abs(p) for p in pulls) < 4.0, pulls
    assert math.sqrt(float(np.mean(np.square(pulls)))) < 2.0, pulls


def test_pulls_over_many_films_have_unit_spread(presets, RE):
    """The stated error is honest: over 40 films the pulls (measured - true) / error scatter by ~1."""
    bench = _bench(presets, seed=21)
    pulls = []
    for requested in np.linspace(0.2, 7.8, 40):
        _new_film(bench, float(requested))
        m = RE(measure_film_doping(bench)).plan_result
        pulls.append(
            (m.doping_e_per_dot - bench.film_truth(bench.stage.sample.get()).doping_e_per_dot) / m.doping_err_e_per_dot
        )
    assert abs(float(np.mean(pulls))) < 0.5
    assert 0.7 < float(np.std(pulls)) < 1.35


def test_the_run_reads_dark_reference_and_sample_with_the_pump_closed(presets, RE):
    bench = _bench(presets, seed=3)
    bench.pump.fluence.put(300.0)
    docs = collect(RE)
    result = RE(absorption_spectrum(bench, FILM, md={"purpose": "test"})).plan_result
    start, stop = one(docs, "start"), one(docs, "stop")
    assert start["plan_name"] == "absorption_spectrum" and start["sample_id"] == FILM and start["purpose"] == "test"
    assert start["plan_args"] == {"sample_id": FILM, "exposure_s": 1.0, "degeneracy": 8}
    assert stop["exit_status"] == "success" and result["uid"] == start["uid"]
    cols = event_columns(stream_events(docs, "primary"))
    assert list(cols["lamp_shutter"]) == [0, 1, 1] and list(cols["lamp_sample_in"]) == [1, 0, 1]
    assert list(cols["pump_shutter"]) == [0, 0, 0]  # white light only
    assert cols["lamp_neutral_absorbance"].shape == (3, 512)
    (an,) = stream_events(docs, "analysis")
    assert an["data"]["doping_e_per_dot"] == result["doping_e_per_dot"]
    assert result["doping_e_per_dot"] == pytest.approx(7.4, abs=5 * result["doping_err_e_per_dot"])
    # the plan's own analysis re-derives it from the stored primary stream (what a replay does)
    assert PLANS["absorption_spectrum"].analyse(cols, start["plan_args"]) == {
        k: v for k, v in result.items() if k != "uid"
    }
    assert bench.lamp.shutter.get() == 0 and bench.engine.state.shutter_open is False
    assert bench.pump.fluence.setpoint == 0.0  # parked, as after every measurement


def test_arguments_are_checked_before_anything_is_sent(presets):
    bench = _bench(presets)
    for kwargs, match in (
        ({"exposure_s": 0.0}, "exposure"),
        ({"exposure_s": 100.0}, "exposure"),
        ({"degeneracy": 0}, "degeneracy"),
        ({"degeneracy": 8.5}, "degeneracy"),
    ):
        with pytest.raises(ValueError, match=match):
            PLANS["absorption_spectrum"].start(bench, FILM, **kwargs)
    with pytest.raises(ValueError, match="not in the bench's library"):
        PLANS["absorption_spectrum"].start(bench, "no-such-film")
    assert bench.lab_time_s() == 0.0 and bench.lamp.shutter.get() == 0


# ---------------------------------------------------------------- failures: each with its reason, lamp closed
def _measure_failing(RE, bench):
    docs = collect(RE)
    with pytest.raises(AbsorptionError) as err:
        RE(measure_film_doping(bench))
    stop = one(docs, "stop")
    assert stop["exit_status"] == "fail" and err.value.reason in stop["reason"]
    assert bench.lamp.shutter.get() == 0 and bench.engine.state.lamp_shutter_open is False
    assert bench.engine.state.shutter_open is False
    return err.value


def test_a_saturated_detector_is_a_failed_measurement(presets, RE):
    bench = _bench(presets)
    bench.engine.state.faults.add("saturated_detector")
    assert _measure_failing(RE, bench).reason == "saturated"
    too_bright = _bench(presets, lamp_counts_per_s=1e8)  # 1e8 counts in a 1 s read: above the full well
    assert _measure_failing(RE, too_bright).reason == "saturated"


def test_a_lamp_that_is_off_or_too_dim_gives_no_light(presets, RE):
    bench = _bench(presets)
    bench.lamp.ok.put(0)
    err = _measure_failing(RE, bench)
    assert err.reason == "no_light" and "lamp OK = 0" in str(err)
    dim = _bench(presets, lamp_counts_per_s=50.0)
    err = _measure_failing(RE, dim)
    assert err.reason == "no_light" and "counts per pixel above the dark" in str(err)
    assert isinstance(err, AnalysisError) and isinstance(err, ValueError)


def _stored(presets, RE):
    """The primary stream and plan args of a good measurement."""
    bench = _bench(presets, seed=8)
    docs = collect(RE)
    RE(absorption_spectrum(bench, FILM))
    return event_columns(stream_events(docs, "primary")), one(docs, "start")["plan_args"]


@pytest.mark.parametrize(("drop", "reason"), [(0, "no_dark"), (1, "no_reference"), (2, "no_sample")])
def test_a_run_without_one_of_its_reads_says_which(presets, RE, drop, reason):
    cols, args = _stored(presets, RE)
    keep = [i for i in range(3) if i != drop]
    with pytest.raises(AbsorptionError) as err:
        analyse_absorption_spectrum({k: v[keep] for k, v in cols.items()}, args)
    assert err.value.reason == reason


def test_no_neutral_reference_and_no_film_in_the_beam(presets, RE):
    cols, args = _stored(presets, RE)
    zero = dict(cols, lamp_neutral_absorbance=np.zeros_like(cols["lamp_neutral_absorbance"]))
    zero["lamp_neutral_1s_absorbance"] = np.zeros_like(cols["lamp_neutral_1s_absorbance"])
    with pytest.raises(AbsorptionError) as err:
        analyse_absorption_spectrum(zero, args)
    assert err.value.reason == "no_neutral_reference"
    without = {k: v for k, v in cols.items() if not k.startswith("lamp_neutral")}
    with pytest.raises(AbsorptionError) as err:
        analyse_absorption_spectrum(without, args)
    assert err.value.reason == "no_neutral_reference"
    # the "sample" read is the reference again: nothing absorbs in the beam
    spectra = cols["spectrometer_spectrum"].copy()
    spectra[2] = spectra[1] + np.random.default_rng(0).normal(0.0, np.sqrt(spectra[1]))
    with pytest.raises(AbsorptionError) as err:
        analyse_absorption_spectrum(dict(cols, spectrometer_spectrum=spectra), args)
    assert err.value.reason == "no_sample"


def test_offline_analysis_failures(presets):
    sample = presets.get("cas_doped")
    lam = SPECTROMETER_AXIS_NM
    neutral = ab.neutral_absorbance(lam, sample)
    good = ab.absorbance(lam, 4.0, sample)
    m = doping_from_absorbance(lam, good, neutral.total, neutral.one_s)
    assert m.doping_e_per_dot == pytest.approx(4.0, abs=1e-9) and m.uid == ""
    err = np.full(lam.size, 1e-4)
    noisy = good + np.random.default_rng(1).normal(0.0, 1e-4, lam.size)
    m = doping_from_absorbance(lam, noisy, neutral.total, neutral.one_s, absorbance_err=err)
    assert abs(m.doping_e_per_dot - 4.0) < 4 * m.doping_err_e_per_dot and m.doping_err_e_per_dot < 0.05
    cases = [
        ((lam, good * 200, neutral.total, neutral.one_s), "absorbance_out_of_range"),
        ((lam, np.full(lam.size, np.nan), neutral.total, neutral.one_s), "absorbance_out_of_range"),
        ((lam, good, neutral.total[:-1], neutral.one_s), "no_neutral_reference"),
        ((lam, good, neutral.total, np.zeros(lam.size)), "no_neutral_reference"),
        ((lam, -good, neutral.total, neutral.one_s), "no_sample"),
        ((lam, good[:-1], neutral.total, neutral.one_s), "bad_fit"),
    ]
    for args, reason in cases:
        with pytest.raises(AbsorptionError) as e:
            doping_from_absorbance(*args)
        assert e.value.reason == reason, args
    # another material's dots (the peak 40 nm away) are not this reference's dots bleached
    shifted = ab.absorbance(
        lam, 4.0, sample.model_copy(update={"spectra": sample.spectra.model_copy(update={"abs_peak_nm": 1560.0})})
    )
    with pytest.raises(AbsorptionError) as e:
        doping_from_absorbance(lam, shifted, neutral.total, neutral.one_s, absorbance_err=err)
    assert e.value.reason == "bad_fit" and "chi-square" in str(e.value)
    assert set(ABSORPTION_REASONS) == {
        "saturated",
        "no_light",
        "no_reference",
        "no_dark",
        "no_sample",
        "no_neutral_reference",
        "absorbance_out_of_range",
        "bad_fit",
    }
    with pytest.raises(ValueError, match="unknown absorption failure reason"):
        AbsorptionError("cosmic_rays", "x")
    with pytest.raises(ValueError, match="degeneracy"):
        doping_from_absorbance(lam, good, neutral.total, neutral.one_s, degeneracy=0)


def _after_lamp_opens(plan, bench, insert):
    """``plan`` with ``insert()``'s messages right after the lamp's shutter is opened."""
    seen = []

    def mutate(msg):
        if msg.command == "set" and msg.obj is bench.lamp.shutter and msg.args[0] == 1 and not seen:
            seen.append(msg)

            def then():
                ret = yield msg
                yield from insert()
                return ret

            return then(), None
        return None, None

    return plan_mutator(plan, mutate)


def test_an_error_with_the_lamp_on_closes_it(presets, RE):
    bench = _bench(presets)
    docs = collect(RE)

    def fault():
        assert bench.engine.state.lamp_shutter_open
        bench.engine.state.faults.add("nan_readback")
        yield from ()

    with pytest.raises(Exception, match="no valid"):
        RE(_after_lamp_opens(measure_film_doping(bench), bench, fault))
    assert one(docs, "stop")["exit_status"] == "fail"
    assert bench.engine.state.lamp_shutter_open is False and bench.engine.state.shutter_open is False


def test_an_abort_with_the_lamp_on_closes_it(presets, RE):
    bench = _bench(presets)
    docs = collect(RE)

    def pause():
        assert bench.engine.state.lamp_shutter_open
        yield Msg("pause", None, defer=False)

    with pytest.raises(RunEngineInterrupted):
        RE(_after_lamp_opens(measure_film_doping(bench), bench, pause))
    assert RE.state == "paused" and bench.engine.state.lamp_shutter_open
    RE.abort(reason="operator abort (test)")
    assert one(docs, "stop")["exit_status"] == "abort"
    assert bench.engine.state.lamp_shutter_open is False and bench.engine.state.shutter_open is False


# ---------------------------------------------------------------- over Channel Access, on the twin's IOC
def test_over_ca_the_measurement_is_the_in_process_one(RE, presets, control_layer):
    """The same seed and the same operations give the same film and the same measurement over CA (the
    IOC's engine) as in process; a lamp switched off is a failed measurement with the lamp closed."""
    from harness.ioc import caget, caput

    from .test_devices_epics import ioc_and_bench

    with ioc_and_bench(control_layer, seed=7) as (ioc, bench):
        bench.stage.request_film(6.0).wait(30)
        film = bench.stage.sample.get()
        over_ca = RE(measure_film_doping(bench)).plan_result
        lab_time = caget(ioc.pv("SIM:LabTime"))
        assert caget(ioc.pv("ABS:LampShutter")) == 0
        caput(ioc.pv("ABS:LampOK"), 0)
        with pytest.raises(AbsorptionError) as err:
            RE(measure_film_doping(bench))
        assert err.value.reason == "no_light"
        assert caget(ioc.pv("ABS:LampShutter")) == 0 and caget(ioc.pv("PUMP:Shutter")) == 0
        twin = twin_bench_devices(bench.config, seed=7, presets=presets)
    twin.stage.request_film(6.0)
    assert twin.stage.sample.get() == film
    in_process = RE(measure_film_doping(twin)).plan_result
    assert over_ca.doping_e_per_dot == pytest.approx(in_process.doping_e_per_dot, rel=1e-9)
    assert over_ca.doping_err_e_per_dot == pytest.approx(in_process.doping_err_e_per_dot, rel=1e-9)
    assert over_ca.uid != in_process.uid
    assert lab_time == pytest.approx(twin.lab_time_s(), abs=1e-6)
    truth = twin.film_truth(film).doping_e_per_dot
    assert abs(in_process.doping_e_per_dot - truth) < 4 * in_process.doping_err_e_per_dot


# ---------------------------------------------------------------- the command line
def _cli(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "gainloop.cli", *args], capture_output=True, text=True, timeout=300)


def test_gainloop_measure_absorption_prints_the_doping_and_stores_the_run(tmp_path):
    import json

    from gainloop.catalog import Catalog

    proc = _cli("measure", "absorption", "--film", FILM, "--twin", "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["plan"] == "absorption_spectrum" and out["sample"] == FILM
    assert out["doping_e_per_dot"] == pytest.approx(7.4, abs=5 * out["doping_err_e_per_dot"])
    with Catalog(data_dir_path=tmp_path) as cat:
        run = cat.run(out["uid"])
        assert run.metadata["stop"]["exit_status"] == "success"
        assert float(run["analysis"].read()["doping_e_per_dot"].values[0]) == pytest.approx(out["doping_e_per_dot"])
    proc = _cli("replay", out["uid"][:8], "--data-dir", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == out
    # the human-readable line: doping +- error, and the run's uid
    proc = _cli("measure", "absorption", "--film", FILM, "--twin", "--data-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    shown = next(line for line in proc.stdout.splitlines() if line.startswith("doping_e_per_dot:"))
    assert " +- " in shown and float(shown.split()[1]) == pytest.approx(7.4, abs=0.2)
    assert any(line.startswith("uid: ") for line in proc.stdout.splitlines())


def test_gainloop_measure_absorption_says_why_it_failed(tmp_path):
    from gainloop.catalog import Catalog

    # 40 s of white light fills the detector's wells
    proc = _cli("measure", "absorption", "--film", FILM, "--twin", "-a", "exposure_s=40", "--data-dir", str(tmp_path))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "absorption measurement failed (saturated)" in proc.stderr.replace("\n", " ")
    with Catalog(data_dir_path=tmp_path) as cat:
        (uid,) = list(cat.client)
        stop = cat.run(uid).metadata["stop"]
        assert stop["exit_status"] == "fail" and "(saturated)" in stop["reason"]


def test_the_doping_recovery_benchmark_prints_its_table_and_json():
    import json

    proc = _cli_script(REPO / "benchmarks" / "doping_recovery.py", "--films", "3", "--seed", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-1])
    assert len(out["films"]) == 3 and out["seed"] == 4
    for key in (
        "rms_pull",
        "max_abs_pull",
        "max_abs_error_e_per_dot",
        "mean_stated_error_e_per_dot",
        "lab_time_per_measurement_s",
    ):
        assert math.isfinite(out[key]), key
    assert out["lab_time_per_measurement_s"] == out["lab_time_model_s"] == 7.0
    assert out["max_abs_pull"] < 4 and out["mean_stated_error_e_per_dot"] < 0.05
    assert any(line.startswith("film-003-") for line in lines[:-1])  # the readable table


def _cli_script(path, *args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=300)
