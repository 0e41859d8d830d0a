"""Write TiledWriter's backup into the catalog: ``gainloop catalog upload-backup``.

When the catalog server is away, ``TiledWriter`` (and gainloop's writer guard) keep a
run's documents in ``<data dir>/backup/<uid prefix>.jsonl``, one ``{"name", "doc"}``
JSON object a line. ``upload_backup(catalog)`` reads every such file, groups its
documents by run (a file may hold a run twice, or two runs sharing a uid prefix;
repeated documents are dropped) and, per run:

* stored complete with the same stop document: skipped (nothing written);
* stored without its stop document (written partly before the outage): the partial
  node is deleted and the run is written again whole from the backup;
* not stored: written;
* no stop document in the backup (the run is still going, or its process died):
  left in place unless ``include_incomplete``;
* stored complete with another stop document: a conflict, left in place, untouched.

Every run written is read back and checked complete (stop document stored) before
its file counts as done. A file whose runs are all done moves to
``backup/uploaded/``; any other file stays, so an interrupted upload loses nothing
and a second upload repeats only what did not finish (a partial node is replaced
again). A second upload after a complete one writes nothing and changes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.rows import Row
from gainloop.catalog import Catalog, CatalogError

__all__ = ["BackupRun", "RunUpload", "read_backup", "upload_backup"]

UPLOADED = "uploaded"


@dataclass
class BackupRun:
    """One run's documents as found in the backup (in their order, repeats removed)."""

    uid: str
    file: Path
    documents: list[tuple[str, dict]] = field(default_factory=list)

    @property
    def stop(self) -> dict | None:
        return next((d for n, d in reversed(self.documents) if n == "stop"), None)

    @property
    def start(self) -> dict | None:
        return next((d for n, d in self.documents if n == "start"), None)


@dataclass
class RunUpload(Row):
    """What ``upload_backup`` did with one run.

    ``action``: ``uploaded``, ``replaced`` (a partial run rewritten whole),
    ``skipped`` (already complete), ``left`` (kept in the backup: see ``detail``) or
    ``failed`` (``detail`` says why; the file stays for another try).
    """

    uid: str
    file: str
    action: str
    n_documents: int
    detail: str = ""


def _doc_key(name: str, doc: dict) -> tuple:
    uid = doc.get("uid")
    if uid is not None and name != "event_page":
        return name, uid
    return name, json.dumps(doc, sort_keys=True)


def read_backup(path: Path) -> tuple[list[BackupRun], list[str]]:
    """The runs in one backup file, and problems found (unreadable lines, documents of no known run)."""
    runs: dict[str, BackupRun] = {}
    seen: set[tuple] = set()
    run_of_descriptor: dict[str, str] = {}
    run_of_resource: dict[str, str] = {}
    problems: list[str] = []
    last: str | None = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                name, doc = item["name"], item["doc"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{path.name} line {lineno}: not a {{name, doc}} JSON object (a torn last write?)")
                continue
            run = _run_of(name, doc, last, run_of_descriptor, run_of_resource)
            if run is None:
                problems.append(f"{path.name} line {lineno}: a {name!r} document of no run in the file")
                continue
            if name == "start":
                runs.setdefault(run, BackupRun(run, path))
                last = run
            elif name == "descriptor":
                run_of_descriptor[doc["uid"]] = run
            elif name in ("resource", "stream_resource"):
                run_of_resource[doc["uid"]] = run
            if run not in runs:
                problems.append(f"{path.name} line {lineno}: a {name!r} document before its run's start")
                continue
            key = (run, *_doc_key(name, doc))
            if key in seen:
                continue
            seen.add(key)
            runs[run].documents.append((name, doc))
    return list(runs.values()), problems


def _run_of(name, doc, last, run_of_descriptor, run_of_resource) -> str | None:
    if name == "start":
        return doc["uid"]
    if doc.get("run_start"):
        return doc["run_start"]
    if name in ("event", "event_page", "stream_datum") and doc.get("descriptor") in run_of_descriptor:
        return run_of_descriptor[doc["descriptor"]]
    if name in ("datum", "datum_page") and doc.get("resource") in run_of_resource:
        return run_of_resource[doc["resource"]]
    return last


def _write(catalog: Catalog, run: BackupRun) -> None:
    """Write the run through a TiledWriter without a backup of its own (a failure raises)."""
    from bluesky_tiled_plugins import TiledWriter

    writer = TiledWriter(catalog.client)
    for name, doc in run.documents:
        writer(name, doc)


def _upload_run(catalog: Catalog, run: BackupRun, include_incomplete: bool) -> RunUpload:
    n = len(run.documents)
    report = RunUpload(run.uid, run.file.name, "left", n)
    stop = run.stop
    if stop is None and not include_incomplete:
        report.detail = (
            "no stop document in the backup (the run is still going, or its process died); "
            "pass --include-incomplete to write it as it is"
        )
        return report
    state, stored_stop, reason = catalog.stored_state(run.uid, timeout_s=30.0)
    if state == "unreachable":
        raise CatalogError(
            f"the catalog at {catalog.location} did not take the backup ({reason}); nothing was lost "
            "(files not done stay in the backup): run the upload again when it answers"
        )
    if state == "complete":
        if stop is None or stored_stop.get("uid") == stop.get("uid"):
            report.action, report.detail = "skipped", "already complete in the catalog"
        else:
            report.detail = "the catalog holds this run with another stop document: left untouched"
        return report
    try:
        if state == "incomplete":
            catalog.client[run.uid].delete(recursive=True, external_only=False)
            report.action, report.detail = "replaced", "the partial run in the catalog was rewritten whole"
        else:
            report.action = "uploaded"
        _write(catalog, run)
    except Exception as exc:  # the server went away, refused a document...: the file stays
        report.action = "failed"
        report.detail = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        return report
    state, stored_stop, _ = catalog.stored_state(run.uid, timeout_s=30.0)
    complete = state == "complete" and (stop is None or stored_stop.get("uid") == stop.get("uid"))
    if stop is not None and not complete:
        report.action, report.detail = "failed", f"read back {state}, not complete"
    return report


def _move_aside(path: Path) -> Path:
    folder = path.parent / UPLOADED
    folder.mkdir(exist_ok=True)
    target = folder / path.name
    if target.exists():
        target = folder / f"{path.stem}.{time.strftime('%Y%m%dT%H%M%S')}.{time.monotonic_ns()}{path.suffix}"
    path.replace(target)
    return target


def upload_backup(catalog: Catalog, *, include_incomplete: bool = False) -> list[RunUpload]:
    """Write every backed-up run not yet complete in ``catalog``; one ``RunUpload`` per run.

    Files whose runs all end ``uploaded``, ``replaced`` or ``skipped`` move to
    ``backup/uploaded/``. Raises ``CatalogError`` if the catalog stops answering (files
    not yet done stay in place).
    """
    reports: list[RunUpload] = []
    files = sorted(catalog.backup_dir.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name))
    for path in files:
        runs, problems = read_backup(path)
        done = not problems
        for run in runs:
            report = _upload_run(catalog, run, include_incomplete)
            reports.append(report)
            done = done and report.action in ("uploaded", "replaced", "skipped")
        for problem in problems:
            reports.append(RunUpload("", path.name, "left", 0, problem))
        if done:
            _move_aside(path)
    return reports
