"""Replay: stored runs re-analysed from stored data and re-streamed through the live callbacks."""

from __future__ import annotations

import numpy as np
import pytest
from bluesky import RunEngine

from gainloop.catalog import Catalog, RunNotFoundError
from gainloop.replay import ReplayError, replay, stream_columns
from plans.measurements import ase_fluence_scan, vsl_scan
from sim.devices import twin_bench_devices

from .conftest import REPO

BENCH_FILE = REPO / "examples" / "twin_bench.toml"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


def _run_live(catalog, plan):
    RE = RunEngine({}, call_returns_result=True)
    RE.subscribe(catalog.writer())
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    return RE(plan).plan_result, docs


@pytest.fixture(scope="module")
def ase_run(catalog):
    bench = twin_bench_devices(BENCH_FILE, seed=5)
    return _run_live(catalog, ase_fluence_scan(bench, "cas_doped-film", stripe_length_um=800.0))


def test_replay_re_derives_the_live_result_exactly(catalog, ase_run):
    live, _ = ase_run
    rr = replay(catalog, live["uid"])
    assert rr.result == live
    assert rr.matches
    assert set(rr.stored) == {"threshold_uJ_cm2", "threshold_err_uJ_cm2"}


def test_replay_streams_the_documents_the_live_callbacks_saw(catalog, ase_run):
    live, live_docs = ase_run
    seen = []
    rr = replay(catalog, live["uid"], [lambda name, doc: seen.append((name, doc))])
    assert [n for n, _ in seen] == [n for n, _ in live_docs]
    assert rr.n_documents == len(live_docs)
    live_events = [d for n, d in live_docs if n == "event"]
    events = [d for n, d in seen if n == "event"]
    for a, b in zip(live_events, events, strict=True):
        assert a["seq_num"] == b["seq_num"]
        assert set(a["data"]) == set(b["data"])
        for key, value in a["data"].items():
            np.testing.assert_array_equal(np.asarray(b["data"][key]), np.asarray(value))
    assert seen[0][1]["uid"] == live["uid"] and seen[-1][1]["exit_status"] == "success"


def test_replay_of_a_vsl_run(catalog):
    bench = twin_bench_devices(BENCH_FILE, seed=6)
    live, _ = _run_live(
        catalog, vsl_scan(bench, "cas_doped-film", fluence_uJ_cm2=2200.0, stripe_lengths_um=np.linspace(10, 40, 12))
    )
    rr = replay(catalog, live["uid"])
    assert rr.result == live and rr.matches


def test_stored_primary_columns_match_the_live_ones(catalog, ase_run):
    live, live_docs = ase_run
    cols = stream_columns(catalog.run(live["uid"])["primary"])
    desc = next(d["uid"] for n, d in live_docs if n == "descriptor" and d["name"] == "primary")
    fluence = [d["data"]["pump_fluence"] for n, d in live_docs if n == "event" and d["descriptor"] == desc]
    np.testing.assert_array_equal(cols["pump_fluence"], fluence)
    assert cols["spectrometer_spectrum"].shape == (len(fluence), 512)


def test_unknown_uid_is_a_clear_error(catalog):
    with pytest.raises(RunNotFoundError, match="no run with uid 'nope'"):
        replay(catalog, "nope")


def test_a_run_without_a_stop_document_is_not_analysed(catalog):
    from bluesky.plans import count
    from ophyd.sim import det

    writer = catalog.writer()
    docs = []
    RE = RunEngine({})
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    RE(count([det], 3), plan_name="ase_fluence_scan", plan_args={}, sample_id="cas_doped-film")
    for name, doc in docs[:-1]:  # as if the process died before the stop document
        writer(name, doc)
    uid = docs[0][1]["uid"]
    seen = []
    with pytest.raises(ReplayError, match="no stop document"):
        replay(catalog, uid, [lambda name, doc: seen.append(name)])
    # TiledWriter batches event rows until the stop document: the start and descriptor survive
    assert seen[0] == "start" and "descriptor" in seen and "stop" not in seen


def test_a_foreign_run_is_refused_clearly(catalog):
    from bluesky.plans import count
    from ophyd.sim import det

    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (uid,) = RE(count([det], 2))
    with pytest.raises(ReplayError, match="cannot re-analyse"):
        replay(catalog, uid)
