"""Drain the spool now: ``gainloop catalog upload-backup``.

Runs wait in the spool (``gainloop.spool``: ``<data dir>/spool/<uid>.jsonl``, and the
``backup/`` folder of older versions, one ``{"name", "doc"}`` JSON object a line) until the
drain writes them into the catalog. A running process drains its own runs in the
background, and every start drains what ended processes left; ``upload_backup(catalog)``
drains every file no running process holds, at once, and says per run what it did. A
file may hold several runs, or one run twice (repeated documents are dropped). Per run:

* not stored: written (``uploaded``);
* stored complete with the same stop document: ``skipped`` (nothing written);
* stored without its stop document (written partly before an outage, or by a drain cut
  off): the partial node is deleted and the run written again whole (``replaced``);
* no stop document in the spool and nobody holds the file: its process died mid-run, and
  the run is written as it is (a resume counts it interrupted);
* stored complete with another stop document: a conflict, ``left`` in place, untouched;
* the catalog away or refusing: ``failed``, the file stays for another try.

A file whose runs are all done is removed; any other stays, so an interrupted upload loses
nothing and a second upload repeats only what did not finish. A second upload after a
complete one writes nothing and changes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from core.rows import Row
from gainloop.catalog import Catalog

__all__ = ["RunUpload", "group_runs", "upload_backup"]

_ACTIONS = {"written": "uploaded"}  # the drain's words -> this command's


@dataclass
class RunUpload(Row):
    """What ``upload_backup`` did with one run.

    ``action``: ``uploaded``, ``replaced`` (a partial run rewritten whole),
    ``skipped`` (already complete), ``left`` (kept in the spool: see ``detail``) or
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


def group_runs(documents: list[tuple[str, dict]]) -> list[list[tuple[str, dict]]]:
    """The documents of one spool file, run by run (in their order, repeats removed)."""
    runs: dict[str, list[tuple[str, dict]]] = {}
    seen: set[tuple] = set()
    run_of: dict[str, str] = {}  # descriptor / resource uid -> run
    last: str | None = None
    for name, doc in documents:
        if name == "start":
            run = doc["uid"]
            runs.setdefault(run, [])
            last = run
        else:
            run = doc.get("run_start") or run_of.get(doc.get("descriptor") or doc.get("resource") or "") or last
        if run is None or run not in runs:
            continue  # a document before its run's start (the file is damaged): not written
        if name in ("descriptor", "resource", "stream_resource"):
            run_of[doc["uid"]] = run
        key = (run, *_doc_key(name, doc))
        if key in seen:
            continue
        seen.add(key)
        runs[run].append((name, doc))
    return list(runs.values())


def upload_backup(catalog: Catalog) -> list[RunUpload]:
    """Drain every spool file no running process holds into ``catalog``; one ``RunUpload`` per run."""
    reports = []
    for r in catalog.spool.drain_others():
        reports.append(RunUpload(r.uid, r.file, _ACTIONS.get(r.action, r.action), r.n_documents, r.detail))
    return reports


def spool_files(catalog: Catalog) -> list[Path]:
    """The spool files of ``catalog`` (runs not yet in it)."""
    return catalog.spool.pending()
