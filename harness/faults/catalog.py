"""Faults 3, 4 and 10: the catalog under faults and load (a Tiled server on PostgreSQL).

* ``scenario_tiled_down_mid_run`` (3): a campaign on the twin runs in its own process;
  the Tiled server is stopped in the middle of a trial's measurement run and started
  again two trials later. The runs caught by the outage wait in the spool; the drain
  tries again until the server is back (the user told so in one line), and rewrites
  whole a run it had begun streaming. The catalog must then hold every document emitted
  (count and content), ``gainloop catalog upload-backup`` must find nothing to do, the
  same runs put back in the spool must all be skipped, and no trial may count as failed.
* ``scenario_duplicate_ingestion`` (4): a campaign written by two writers on one
  RunEngine, then every document fed again to a third writer: one run per uid, no
  warning or log line above INFO, no backup file, the stored runs equal to what was
  emitted, and the optimiser rebuilt from the catalog sees each trial once.
* ``scenario_load`` (10): ``n_runs`` small runs composed with event_model by four
  writer processes into one server: zero errors, every run stored and readable.

Each scenario runs real processes (the server, the campaign, the writers, the CLI).
The module is also the worker those processes run: ``python -m
harness.faults.catalog campaign|load-writer ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from harness.documents import by_run

from . import FaultEnv, FaultFigures
from ._env import clean_env

__all__ = ["SCENARIOS", "scenario_duplicate_ingestion", "scenario_load", "scenario_tiled_down_mid_run"]

REPO = Path(__file__).resolve().parents[2]
HANDSHAKE_TIMEOUT_S = 180.0


# ------------------------------------------------------------------ documents: emitted vs stored
def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot record {type(value).__name__} in a document")


def _plain(doc: dict) -> dict:
    """The document as JSON would carry it (tuples as lists, numpy as Python)."""
    return json.loads(json.dumps(doc, default=_jsonable))


def _same(a, b) -> bool:
    """Equal as JSON values, NaN equal to NaN."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _comparable(name: str, doc: dict) -> tuple[tuple, dict]:
    """(identity, content) of a document, as both the emitted and the stored copy can state them.

    Events are identified by (descriptor, seq_num) (the catalog does not keep event
    uids); descriptors by uid with their stream name and data keys; start and stop whole.
    """
    doc = _plain(doc)
    if name == "event":
        return ("event", doc["descriptor"], doc["seq_num"]), {k: doc[k] for k in ("time", "data", "timestamps")}
    if name == "descriptor":
        return ("descriptor", doc["uid"]), {k: doc.get(k) for k in ("name", "data_keys")}
    return (name, doc["uid"]), doc


def _same_descriptor(emitted: dict, stored: dict) -> bool:
    """Same stream name and data keys, each emitted field stored equal (the writer's normaliser may add
    fields, e.g. ``dtype_numpy``)."""
    e_keys, s_keys = emitted["data_keys"], stored["data_keys"] or {}
    return (
        emitted["name"] == stored["name"]
        and e_keys.keys() == s_keys.keys()
        and all(_same(v, s_keys[k].get(f)) for k in e_keys for f, v in e_keys[k].items())
    )


def compare_run(emitted: list[tuple[str, dict]], stored: list[tuple[str, dict]]) -> tuple[int, list[str]]:
    """(documents emitted that the stored run lacks or holds differently, what differs) for one run."""
    have = {}
    for name, doc in stored:
        key, content = _comparable(name, doc)
        have[key] = content
    lost, diffs = 0, []
    for name, doc in emitted:
        key, content = _comparable(name, doc)
        if key not in have:
            lost += 1
            diffs.append(f"missing {key}")
        elif not (_same_descriptor if name == "descriptor" else _same)(content, have[key]):
            lost += 1
            diffs.append(f"differs {key}")
    extra = len(have) - len({_comparable(n, d)[0] for n, d in emitted})
    if extra > 0:
        diffs.append(f"{extra} stored documents were never emitted")
    return lost, diffs


