"""Sweep writers under load: N writer processes write their runs into one Tiled server at once, as a
sweep's Dask workers do (``gainloop.sweep.run_task`` into ``gainloop catalog serve``).

Each writer process opens the catalog as a sweep worker does (``gainloop.sweep.worker_catalog``: the
server's URI and API key, the host's data folder, whose spool all the writers share), subscribes one
``campaign_writer()`` as ``run_campaign`` does, and writes a known set of runs: a campaign-like
record run (``plan_name`` "campaign", fsynced at every document, open the whole time, one
``outcomes`` event after each trial: it lasts longer than the drain's ``stream_after_s``, so the
drain streams it while it is open) and ``runs`` trial runs nested in it (a ``primary`` stream of
``events`` events with two scalars and a 32-point waveform, stored as an array node). Then, as
``run_task`` does, it waits for the drain of its runs (``Catalog.settle``) and closes its catalog.
Before the record's stop document each writer waits (up to ``STREAMED_TIMEOUT_S``) until the catalog
holds the record still open, i.e. the drain streamed it (``records_streamed`` counts the writers that saw it).

Every document is a function of (tag, seed, writer, run index): uids are ``uuid5`` of the tag, so the
reader knows the expected runs without trusting what the writers say. The reader then finds every run
by its tag in the catalog and reads it back (``gainloop.replay.run_documents``, as replay does):

* ``lost``: an expected run absent, or stored without one of its documents (start, descriptors,
  every event, stop) or with one that differs from what was written;
* ``doubled``: a run stored under more than one node, an event row stored twice (the same
  ``seq_num`` of a stream more than once), or more rows than events written;
* ``unexpected``: a run with the tag that no writer wrote.

``scenario_sweep_writers(workdir, env)`` runs it against a ``gainloop catalog serve`` of
``harness.faults.FaultEnv`` (a fresh PostgreSQL database): ``tests/test_sweep_load.py`` asserts on
it, ``benchmarks/sweep_load.py`` prints it. The module is also the writer process:
``python -m harness.sweep_load writer ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness.documents import by_run
from harness.faults import FaultEnv
from harness.faults._env import clean_env
from harness.faults.catalog import compare_run

__all__ = ["LoadFigures", "expected_runs", "read_back", "scenario_sweep_writers"]

REPO = Path(__file__).resolve().parents[1]
WAVEFORM_POINTS = 32  # above TiledWriter's MAX_ARRAY_SIZE (16): an array node, as the twin's spectra
#: Seconds the writers wait for each other before writing (their imports take seconds each).
READY_TIMEOUT_S = 120.0
#: Seconds a writer waits, before the record run's stop, for the drain to have streamed the open record.
STREAMED_TIMEOUT_S = 20.0


@dataclass
class LoadFigures:
    """What the readers found after N writers: runs expected, stored complete, lost, doubled (all per run)."""

    writers: int
    runs_written: int  # runs the writers wrote (record runs included)
    runs_stored: int  # runs found complete and equal to what was written
    lost: int  # runs absent or incomplete or different
    doubled: int  # runs stored twice, or with an event row twice
    unexpected: int  # runs with the tag that no writer wrote
    write_s: float  # wall seconds from the writers' common start until the last one's runs were in the catalog
    read_s: float  # wall seconds reading every run back
    streamed: int = 0  # writers whose record run was in the catalog before its stop (streamed while open)
    errors: list[str] = field(default_factory=list)  # the writers' exceptions, warnings, runs left in the spool
    problems: list[str] = field(default_factory=list)  # what the reader found lost or doubled

    @property
    def runs_per_s(self) -> float:
        """Runs written into the catalog per wall second, the N writers together."""
        return self.runs_written / self.write_s if self.write_s > 0 else float("nan")

    @property
    def ok(self) -> bool:
        return (
            not (self.lost or self.doubled or self.unexpected or self.errors) and self.runs_stored == self.runs_written
        )

    def as_dict(self) -> dict:
        return {
            "writers": self.writers,
            "runs_written": self.runs_written,
            "runs_stored": self.runs_stored,
            "lost": self.lost,
            "doubled": self.doubled,
            "unexpected": self.unexpected,
            "write_s": self.write_s,
            "read_s": self.read_s,
            "runs_per_s": self.runs_per_s,
            "records_streamed": self.streamed,
            "errors": self.errors,
            "problems": self.problems,
            "ok": self.ok,
        }


# ------------------------------------------------------------------ the known runs
def _uid(tag: str, *parts) -> str:
    return str(uuid.uuid5(uuid.UUID(tag), "-".join(map(str, parts))))


def _value(seed: int, writer: int, i: int, k: int) -> float:
    return float(seed * 1_000_003 + writer * 10_007 + i * 101 + k) / 7.0


def _trial_run(tag: str, seed: int, writer: int, i: int, n_events: int, campaign_uid: str) -> list[tuple[str, dict]]:
    """Trial ``i`` of ``writer``: start, one ``primary`` descriptor, ``n_events`` events, stop."""
    from event_model import compose_run

    t0 = 1.7e9 + writer * 1e5 + (i + 1) * 10.0
    run = compose_run(
        uid=_uid(tag, "trial", writer, i),
        time=t0,
        metadata={
            "plan_name": "load_trial",
            "load_tag": tag,
            "campaign_uid": campaign_uid,
            "writer": writer,
            "trial_index": i,
            "seed": seed,
        },
    )
    docs = [("start", run.start_doc)]
    data_keys = {
        "x": {"source": "load", "dtype": "number", "shape": []},
        "y": {"source": "load", "dtype": "number", "shape": []},
        "spectrum": {"source": "load", "dtype": "array", "shape": [WAVEFORM_POINTS]},
    }
    desc = run.compose_descriptor(name="primary", data_keys=data_keys, uid=_uid(tag, "primary", writer, i), time=t0)
    docs.append(("descriptor", desc.descriptor_doc))
    for k in range(n_events):
        y = _value(seed, writer, i, k)
        t = t0 + 0.01 * (k + 1)
        data = {"x": float(k), "y": y, "spectrum": [y + p / 8.0 for p in range(WAVEFORM_POINTS)]}
        docs.append(
            (
                "event",
                desc.compose_event(
                    data=data,
                    timestamps=dict.fromkeys(data, t),
                    seq_num=k + 1,
                    time=t,
                    uid=_uid(tag, "e", writer, i, k),
                ),
            )
        )
    docs.append(("stop", run.compose_stop(exit_status="success", time=t0 + 5.0, uid=_uid(tag, "stop", writer, i))))
    return docs


def expected_runs(tag: str, seed: int, writer: int, n_runs: int, n_events: int) -> list[tuple[str, dict]]:
    """Every document ``writer`` writes, in its order: the record run's start, then per trial the trial's
    documents and one ``outcomes`` event of the record, then the record's stop."""
    from event_model import compose_run

    t0 = 1.7e9 + writer * 1e5
    record_uid = _uid(tag, "record", writer)
    record = compose_run(
        uid=record_uid,
        time=t0,
        metadata={"plan_name": "campaign", "load_tag": tag, "campaign_uid": record_uid, "writer": writer, "seed": seed},
    )
    out = [("start", record.start_doc)]
    outcomes = record.compose_descriptor(
        name="outcomes",
        data_keys={
            "trial_index": {"source": "load", "dtype": "integer", "shape": []},
            "y_best": {"source": "load", "dtype": "number", "shape": []},
        },
        uid=_uid(tag, "outcomes", writer),
        time=t0 + 0.5,
    )
    out.append(("descriptor", outcomes.descriptor_doc))
    for i in range(n_runs):
        out += _trial_run(tag, seed, writer, i, n_events, record_uid)
        t = t0 + (i + 1) * 10.0 + 6.0
        data = {"trial_index": i, "y_best": _value(seed, writer, i, 0)}
        out.append(
            (
                "event",
                outcomes.compose_event(
                    data=data, timestamps=dict.fromkeys(data, t), seq_num=i + 1, time=t, uid=_uid(tag, "o", writer, i)
                ),
            )
        )
    out.append(
        ("stop", record.compose_stop(exit_status="success", time=t0 + (n_runs + 1) * 10.0, uid=_uid(tag, "rs", writer)))
    )
    return out


