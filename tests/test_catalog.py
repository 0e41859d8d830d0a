"""The embedded catalog: runs written through TiledWriter and read back as BlueskyRuns."""

from __future__ import annotations

import logging

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from gainloop.catalog import Catalog, CatalogError, RunNotFoundError, data_dir


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("GAINLOOP_DATA_DIR", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert (tmp_path / "explicit").is_dir()


def test_a_run_round_trips_through_the_embedded_catalog(catalog):
    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (uid,) = RE(bp.scan([det], motor, 0, 1, 5), sample_id="cas_doped-film")
    run = catalog.run(uid)
    assert run.metadata["start"]["sample_id"] == "cas_doped-film"
    assert run.metadata["stop"]["exit_status"] == "success"
    data = run["primary"].read()
    assert list(data["motor"].values) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])


def test_a_short_array_reading_comes_back_as_the_same_numbers(catalog):
    """An array reading of a few elements (a small detector, a fit's parameters) is stored as numbers, not as
    its numpy text rounded to 8 digits (what the event table's SQL storage made of arrays of <= 16)."""
    import numpy as np
    from ophyd import Signal

    values = np.array([0.1, 1 / 3, 2.0, 3.5])
    quad = Signal(name="quad", value=values)
    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (uid,) = RE(bp.count([quad], num=2))
    got = catalog.run(uid)["primary"].read()["quad"].values
    assert got.dtype == np.float64 and got.shape == (2, 4)
    assert np.array_equal(got, np.stack([values, values]))


def test_the_embedded_catalogs_clients_read_waveforms_uncompressed(catalog):
    """On loopback, compressing a stored waveform costs the server and the reader CPU and saves no time:
    the embedded catalog's clients (the readers' and the drain's) ask for it as stored bytes."""
    import numpy as np
    from ophyd import Signal

    spectrum = Signal(name="spectrum", value=np.linspace(0.0, 1.0, 512))
    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (uid,) = RE(bp.count([spectrum], num=20))
    node = catalog.run(uid)["primary"]["spectrum"]
    for client in (catalog.client, catalog.new_client()):
        http = client.context.http_client
        response = http.get(node.item["links"]["full"], params={"format": "application/octet-stream"})
        assert response.status_code == 200
        assert response.headers.get("content-encoding", "identity") == "identity", response.headers
        assert len(response.content) == 20 * 512 * 8
    assert np.array_equal(node.read(), np.tile(np.linspace(0.0, 1.0, 512), (20, 1)))


def test_the_embedded_catalog_database_is_in_write_ahead_log_mode(tmp_path):
    """Readers and the drain's writes do not block each other (in rollback-journal mode a long read made the
    server answer "database is locked" to the drain), and a catalog made before is switched on opening."""
    import sqlite3
    from pathlib import Path

    def mode(path) -> str:
        connection = sqlite3.connect(path)
        try:
            return connection.execute("PRAGMA journal_mode").fetchone()[0]
        finally:
            connection.close()

    with Catalog(data_dir_path=tmp_path) as cat:
        db = Path(cat.location) / "catalog.db"
        assert mode(db) == "wal"
    connection = sqlite3.connect(db, isolation_level=None)
    connection.execute("PRAGMA journal_mode=DELETE")  # as tiled's initialisation left it
    connection.close()
    assert mode(db) == "delete"
    with Catalog(data_dir_path=tmp_path):
        assert mode(db) == "wal"


def test_the_embedded_servers_logs_never_hold_its_api_key(tmp_path):
    """The embedded server's access log records every request, whose URL carries ``api_key=``: the key
    itself is never written to the folder's logs."""
    import time
    from pathlib import Path

    from gainloop.embedded import PROCESS_API_KEY

    with Catalog(data_dir_path=tmp_path) as cat:
        RE = RunEngine({})
        RE.subscribe(cat.writer())
        (uid,) = RE(bp.count([det], num=2))
        assert cat.run(uid).metadata["stop"]["exit_status"] == "success"
        access = Path(cat.location) / "access.log"
        deadline = time.monotonic() + 10.0
        while "api_key=" not in access.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    logs = access.read_text() + (Path(cat.location) / "error.log").read_text()
    assert "api_key=[redacted]" in logs and "GET /api/v1" in logs
    assert PROCESS_API_KEY not in logs