def stored_documents(catalog, uids) -> dict[str, list[tuple[str, dict]] | None]:
    """Each run's documents as read back through ``gainloop.replay.run_documents`` (None: not stored)."""
    from gainloop.catalog import RunNotFoundError
    from gainloop.replay import run_documents

    out: dict[str, list[tuple[str, dict]] | None] = {}
    for uid in sorted(uids):
        try:
            out[uid] = [(n, _plain(d)) for n, d in run_documents(catalog.run(uid))]
        except RunNotFoundError:
            out[uid] = None
    return out


def compare_catalog(stored: dict, emitted: list[tuple[str, dict]]) -> tuple[int, list[str]]:
    """Every emitted document against the stored runs (``stored_documents``): (lost, what differs)."""
    lost, diffs = 0, []
    for uid, docs in by_run(emitted).items():
        if stored.get(uid) is None:
            lost += len(docs)
            diffs.append(f"run {uid} not in the catalog")
            continue
        n, d = compare_run(docs, stored[uid])
        lost += n
        diffs += [f"run {uid}: {x}" for x in d]
    return lost, diffs


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        return [(item["name"], item["doc"]) for item in map(json.loads, f) if item]


# ------------------------------------------------------------------ subprocesses
def _python(*args: str, env: dict[str, str], stdout, stderr) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))},
        stdout=stdout,
        stderr=stderr,
    )


def _upload(url: str, api_key: str, data_dir: Path, *, json_out: bool = True) -> tuple[dict | str, float]:
    """``gainloop catalog upload-backup`` as a user runs it: (its JSON, or its text, and the wall seconds)."""
    t0 = time.monotonic()
    args = ["-m", "gainloop.cli", "catalog", "upload-backup", "--catalog", url, "--data-dir", str(data_dir)]
    proc = _python(
        *args,
        *(["--json"] if json_out else []),
        env=clean_env(TILED_API_KEY=api_key),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=300)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"upload-backup exited {proc.returncode}: {err.decode()[-2000:]} {out.decode()[-500:]}")
    return (json.loads(out.decode().strip().splitlines()[-1]) if json_out else out.decode()), seconds