# ------------------------------------------------------------------ the writer process
class _Problems(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _seen_open(cat, uid: str, timeout_s: float = STREAMED_TIMEOUT_S) -> bool:
    """Whether the catalog holds run ``uid`` before its stop document is written (the drain streamed it
    while open), waiting up to ``timeout_s`` for it."""
    deadline = time.monotonic() + timeout_s
    while True:
        if cat.stored_state(uid).state == "incomplete":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _writer(ns) -> int:
    """One sweep worker's writing: open the catalog as ``run_task`` does, wait for the others, write, settle."""
    import warnings

    from gainloop.sweep import worker_catalog

    seen = _Problems()
    logging.getLogger().addHandler(seen)
    errors: list[str] = []
    docs = expected_runs(ns.tag, ns.seed, ns.writer, ns.runs, ns.events)
    uids = [d["uid"] for n, d in docs if n == "start"]
    t0 = t1 = float("nan")
    streamed = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target = {"uri": ns.catalog, "api_key": os.environ.get("TILED_API_KEY"), "data_dir": ns.data_dir}
        cat = worker_catalog(target)
        try:
            writer = cat.campaign_writer()
            ready, go = Path(ns.barrier) / f"ready-{ns.writer}", Path(ns.barrier) / "go"
            ready.touch()
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not go.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no go from the parent in {READY_TIMEOUT_S} s")
                time.sleep(0.01)
            t0 = time.time()
            for name, doc in docs:
                if name == "stop" and doc["run_start"] == uids[0]:
                    streamed = _seen_open(cat, uids[0])
                writer(name, doc)
                if name == "stop" and doc["run_start"] != uids[0]:
                    time.sleep(ns.pause_s)  # the trial's analysis, the optimiser's proposal...
            try:
                cat.settle(uids=uids)  # as run_task: the task ends once its runs are in the catalog
            except Exception as exc:
                errors.append(f"settle: {type(exc).__name__}: {exc}")
            t1 = time.time()
            results = {u: r.action for u, r in cat.spool.results.items() if u in uids}
            errors += [f"run {u}: drained as {a!r}" for u, a in results.items() if a not in ("written", "replaced")]
            errors += [f"run {u}: still in the spool" for u in writer.backed_up]
        finally:
            cat.close()
    errors += [f"log {r.levelname} {r.name}: {r.getMessage()[:300]}" for r in seen.records]
    errors += [f"warning: {w.category.__name__}: {str(w.message)[:300]}" for w in caught]
    out = {"writer": ns.writer, "uids": uids, "errors": errors, "started": t0, "settled": t1, "streamed": streamed}
    Path(ns.out).write_text(json.dumps(out))
    return 0


# ------------------------------------------------------------------ the scenario
def _spawn(args: list[str], api_key: str, log: Path) -> subprocess.Popen:
    env = clean_env(TILED_API_KEY=api_key)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "harness.sweep_load", "writer", *args], cwd=REPO, env=env, stdout=f, stderr=f
        )