def test_a_second_embedded_catalog_in_the_process_leaves_the_first_readable_and_both_reopen(catalog, tmp_path):
    RE = RunEngine({})
    RE.subscribe(catalog.writer())
    (first_uid,) = RE(bp.count([det]))
    folder = tmp_path / "other"
    with Catalog(data_dir_path=folder) as other:
        RE2 = RunEngine({})
        RE2.subscribe(other.writer())
        (other_uid,) = RE2(bp.count([det], 2))
        assert catalog.run(first_uid).metadata["stop"]["exit_status"] == "success"  # the first still answers
        assert other_uid in other.client and first_uid not in other.client
    assert catalog.run(first_uid).metadata["start"]["uid"] == first_uid
    with Catalog(data_dir_path=folder) as reopened:  # an existing catalog database is reused, not re-created
        assert len(reopened.run(other_uid)["primary"].read()["det"]) == 2


def test_unknown_uid_is_a_clear_error(catalog):
    with pytest.raises(RunNotFoundError, match="no run with uid 'nope'"):
        catalog.run("nope")


def test_unreachable_catalog_says_what_to_start(tmp_path):
    expected = r"cannot reach the catalog at http://127\.0\.0\.1:9/api.*Start the Tiled server"
    with pytest.raises(CatalogError, match=expected):
        Catalog("http://127.0.0.1:9/api", data_dir_path=tmp_path)


def test_an_unreachable_catalog_error_never_shows_the_key(tmp_path):
    with pytest.raises(CatalogError) as info:
        Catalog("http://127.0.0.1:9/?api_key=SECRETKEY123", data_dir_path=tmp_path, api_key="OTHERKEY456")
    message = str(info.value)
    assert "cannot reach the catalog" in message
    assert "SECRETKEY123" not in message and "OTHERKEY456" not in message


# ------------------------------------------------------------------ the writer's guard, the backup upload
def _composed_run(n_events: int = 4, *, stop: bool = True, uid: str | None = None) -> list[tuple[str, dict]]:
    """A small run composed with event_model (no RunEngine needed to make documents)."""
    import uuid

    from event_model import compose_run

    run = compose_run(uid=uid or str(uuid.uuid4()), time=1.7e9, metadata={"plan_name": "composed"})
    desc = run.compose_descriptor(name="primary", data_keys={"y": {"source": "test", "dtype": "number", "shape": []}})
    docs = [("start", run.start_doc), ("descriptor", desc.descriptor_doc)]
    for k in range(n_events):
        t = 1.7e9 + k + 1
        docs.append(("event", desc.compose_event(data={"y": k / 3}, timestamps={"y": t}, seq_num=k + 1, time=t)))
    if stop:
        docs.append(("stop", run.compose_stop(time=1.7e9 + n_events + 2)))
    return docs


def _stored(catalog, uid):
    from gainloop.replay import run_documents

    return list(run_documents(catalog.run(uid)))


def test_a_stored_run_is_not_written_again_by_a_second_writer_or_a_replay(catalog, caplog):
    RE = RunEngine({})
    docs = []
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    first, second = catalog.writer(), catalog.writer()
    RE.subscribe(first)
    RE.subscribe(second)  # two writers on one RunEngine
    with caplog.at_level("INFO"):
        (uid,) = RE(bp.count([det], num=5))
        first.flush()  # drained: the replay meets the stored run, not the spooled one
        replay = catalog.writer()
        for name, doc in docs:  # the same documents again
            replay(name, doc)
        replay.flush()
    assert first.skipped == [] and second.skipped == [uid] and replay.skipped == [uid]
    assert catalog.spool.results[uid].action == "skipped"  # the replay's spool file met the stored run
    assert len(catalog.run(uid)["primary"].read()["det"]) == 5  # rows written once, not twice
    # nothing said about it by the writers (ophyd's CA threads of an earlier module in this worker may still log)
    writers = ("gainloop", "bluesky", "tiled", "bluesky_tiled_plugins", "httpx")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.split(".")[0] in writers] == []
    assert sum("not written again" in r.getMessage() for r in caplog.records) == 2
    assert catalog.pending_backup() == []  # the spool is empty once drained