class _WarningsSeen(logging.Handler):
    """Collects log records at WARNING and above (the noise a fault must not make)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# ------------------------------------------------------------------ 3: the Tiled server down mid-run
def scenario_tiled_down_mid_run(
    workdir: Path,
    env: FaultEnv,
    *,
    trials: int = 3,
    stop_trial: int = 0,
    stop_event: int = 3,
    restart_trial: int = 2,
    seed: int = 1,
) -> FaultFigures:
    """The server stops at event ``stop_event`` of trial ``stop_trial``'s run and is back at trial
    ``restart_trial``'s start. The backup is uploaded with the CLI, then again (nothing to do), then
    once more with the processed files put back (every run skipped)."""
    from gainloop.backup import upload_backup
    from gainloop.campaign import rebuild_trials
    from gainloop.catalog import Catalog

    if not 0 <= stop_trial < restart_trial < trials:
        raise ValueError(f"need 0 <= stop_trial < restart_trial < trials, got {stop_trial}, {restart_trial}, {trials}")
    server = env.tiled_server(shared=False)
    workdir = Path(workdir)
    data_dir, markers = workdir / "data", workdir / "markers"
    markers.mkdir(parents=True, exist_ok=True)
    emitted_file, summary_file = workdir / "emitted.jsonl", workdir / "summary.json"
    args = [
        "-m",
        "harness.faults.catalog",
        "campaign",
        f"--catalog={server.url}",
        f"--data-dir={data_dir}",
        f"--markers={markers}",
        f"--emitted={emitted_file}",
        f"--summary={summary_file}",
        f"--trials={trials}",
        f"--seed={seed}",
        f"--stop-at={stop_trial}:{stop_event}",
        f"--restart-at={restart_trial}",
    ]
    # tiled's own knobs: two attempts, not ten, before TiledWriter falls back to its backup
    wenv = clean_env(TILED_API_KEY=server.api_key, TILED_RETRY_ATTEMPTS="2", TILED_RETRY_TIMEOUT="2")
    with open(workdir / "worker.out", "w") as out, open(workdir / "worker.err", "w") as err:
        proc = _python(*args, env=wenv, stdout=out, stderr=err)
        restart_s = math.nan
        deadline = time.monotonic() + 600
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("the campaign worker did not finish in 600 s")
                if (markers / "stop-request").exists() and not (markers / "stop-done").exists():
                    server.stop()
                    (markers / "stop-done").touch()
                if (markers / "restart-request").exists() and not (markers / "restart-done").exists():
                    restart_s = server.restart()
                    (markers / "restart-done").touch()
                time.sleep(0.05)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    worker_err = (workdir / "worker.err").read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"the campaign worker exited {proc.returncode}: {worker_err[-3000:]}")
    summary = json.loads(summary_file.read_text())
    emitted = _read_jsonl(emitted_file)
    runs = by_run(emitted)
    campaign_uid = summary["campaign_uid"]
    checks: dict[str, bool] = {}

    cat = Catalog(server.url, data_dir_path=data_dir, api_key=server.api_key)  # drains what the worker left
    opened_results = {uid: r.action for uid, r in cat.spool.results.items()}
    drained = summary.get("drained", {})
    with cat:
        leftover = sorted(p.name for p in cat.spool_dir.glob("*.jsonl"))
        checks["server_was_stopped_and_restarted"] = (markers / "stop-done").exists() and math.isfinite(restart_s)
        retry_lines = [line for line in worker_err.splitlines() if "did not take it" in line]
        checks["the_drain_met_the_outage_and_said_so"] = len(retry_lines) >= 1
        checks["the_user_is_told_how_to_upload"] = any("gainloop catalog upload-backup" in x for x in retry_lines)
        checks["no_traceback_from_the_outage"] = "Traceback" not in worker_err
        checks["no_trial_counted_failed_by_the_campaign"] = summary["failures"] == 0 and summary["trials"] == trials
        checks["every_run_drained_by_its_process_or_the_next_start"] = (
            set(drained) | set(opened_results) >= set(runs) and not leftover
        )
        checks["no_run_drained_twice_or_conflicting"] = all(
            a in ("written", "replaced") for a in list(drained.values()) + list(opened_results.values())
        ) and not set(drained) & set(opened_results)
        stored = stored_documents(cat, runs)
        lost, diffs = compare_catalog(stored, emitted)
        checks["every_emitted_document_is_stored_equal"] = lost == 0 and not diffs

        first, _ = _upload(server.url, server.api_key, data_dir, json_out=False)
        checks["upload_after_the_drain_does_nothing"] = first.strip().endswith(": nothing to upload")
        # the same runs put back in the spool (as an ended process leaves them): all skipped, nothing duplicated
        for uid, docs in runs.items():
            aside = workdir / f"{uid}.jsonl"
            aside.write_text("".join(json.dumps({"name": n, "doc": d}) + "\n" for n, d in docs))
            os.replace(aside, cat.spool_dir / aside.name)
        again = upload_backup(cat)
        checks["a_complete_run_in_the_spool_is_skipped"] = sorted(r.uid for r in again) == sorted(runs) and all(
            r.action == "skipped" for r in again
        )
        checks["catalog_unchanged_by_later_uploads"] = stored_documents(cat, runs) == stored
        stored_runs = {r for r in cat.client.search(_key("start.campaign_uid", campaign_uid))}
        checks["one_stored_run_per_emitted_run"] = stored_runs == set(runs)

        _, history, _, _ = rebuild_trials(cat, campaign_uid)
        completed = [h for h in history if h.status == "completed"]
        indices = Counter(
            r.start["trial_index"]
            for r in cat.client.search(_key("start.campaign_uid", campaign_uid)).values()
            if r.start.get("plan_name") != "campaign"
        )
    checks["no_trial_failed_after_the_outage"] = len(completed) == trials
    return FaultFigures(
        fault="tiled_down_mid_run",
        trials_lost=trials - len(completed),
        trials_doubled=sum(n - 1 for n in indices.values() if n > 1),
        documents_lost=lost,
        recovery_s=restart_s + summary.get("close_s", math.nan),
        checks=checks,
        detail=(
            f"{len(emitted)} documents in {len(runs)} runs; drained by the campaign's process: "
            f"{dict(Counter(drained.values()))}, at the next opening: {dict(Counter(opened_results.values()))}; "
            f"{len(retry_lines)} retry line(s); its close took {summary.get('close_s', math.nan):.1f} s "
            f"(server restart {restart_s:.1f} s); upload after: {first.strip().splitlines()[-1:]}; "
            + "; ".join(diffs[:3])
        ),
    )


def _key(key: str, value):
    from tiled.queries import Key

    return Key(key) == value


class _Handshake:
    """Stops the worker until the scenario has done what it asked (stop / restart the server)."""

    def __init__(self, markers: Path) -> None:
        self.markers = markers

    def __call__(self, what: str) -> None:
        (self.markers / f"{what}-request").touch()
        deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
        while not (self.markers / f"{what}-done").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"nobody answered the {what} request in {HANDSHAKE_TIMEOUT_S} s")
            time.sleep(0.02)


def _campaign_worker(ns) -> int:
    """A campaign into the server; records every document emitted; asks for the outage at the set points."""
    from gainloop.campaign import CampaignConfig, run_campaign
    from gainloop.catalog import Catalog

    stop_trial, stop_event = (int(x) for x in ns.stop_at.split(":"))
    handshake = _Handshake(Path(ns.markers))
    emitted = open(ns.emitted, "w", encoding="utf-8")
    state = {"plan": None, "trial": None, "events": 0}

    def record(name, doc):
        emitted.write(json.dumps({"name": name, "doc": doc}, default=_jsonable) + "\n")
        emitted.flush()

    def inject(name, doc):
        if name == "start":
            state.update(plan=doc.get("plan_name"), trial=doc.get("trial_index"), events=0)
            if state["plan"] != "campaign" and state["trial"] == ns.restart_at:
                handshake("restart")
        elif name == "event" and state["plan"] != "campaign" and state["trial"] == stop_trial:
            state["events"] += 1
            if state["events"] == stop_event:
                handshake("stop")

    class RecordedCatalog(Catalog):
        def campaign_writer(self):
            writer = super().campaign_writer()

            def recorded(name, doc):
                record(name, doc)
                inject(name, doc)  # before the writer sees the document: the server is gone when it does
                writer(name, doc)

            return recorded

    cfg = CampaignConfig(strategy="nested", seed=ns.seed, budget_lab_h=None, max_trials=ns.trials, twin_seed=ns.seed)
    with RecordedCatalog(ns.catalog, data_dir_path=ns.data_dir) as cat:
        summary = run_campaign(cat, cfg)
        t0 = time.monotonic()
    summary["close_s"] = time.monotonic() - t0  # the drain of what is left (bounded by the catalog's close)
    summary["drained"] = {uid: r.action for uid, r in cat.spool.results.items() if r.action != "failed"}
    emitted.close()
    Path(ns.summary).write_text(json.dumps(summary, default=str))
    return 0


# ------------------------------------------------------------------ 4: duplicate ingestion
def scenario_duplicate_ingestion(workdir: Path, env: FaultEnv, *, trials: int = 2, seed: int = 2) -> FaultFigures:
    """A campaign written by two writers on one RunEngine, then every document replayed into a third."""
    import warnings

    from gainloop.campaign import CampaignConfig, campaign_films, campaign_optimizer, rebuild_trials, run_campaign
    from gainloop.catalog import Catalog
    from gainloop.replay import stream_columns

    server = env.tiled_server()
    workdir = Path(workdir)
    emitted: list[tuple[str, dict]] = []

    class TwoWriters(Catalog):
        def campaign_writer(self):
            pair = [super().campaign_writer(), super().campaign_writer()]

            def both(name, doc):
                emitted.append((name, _plain(doc)))
                for w in pair:
                    w(name, doc)

            return both

    seen = _WarningsSeen()
    root = logging.getLogger()
    root.addHandler(seen)
    checks: dict[str, bool] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with TwoWriters(server.url, data_dir_path=workdir / "data", api_key=server.api_key) as cat:
                cfg = CampaignConfig(strategy="nested", seed=seed, budget_lab_h=None, max_trials=trials, twin_seed=seed)
                summary = run_campaign(cat, cfg)
                campaign_uid = summary["campaign_uid"]
                runs = by_run(emitted)
                stored_docs = stored_documents(cat, runs)
                lost, diffs = compare_catalog(stored_docs, emitted)
                checks["stored_runs_equal_emitted"] = lost == 0 and not diffs
                replayer = cat.writer()
                for name, doc in emitted:  # the same documents fed again (a replay, a re-shipped batch)
                    replayer(name, doc)
                replayer.flush()  # (its runs are judged by the drain, in the background)
                checks["replayed_runs_all_skipped"] = sorted(replayer.skipped) == sorted(runs)
                checks["catalog_unchanged_by_the_replay"] = stored_documents(cat, runs) == stored_docs
                stored = list(cat.client.search(_key("start.campaign_uid", campaign_uid)))
                checks["one_run_per_uid"] = sorted(stored) == sorted(runs)
                backups = list(cat.backup_dir.glob("*.jsonl"))
                checks["no_backup_file"] = not backups
                record_run = next(cat.run(u) for u in runs if runs[u][0][1].get("plan_name") == "campaign")
                outcome_rows = [int(i) for i in stream_columns(record_run["outcomes"])["trial_index"]]
                checks["no_duplicate_outcome_rows"] = outcome_rows == list(range(trials))
                # the optimiser rebuilt from the catalog (as a resume does), the history fed twice
                rcfg, history, _, _ = rebuild_trials(cat, campaign_uid)
                from sim.devices import default_twin_bench_path, twin_bench_devices

                bench = twin_bench_devices(default_twin_bench_path(), seed=rcfg.twin_seed)
                opt = campaign_optimizer(rcfg, bench, campaign_films(rcfg, bench))
                opt.ingest([h.result for h in history])
                opt.ingest([h.result for h in history])
                X = opt.training_data()["X"]
                rows = [tuple(round(float(v), 12) for v in row) for row in X]
                completed = sum(h.status == "completed" for h in history)
                checks["training_rows_one_per_trial"] = len(rows) == completed == trials and len(set(rows)) == len(rows)
    finally:
        root.removeHandler(seen)
    noisy = [r for r in seen.records if not r.name.startswith(("asyncio", "distributed"))]
    checks["no_log_line_above_info"] = not noisy
    checks["no_python_warning"] = not caught
    return FaultFigures(
        fault="duplicate_ingestion",
        trials_lost=trials - completed,
        trials_doubled=len(rows) - len(set(rows)),
        documents_lost=lost,
        checks=checks,
        detail=(
            f"{len(emitted)} documents in {len(runs)} runs, written by 2 writers then replayed: "
            f"{len(stored)} stored runs, {len(replayer.skipped)} skipped on replay, training rows {len(rows)}, "
            f"trial statuses {[h.status for h in history]}; "
            + "; ".join(
                [f"{r.name}: {r.getMessage()[:120]}" for r in noisy[:2]] + [str(w.message)[:120] for w in caught[:2]]
            )
        ),
    )


# ------------------------------------------------------------------ 10: load
def _load_run(writer_index: int, i: int, tag: str, seed: int, n_events: int) -> list[tuple[str, dict]]:
    """One small run, composed with event_model; values from the seed (what the reader checks)."""
    from event_model import compose_run

    t0 = 1.7e9 + writer_index * 1e5 + i
    run = compose_run(
        uid=str(uuid.uuid4()),
        time=t0,
        metadata={"plan_name": "load", "load_tag": tag, "writer": writer_index, "index": i, "seed": seed},
    )
    docs = [("start", run.start_doc)]
    data_keys = {
        "x": {"source": "load", "dtype": "number", "shape": []},
        "y": {"source": "load", "dtype": "number", "shape": []},
    }
    desc = run.compose_descriptor(name="primary", data_keys=data_keys)
    docs.append(("descriptor", desc.descriptor_doc))
    for k in range(n_events):
        x = float(k)
        y = _load_value(seed, writer_index, i, k)
        t = t0 + 0.001 * (k + 1)
        event = desc.compose_event(data={"x": x, "y": y}, timestamps={"x": t, "y": t}, seq_num=k + 1, time=t)
        docs.append(("event", event))
    docs.append(("stop", run.compose_stop(exit_status="success", time=t0 + 1.0)))
    return docs


def _load_value(seed: int, writer_index: int, i: int, k: int) -> float:
    return float(seed * 1_000_003 + writer_index * 10_007 + i * 101 + k) / 7.0


def _flush_while_draining(writer, stall_s: float = 60.0) -> None:
    """Wait for the drain of every run of ``writer`` as long as it makes progress: a ``SpoolError`` once
    ``stall_s`` seconds passed without one more run taken by the catalog.

    A load writer spools its runs far faster than one drain writes them into Tiled (250 runs in a second
    or two, ~2-3 runs/s drained per writer process): its backlog takes longer than a reader's bound
    (``SpoolWriter.flush``'s 60 s), which is about a catalog that does not answer, not a long queue."""
    from gainloop.spool import SpoolError

    while True:
        before = len(writer.backed_up)
        try:
            writer.flush(stall_s)
            return
        except SpoolError:
            if len(writer.backed_up) >= before:
                raise


def _load_worker(ns) -> int:
    """Writes ``ns.n`` runs through gainloop's writer; reports errors (exceptions, warnings, backups)."""
    import warnings

    from gainloop.catalog import Catalog

    seen = _WarningsSeen()
    logging.getLogger().addHandler(seen)
    errors: list[str] = []
    uids: list[str] = []
    t0 = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Catalog(ns.catalog, data_dir_path=ns.data_dir) as cat:
            writer = cat.writer()
            for i in range(ns.n):
                docs = _load_run(ns.writer, i, ns.tag, ns.seed, ns.events)
                try:
                    for name, doc in docs:
                        writer(name, doc)
                    uids.append(docs[0][1]["uid"])
                except Exception as exc:
                    errors.append(f"run {i}: {type(exc).__name__}: {exc}")
            try:
                _flush_while_draining(writer)  # every run drained into the catalog
            except Exception as exc:
                errors.append(f"the drain: {type(exc).__name__}: {exc}")
            errors += [f"run {u} still in the spool" for u in writer.backed_up]
            errors += [f"run {u} skipped as already stored" for u in writer.skipped]
            errors += [f"backup file {p.name}" for p in cat.backup_dir.glob("*.jsonl")]
    errors += [f"log {r.levelname} {r.name}: {r.getMessage()[:200]}" for r in seen.records]
    errors += [f"warning: {w.message}" for w in caught]
    result = {"writer": ns.writer, "uids": uids, "errors": errors, "seconds": time.monotonic() - t0}
    Path(ns.out).write_text(json.dumps(result))
    return 0


def scenario_load(
    workdir: Path,
    env: FaultEnv,
    *,
    n_runs: int = 1000,
    n_writers: int = 4,
    n_events: int = 5,
    read_every: int = 10,
    seed: int = 10,
) -> FaultFigures:
    """``n_runs`` runs of ``n_events`` events from ``n_writers`` processes into one server; every run's
    metadata checked, the primary stream of every ``read_every``-th run read back and compared."""
    from gainloop.catalog import Catalog

    if n_runs % n_writers:
        raise ValueError(f"n_runs ({n_runs}) must be a multiple of n_writers ({n_writers})")
    server = env.tiled_server()
    workdir = Path(workdir)
    tag = uuid.uuid4().hex
    per = n_runs // n_writers
    procs = []
    t0 = time.monotonic()
    for w in range(n_writers):
        args = [
            "-m",
            "harness.faults.catalog",
            "load-writer",
            f"--catalog={server.url}",
            f"--data-dir={workdir / f'writer{w}'}",
            f"--writer={w}",
            f"--n={per}",
            f"--events={n_events}",
            f"--tag={tag}",
            f"--seed={seed}",
            f"--out={workdir / f'writer{w}.json'}",
        ]
        err = open(workdir / f"writer{w}.err", "w")
        procs.append((_python(*args, env=clean_env(TILED_API_KEY=server.api_key), stdout=err, stderr=err), err))
    for proc, err in procs:
        try:
            proc.wait(timeout=1800)
        finally:
            err.close()
    write_s = time.monotonic() - t0
    errors: list[str] = []
    uids: dict[str, tuple[int, int]] = {}
    for w, (proc, _) in enumerate(procs):
        if proc.returncode != 0:
            errors.append(f"writer {w} exited {proc.returncode}: {(workdir / f'writer{w}.err').read_text()[-1000:]}")
            continue
        result = json.loads((workdir / f"writer{w}.json").read_text())
        errors += [f"writer {w}: {e}" for e in result["errors"]]
        uids.update({u: (w, i) for i, u in enumerate(result["uids"])})

    t1 = time.monotonic()
    checks: dict[str, bool] = {}
    unreadable: list[str] = []
    with Catalog(server.url, data_dir_path=workdir / "reader", api_key=server.api_key) as cat:
        found = {}
        for uid, run in cat.client.search(_key("start.load_tag", tag)).items():
            found[uid] = run.metadata
        n_read = 0
        for k, (uid, (w, i)) in enumerate(sorted(uids.items(), key=lambda x: x[1])):
            md = found.get(uid)
            if md is None or md.get("stop", {}).get("exit_status") != "success" or md["start"].get("index") != i:
                unreadable.append(f"{uid}: metadata {'missing' if md is None else 'wrong'}")
                continue
            if k % read_every:
                continue
            table = cat.run(uid)["primary"].base["internal"].read().sort_values("seq_num")
            expected = [_load_value(seed, w, i, e) for e in range(n_events)]
            n_read += 1
            if list(table["y"]) != expected or list(table["seq_num"]) != list(range(1, n_events + 1)):
                unreadable.append(f"{uid}: primary stream differs")
    read_s = time.monotonic() - t1
    checks["zero_errors"] = not errors
    checks["every_run_written"] = len(uids) == n_runs
    checks["every_run_stored_once"] = set(found) == set(uids)
    checks["every_run_readable"] = not unreadable
    docs_per_run = n_events + 3
    return FaultFigures(
        fault="catalog_load",
        documents_lost=docs_per_run * (n_runs - len(set(found) & set(uids))) + len(unreadable),
        checks=checks,
        detail=(
            f"{n_runs} runs x {n_events} events from {n_writers} writer processes in {write_s:.1f} s "
            f"({n_runs / write_s:.1f} runs/s); metadata of {len(found)} runs checked, {n_read} streams read "
            f"in {read_s:.1f} s; " + "; ".join((errors + unreadable)[:3])
        ),
    )


SCENARIOS = {
    "tiled_down_mid_run": scenario_tiled_down_mid_run,
    "duplicate_ingestion": scenario_duplicate_ingestion,
    "catalog_load": scenario_load,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.faults.catalog")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("campaign")
    for name in ("catalog", "data-dir", "markers", "emitted", "summary", "stop-at"):
        c.add_argument(f"--{name}", required=True)
    c.add_argument("--trials", type=int, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--restart-at", type=int, required=True)
    w = sub.add_parser("load-writer")
    for name in ("catalog", "data-dir", "tag", "out"):
        w.add_argument(f"--{name}", required=True)
    for name in ("writer", "n", "events", "seed"):
        w.add_argument(f"--{name}", type=int, required=True)
    ns = parser.parse_args(argv)
    return _campaign_worker(ns) if ns.command == "campaign" else _load_worker(ns)


if __name__ == "__main__":
    sys.exit(main())