def _table_rows(run) -> Counter:
    """(stream, seq_num) -> rows stored, from each stream's event table (one request a stream)."""
    rows: Counter = Counter()
    for name in list(run):
        parts = run[name].base
        if "internal" in parts:
            rows.update((name, int(s)) for s in parts["internal"].read()["seq_num"])
    return rows


def read_back(catalog, tag: str, expected: dict[str, list[tuple[str, dict]]]) -> tuple[int, int, int, int, list]:
    """(stored complete, lost, doubled, unexpected, problems): every run with the tag read back."""
    from tiled.queries import Key

    from gainloop.replay import run_documents

    # by the start document's uid, not the node's key: a run stored again under another key is doubled too
    found = [
        (run.metadata["start"]["uid"], run) for run in catalog.client.search(Key("start.load_tag") == tag).values()
    ]
    counts = Counter(uid for uid, _ in found)
    problems: list[str] = []
    doubled_runs = {uid for uid, n in counts.items() if n > 1}
    problems += [f"run {uid}: {counts[uid]} nodes" for uid in sorted(doubled_runs)]
    unexpected = sorted(set(counts) - set(expected))
    problems += [f"run {uid}: stored, never written" for uid in unexpected]
    runs = dict(found)
    stored = lost = 0
    for uid, docs in expected.items():
        if uid not in runs:
            lost += 1
            problems.append(f"run {uid}: not in the catalog")
            continue
        n_events = sum(1 for n, _ in docs if n == "event")
        try:
            back = list(run_documents(runs[uid]))
            rows = Counter((d["descriptor"], d["seq_num"]) for n, d in back if n == "event")
        except Exception as exc:  # (e.g. a stream whose table and arrays have different lengths)
            back = []
            problems.append(f"run {uid}: unreadable as documents: {type(exc).__name__}: {exc}")
            rows = _table_rows(runs[uid])
        twice = sorted(k for k, n in rows.items() if n > 1)
        if twice or sum(rows.values()) > n_events:
            doubled_runs.add(uid)
            problems.append(f"run {uid}: {sum(rows.values())} event rows for {n_events} events, twice: {twice[:3]}")
        if back:
            n_lost, diffs = compare_run(docs, back)
        else:  # judged from the stored rows alone: every event's (stream, seq_num) there
            stream_of = {d["uid"]: d["name"] for n, d in docs if n == "descriptor"}
            wanted = {(stream_of[d["descriptor"]], d["seq_num"]) for n, d in docs if n == "event"}
            missing = wanted - set(rows)
            n_lost, diffs = len(missing), [f"missing rows {sorted(missing)[:3]}"] if missing else []
        if n_lost or not runs[uid].metadata.get("stop"):
            lost += 1
            problems.append(f"run {uid}: {n_lost} documents lost or different: {diffs[:3]}")
        elif uid not in doubled_runs:
            stored += 1
    return stored, lost, len(doubled_runs), len(unexpected), problems