def _spool_file(folder, docs, *, times: int = 1, name: str | None = None):
    """A spool file as a process that ended leaves it (written aside, then moved in whole)."""
    import json
    import os

    target = folder / (name or f"{docs[0][1]['uid']}.jsonl")
    tmp = folder.parent / f"{target.name}.tmp"
    with open(tmp, "a", encoding="utf-8") as f:
        for _ in range(times):
            for n, doc in docs:
                f.write(json.dumps({"name": n, "doc": doc}) + "\n")
    os.replace(tmp, target)
    return target


def test_upload_backup_rewrites_partial_runs_skips_complete_ones_and_is_idempotent(tmp_path):
    """What processes left in the spool: a run cut off mid-write in the catalog, a run never written, a run
    complete already, a run whose process died before its stop document, and a file a live writer holds."""
    import fcntl
    import os

    from bluesky_tiled_plugins import TiledWriter

    from gainloop.backup import upload_backup
    from harness.faults.catalog import compare_run

    partial, absent, complete = _composed_run(), _composed_run(), _composed_run()
    died, live = _composed_run(stop=False), _composed_run(stop=False)
    with Catalog(data_dir_path=tmp_path) as catalog:  # its own catalog: no drain thread runs meanwhile
        plain = TiledWriter(catalog.client, batch_size=1)  # the server went away after the 2nd event
        for name, doc in partial[:4]:
            plain(name, doc)
        whole = TiledWriter(catalog.client)
        for name, doc in complete:
            whole(name, doc)
        spool = catalog.spool_dir
        _spool_file(spool, partial, times=2)  # the same run twice in a file (repeats are dropped)
        _spool_file(spool, absent + complete, name="shared.jsonl")  # two runs in one file
        _spool_file(spool, died)
        held = _spool_file(spool, live)
        fd = os.open(held, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # its writer is alive: nobody else touches it
        try:
            assert catalog.stored_state(partial[0][1]["uid"])[0] == "incomplete"
            reports = upload_backup(catalog)
            actions = {r.uid: r.action for r in reports}
            assert actions == {
                partial[0][1]["uid"]: "replaced",
                absent[0][1]["uid"]: "uploaded",
                complete[0][1]["uid"]: "skipped",
                died[0][1]["uid"]: "uploaded",
            }
            for docs in (partial, absent, complete, died):
                assert compare_run(docs, _stored(catalog, docs[0][1]["uid"])) == (0, [])
            assert not catalog.run(died[0][1]["uid"]).metadata.get("stop")  # interrupted, as it was
            assert sorted(p.name for p in spool.glob("*.jsonl")) == [held.name]  # files done leave the spool
            stored = {d[0][1]["uid"]: _stored(catalog, d[0][1]["uid"]) for d in (partial, absent, complete, died)}

            assert upload_backup(catalog) == []  # again: nothing to do
            _spool_file(spool, complete)  # a complete run put back: skipped, the catalog unchanged
            assert [(r.uid, r.action) for r in upload_backup(catalog)] == [(complete[0][1]["uid"], "skipped")]
            assert {uid: _stored(catalog, uid) for uid in stored} == stored
            assert live[0][1]["uid"] not in catalog.client
        finally:
            os.close(fd)
        assert upload_backup(catalog)[0].uid == live[0][1]["uid"]  # its writer gone: written as it is


def test_a_spooled_run_is_readable_once_drained_and_the_writer_never_waits_on_the_catalog(tmp_path):
    """The RunEngine's documents reach the spool file (fsynced at the stop); the drain writes them; a run a
    process left behind (killed before its drain) is written by the next opening of the catalog."""
    import json

    with Catalog(data_dir_path=tmp_path) as catalog:
        RE = RunEngine({})
        writer = catalog.writer()
        RE.subscribe(writer)
        (uid,) = RE(bp.count([det], num=3))
        assert catalog.run(uid).metadata["stop"]["exit_status"] == "success"  # (the reader waits for the drain)
        assert catalog.spool.results[uid].action == "written" and catalog.spool.lag_s
    left = _composed_run(n_events=2)
    _spool_file(tmp_path / "spool", left)
    with Catalog(data_dir_path=tmp_path) as again:  # the drain resumes at the next start
        assert not list((tmp_path / "spool").glob("*.jsonl"))
        assert compare_run(left, _stored(again, left[0][1]["uid"])) == (0, [])
        assert json.loads(json.dumps(again.run(uid).metadata["stop"]))["exit_status"] == "success"


def compare_run(emitted, stored):
    from harness.faults.catalog import compare_run as compare

    return compare(emitted, stored)
