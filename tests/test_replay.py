"""Replay: stored runs re-analysed from stored data and re-streamed through the live callbacks."""

from __future__ import annotations

import copy
import uuid

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


def _as_another_run(docs, tamper):
    """``docs`` as the documents of another run: every uid new (and every reference to one), each
    event's data passed through ``tamper(stream_name, data) -> data``."""
    new_uids: dict[str, str] = {}

    def new(uid: str) -> str:
        return new_uids.setdefault(uid, str(uuid.uuid4()))

    stream_of: dict[str, str] = {}
    out = []
    for name, doc in docs:
        doc = copy.deepcopy(doc)
        doc["uid"] = new(doc["uid"])
        if name in ("descriptor", "stop"):
            doc["run_start"] = new(doc["run_start"])
        if name == "descriptor":
            stream_of[doc["uid"]] = doc["name"]
        elif name == "event":
            doc["descriptor"] = new(doc["descriptor"])
            doc["data"] = tamper(stream_of[doc["descriptor"]], doc["data"])
        elif name not in ("start", "stop"):
            raise AssertionError(f"a {name} document: this copy knows start, descriptor, event and stop only")
        out.append((name, doc))
    return out


def test_replay_re_derives_from_raw_data_and_flags_a_tampered_analysis(catalog, ase_run):
    """A run whose primary events are the live run's but whose stored analysis says otherwise: the replay
    gives the values derived from the raw data (the live ones), not the stored ones, and does not match."""
    live, live_docs = ase_run

    def tamper(stream: str, data: dict) -> dict:
        if stream != "analysis":
            return data
        return {**data, "threshold_uJ_cm2": 1.5 * data["threshold_uJ_cm2"]}

    docs = _as_another_run(live_docs, tamper)
    writer = catalog.writer()
    for name, doc in docs:
        writer(name, doc)
    uid = docs[0][1]["uid"]
    assert uid != live["uid"]
    raw, stored_raw = stream_columns(catalog.run(live["uid"])["primary"]), stream_columns(catalog.run(uid)["primary"])
    assert set(stored_raw) == set(raw)
    for key, values in raw.items():
        np.testing.assert_array_equal(stored_raw[key], values)

    rr = replay(catalog, uid)
    assert rr.result == {**live, "uid": uid}  # re-derived from the raw events: the live run's numbers
    assert rr.stored == {
        "threshold_uJ_cm2": 1.5 * live["threshold_uJ_cm2"],
        "threshold_err_uJ_cm2": live["threshold_err_uJ_cm2"],
    }
    assert rr.result["threshold_uJ_cm2"] != rr.stored["threshold_uJ_cm2"]
    assert not rr.matches
    assert replay(catalog, live["uid"]).matches  # the untouched run still does


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