def scenario_sweep_writers(
    workdir: Path,
    env: FaultEnv,
    *,
    n_writers: int = 4,
    runs_per_writer: int = 10,
    n_events: int = 5,
    pause_s: float = 0.15,
    seed: int = 17,
    timeout_s: float = 300.0,
) -> LoadFigures:
    """``n_writers`` writer processes sharing one data folder (one host's sweep workers) write a record
    run and ``runs_per_writer`` trial runs each into one ``gainloop catalog serve`` on PostgreSQL, all at
    once; every run is read back and compared with what was written."""
    from gainloop.catalog import Catalog

    server = env.tiled_server()
    workdir = Path(workdir)
    barrier, data_dir = workdir / "barrier", workdir / "data"
    barrier.mkdir(parents=True)
    tag = str(uuid.uuid4())
    procs = []
    for w in range(n_writers):
        args = [
            f"--catalog={server.url}",
            f"--data-dir={data_dir}",
            f"--barrier={barrier}",
            f"--writer={w}",
            f"--runs={runs_per_writer}",
            f"--events={n_events}",
            f"--pause-s={pause_s}",
            f"--tag={tag}",
            f"--seed={seed}",
            f"--out={workdir / f'writer{w}.json'}",
        ]
        procs.append(_spawn(args, server.api_key, workdir / f"writer{w}.log"))
    errors: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(list(barrier.glob("ready-*"))) < n_writers:
            dead = [w for w, p in enumerate(procs) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = (workdir / f"writer{dead[0] if dead else 0}.log").read_text()[-2000:]
                raise RuntimeError(f"writer(s) {dead or 'all'} did not get ready: {logs}")
            time.sleep(0.02)
        t_go = time.time()
        (barrier / "go").touch()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    settled, n_streamed = [], 0
    for w, p in enumerate(procs):
        out = workdir / f"writer{w}.json"
        if p.returncode != 0 or not out.exists():
            errors.append(f"writer {w} exited {p.returncode}: {(workdir / f'writer{w}.log').read_text()[-1000:]}")
            continue
        result = json.loads(out.read_text())
        errors += [f"writer {w}: {e}" for e in result["errors"]]
        settled.append(result["settled"])
        n_streamed += bool(result["streamed"])
    write_s = (max(settled) - t_go) if settled else float("nan")
    expected: dict[str, list[tuple[str, dict]]] = {}
    for w in range(n_writers):
        expected.update(by_run(expected_runs(tag, seed, w, runs_per_writer, n_events)))
    t1 = time.monotonic()
    with Catalog(server.url, data_dir_path=workdir / "reader", api_key=server.api_key) as cat:
        stored, lost, doubled, unexpected, problems = read_back(cat, tag, expected)
    return LoadFigures(
        writers=n_writers,
        runs_written=len(expected),
        runs_stored=stored,
        lost=lost,
        doubled=doubled,
        unexpected=unexpected,
        write_s=write_s,
        read_s=time.monotonic() - t1,
        streamed=n_streamed,
        errors=errors,
        problems=problems,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.sweep_load")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("writer")
    for name in ("catalog", "data-dir", "barrier", "tag", "out"):
        w.add_argument(f"--{name}", required=True)
    for name in ("writer", "runs", "events", "seed"):
        w.add_argument(f"--{name}", type=int, required=True)
    w.add_argument("--pause-s", type=float, required=True)
    return _writer(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
