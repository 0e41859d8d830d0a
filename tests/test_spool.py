"""The spool between the RunEngine and the catalog: a process killed mid-run loses nothing it wrote, and a
reader that the catalog cannot serve in time is told which runs wait and what to run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from gainloop.catalog import Catalog
from gainloop.spool import SpoolError

from .conftest import REPO

#: A writer process: spools one run (every document fsynced), says each event on stdout, then waits to be killed.
CHILD = textwrap.dedent(
    """
    import json, sys, time
    from event_model import compose_run
    from gainloop.spool import Spool, SpoolWriter

    writer = SpoolWriter(Spool(None, sys.argv[1]), fsync_each=True)
    run = compose_run(metadata={"plan_name": "killed"})
    desc = run.compose_descriptor(name="primary", data_keys={"y": {"source": "t", "dtype": "number", "shape": []}})
    for name, doc in (("start", run.start_doc), ("descriptor", desc.descriptor_doc)):
        writer(name, doc)
        print(json.dumps([name, doc]), flush=True)
    for k in range(1, 1000):
        event = desc.compose_event(data={"y": k / 7}, timestamps={"y": 1.7e9 + k}, seq_num=k, time=1.7e9 + k)
        writer("event", event)
        print(json.dumps(["event", event]), flush=True)
        time.sleep(0.01)
    """
)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    with Catalog(data_dir_path=tmp_path_factory.mktemp("data")) as cat:
        yield cat


def test_sigkill_mid_run_loses_no_document_written_and_the_next_reader_gets_the_run(catalog):
    from gainloop.replay import run_documents
    from harness.faults.catalog import compare_run

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(catalog.spool_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    emitted = []
    try:
        while len(emitted) < 2 + 5:  # start, descriptor, 5 events
            line = proc.stdout.readline()
            assert line, "the writer process ended before it was killed"
            emitted.append(tuple(json.loads(line)))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    emitted += [tuple(json.loads(line)) for line in proc.stdout.read().splitlines() if line.strip()]
    proc.stdout.close()
    uid = emitted[0][1]["uid"]
    run = catalog.run(uid)  # the reader drains what the killed process left (nobody holds its file now)
    assert not run.metadata.get("stop")  # interrupted: written as it was
    stored = [(n, json.loads(json.dumps(d))) for n, d in run_documents(run)]
    assert compare_run(emitted, stored) == (0, [])  # every document it said it wrote (it wrote them first)
    assert catalog.spool.results[uid].action == "written" and not catalog.pending_backup()


def test_a_reader_waits_bounded_for_a_finished_run_and_names_it_when_it_does_not_come(catalog, tmp_path):
    """A run another (live) process finished and holds, not drained yet: a reader waits for it, bounded, and
    is told which run and what to run; once its holder lets go, the reader gets it."""
    import fcntl
    import os

    from event_model import compose_run

    run = compose_run(metadata={"plan_name": "held"})
    desc = run.compose_descriptor(name="primary", data_keys={"y": {"source": "t", "dtype": "number", "shape": []}})
    event = desc.compose_event(data={"y": 1.0}, timestamps={"y": 1.7e9}, seq_num=1, time=1.7e9)
    docs = [
        ("start", run.start_doc),
        ("descriptor", desc.descriptor_doc),
        ("event", event),
        ("stop", run.compose_stop()),
    ]
    uid = run.start_doc["uid"]
    aside = tmp_path / f"{uid}.jsonl"
    aside.write_text("".join(json.dumps({"name": n, "doc": d}) + "\n" for n, d in docs))
    fd = os.open(aside, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # its writer is alive (and would drain it itself)
    try:
        os.replace(aside, catalog.spool_dir / aside.name)
        with pytest.raises(SpoolError, match=rf"has not taken 1 run\(s\) .* within 1 s \({uid}\).*upload-backup"):
            catalog.settle(1.0)
        assert (catalog.spool_dir / f"{uid}.jsonl").exists()  # nothing lost, nothing written twice
    finally:
        os.close(fd)  # its writer is gone: the file is anyone's to drain
    assert catalog.run(uid).metadata["stop"]["uid"] == docs[-1][1]["uid"]


def test_a_spool_line_reads_back_as_the_json_module_would_have_written_it(tmp_path):
    """orjson writes the spool's lines; where it would differ from the json module (NaN, infinities, non-str
    keys, integers beyond 64 bits) the json module writes them: every value reads back the same, NaN as NaN."""
    import math

    import numpy as np

    from gainloop.spool import _jsonable, _line, read_spool_file

    spectrum = np.linspace(0.1, 3.3, 512)
    docs = [
        ("event", {"data": {"spectrum": spectrum, "x": np.float32(0.1), "n": np.int64(7), "ok": np.bool_(True)}}),
        ("event", {"data": {"threshold": float("nan"), "err": float("inf"), "low": -math.inf}}),
        ("start", {"uid": "u", "note": None, "shape": (2, 3), "ids": {1: "a"}, "big": 2**70, "name": "núll"}),
    ]
    path = tmp_path / "run.jsonl"
    path.write_bytes(b"".join(_line(name, doc) for name, doc in docs))
    read, _, problems = read_spool_file(path)
    assert problems == []
    for (name, doc), (name_back, doc_back) in zip(docs, read, strict=True):
        expected = json.loads(json.dumps(doc, default=_jsonable))
        assert name_back == name
        assert json.dumps(doc_back, sort_keys=True) == json.dumps(expected, sort_keys=True)  # (NaN == NaN here)
    assert math.isnan(read[1][1]["data"]["threshold"]) and read[1][1]["data"]["err"] == math.inf
    assert read[0][1]["data"]["spectrum"] == spectrum.tolist()
    assert read[0][1]["data"]["x"] == float(np.float32(0.1))  # the float32's own value, not 0.1


def test_the_spool_is_the_one_writer_into_the_catalog():
    """Every document reaches Tiled through the spool's drain: no module of the service, and no fault scenario
    (``benchmarks/fault_matrix.py`` runs them), makes a ``TiledWriter`` or a ``TiledInserter`` of its own, or
    writes nodes into a catalog client itself (only the spool's drain does, and the tests that fake a
    partial run)."""
    import ast

    writers = {"TiledWriter", "TiledInserter", "create_container", "write_array", "create_appendable_table"}
    found = []
    for folder in ("gainloop", "harness", "plans", "sim", "devices"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                    if name in writers:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert found and all(f.startswith("gainloop/spool.py:") for f in found), found
