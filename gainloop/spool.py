"""The spool: a durable, append-only write-ahead buffer between the RunEngine and the catalog.

Every document the RunEngine emits goes to ``<data dir>/spool/<run uid>.jsonl`` (one
``{"name", "doc"}`` JSON object a line, the format of bluesky's ``JSONLinesWriter``)
with one unbuffered ``write`` (so a process killed with SIGKILL loses nothing it
emitted: the data is in the kernel's page cache) and an ``fsync`` at the run's stop
document (every document of runs that ask for it, e.g. a campaign's record). The
RunEngine never waits on the catalog.

A background thread (``Spool``'s drain) writes each spooled run into the catalog
through bluesky's ``TiledWriter`` and removes its file once the catalog holds it
whole. It is the one path into the catalog; it is not a second catalog (nothing
reads the spool but the drain):

* a run is drained at its stop document, whole (its event rows appended in one request
  per stream, where streaming them would cost a request per event) when it lasted less
  than ``stream_after_s`` (a run on the twin, typically); a run open longer (a scan on the
  bench, a campaign's record, a run paused or stalled) is streamed as it grows, at most
  once per ``stream_after_s``, so that readers in other processes (the watch page,
  ``campaign status``, a queueserver's reconcile) see it no more than that behind: its run
  and stream nodes, and for a campaign's record its rows too (a measurement run's rows are
  appended at its stop, as TiledWriter's default batching does); a reader in this process
  gets any open run as far as it is spooled (``settle`` streams it first), rows included
  unless the drain had started streaming that measurement run without them;
* exactly once: a run whose node is already in the catalog (a replay, a second
  writer, an earlier drain cut off) is looked at first: stored complete with the
  same stop document, it is not written again (``skipped``); stored without its
  stop document (a partial write), the node is deleted and the run written again
  whole from the spool (``replaced``); stored with another stop document, it is a
  conflict left in the spool, untouched;
* the writer holds an exclusive ``flock`` on its run's file until the run is
  drained; a file nobody holds is a run whose process ended (or died): any process
  with the same data folder drains it at its next start (as it is, without a stop
  document if the process died mid-run: the run was interrupted);
* the catalog away (mid-run or at the start): the run stays in the spool and the
  drain tries again (every ``retry_s``); a process that ends before its runs are
  drained leaves them in the spool for the next start (or ``gainloop catalog
  upload-backup``), and says so in one line.

Readers (resume, ``campaign status``, the report, ``Catalog.run``) first wait, bounded,
for the drain of what the spool holds (``Spool.settle``), and fail with a message
naming the runs and the command to run when the catalog does not take them in time.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from gainloop.catalog import CatalogError

__all__ = ["SETTLE_TIMEOUT_S", "DrainResult", "Spool", "SpoolError", "SpoolWriter", "read_spool_file"]

logger = logging.getLogger("gainloop.catalog")

SPOOL_DIR = "spool"
#: Seconds a run stays open before the drain starts streaming it (and between its streamed batches).
STREAM_AFTER_S = 1.0
#: Seconds between tries of a run the catalog did not take.
RETRY_S = 2.0
#: Seconds between scans of the spool folder for runs of other (ended) processes.
SCAN_S = 5.0
#: Seconds a reader waits for the drain by default.
SETTLE_TIMEOUT_S = 60.0

# run uids this process is writing into some spool (a second writer of the same run in this process skips it)
_OPEN_UIDS: set[str] = set()
_OPEN_LOCK = threading.Lock()


class SpoolError(CatalogError):
    """The catalog did not take the spooled runs a reader needs in time."""


def _jsonable(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"cannot spool a {type(value).__name__} in a document")


def _line(name: str, doc: dict) -> bytes:
    """One spool line: ``{"name", "doc"}`` and a newline.

    orjson (tiled's own dependency) writes an event of the twin's spectrometer (512 floats) in ~0.01 ms
    where the json module takes ~0.4 ms, a tenth of an acquisition; the same numbers (shortest repr
    of each double). It writes NaN and the infinities as ``null``, though, and refuses non-str keys
    and integers beyond 64 bits: a document whose line has a ``null`` (or that orjson refuses) is
    written by the json module instead (``NaN``, ``Infinity``, as bluesky's JSONLinesWriter does)."""
    try:
        out = orjson.dumps({"name": name, "doc": doc}, default=_jsonable, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # (orjson.JSONEncodeError is one)
        out = None
    if out is None or b"null" in out:
        out = (json.dumps({"name": name, "doc": doc}, default=_jsonable, separators=(",", ":")) + "\n").encode()
    return out


def read_spool_file(path: Path, offset: int = 0) -> tuple[list[tuple[str, dict]], int, list[str]]:
    """(documents from byte ``offset``, the offset after the last whole line, problems).

    A last line without its newline (a write cut by a kill) is not read; a line that is not
    a ``{name, doc}`` object is a problem."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    docs, problems = [], []
    for lineno, raw in enumerate(data[:end].splitlines(), 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)  # (not orjson's: it reads integers beyond 64 bits as floats)
            docs.append((item["name"], item["doc"]))
        except (ValueError, KeyError, TypeError):
            problems.append(f"{path.name}: line {lineno} after byte {offset} is not a {{name, doc}} JSON object")
    return docs, offset + end, problems


@dataclass
class DrainResult:
    """What the drain did with one run: ``action`` ``written``, ``replaced`` (a partial node rewritten
    whole), ``skipped`` (already complete in the catalog), ``left`` (kept in the spool: see ``detail``)
    or ``failed`` (the catalog refused or was away; the file stays for another try)."""

    uid: str
    file: str
    action: str
    n_documents: int
    detail: str = ""
    complete: bool = True  # the spool held the run's stop document


def _is_transient(exc: BaseException) -> bool:
    import httpx

    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return False


def _is_conflict(exc: BaseException) -> bool:
    import httpx

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 409:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


class _Run:
    """A run this process writes: its file (held with ``flock``), and the drain's state of it."""

    def __init__(self, uid: str, path: Path, fd: int, fsync_each: bool) -> None:
        self.uid, self.path, self.fd, self.fsync_each = uid, path, fd, fsync_each
        self.lock = threading.Lock()
        self.opened = time.monotonic()
        self.stopped = False
        self.stop_uid: str | None = None
        self.n_written = 0
        # drain state (drain thread only)
        self.offset = 0
        self.stream = None  # the TiledWriter of a run streamed while open
        self.n_streamed = 0
        self.last_stream = self.opened
        self.whole = False  # the live stream failed or met a stored node: write it whole at the end
        self.next_try = 0.0
        self.tries = 0
        self.closed = False
        self.result: DrainResult | None = None  # the drain's last word on it
        self.stream_now = False  # a reader asked for what is spooled so far (``Spool.settle``)

    def append(self, name: str, doc: dict) -> None:
        line = _line(name, doc)
        with self.lock:
            if self.closed:
                raise RuntimeError(f"run {self.uid}: a {name!r} document after the spool closed its file")
            os.write(self.fd, line)
            self.n_written += 1
            if name == "stop":
                os.fsync(self.fd)
                self.stopped, self.stop_uid = True, doc.get("uid")
            elif self.fsync_each:
                os.fsync(self.fd)

    def release(self, *, remove: bool) -> None:
        with self.lock:
            if self.closed:
                return
            if remove:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            os.close(self.fd)  # (releases the flock)
            self.closed = True
        with _OPEN_LOCK:
            _OPEN_UIDS.discard(self.uid)


class SpoolWriter:
    """The RunEngine's subscriber: ``writer(name, doc)`` appends each document to its run's spool file.

    ``fsync_each(start) -> bool`` says which runs are fsynced at every document (default: at the
    stop document only). ``skipped``: uids of runs not written again (another writer of this
    process is writing them, the spool already holds them, or the drain found them complete in
    the catalog). ``flush(timeout_s)`` waits for the drain of this writer's runs.
    """

    def __init__(self, spool: Spool, fsync_each: Callable[[dict], bool] | bool = False) -> None:
        self.spool = spool
        self._fsync_each = fsync_each
        self._runs: dict[str, _Run | None] = {}  # run uid -> its run (None: skipped)
        self._run_of: dict[str, str] = {}  # descriptor / resource uid -> run uid
        self._skipped_at_start: list[str] = []
        self._mine: list[_Run] = []
        self.uids: list[str] = []

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            uid = doc["uid"]
            fsync_each = self._fsync_each(doc) if callable(self._fsync_each) else bool(self._fsync_each)
            run = self.spool.open_run(uid, fsync_each=fsync_each)
            self._runs[uid] = run
            if run is None:
                self._skipped_at_start.append(uid)
                logger.info(
                    "run %s is being written by another writer or is in the spool already: not written again", uid
                )
                return
            self.uids.append(uid)
            self._mine.append(run)
            run.append(name, doc)
            return
        uid = doc.get("run_start") or self._run_of.get(doc.get("descriptor") or doc.get("resource") or "")
        if uid is None:
            raise ValueError(f"a {name!r} document of no run this writer saw start")
        if name in ("descriptor", "resource", "stream_resource"):
            self._run_of[doc["uid"]] = uid
        run = self._runs.get(uid)
        if run is None:
            return
        run.append(name, doc)
        if name == "stop":
            self._forget(uid)
            self.spool.stopped(run)

    def _forget(self, uid: str) -> None:
        self._runs.pop(uid, None)
        for key in [k for k, v in self._run_of.items() if v == uid]:
            del self._run_of[key]

    @property
    def skipped(self) -> list[str]:
        later = [r.uid for r in self._mine if r.result is not None and r.result.action == "skipped"]
        return self._skipped_at_start + later

    @property
    def backed_up(self) -> list[str]:
        """Uids of this writer's runs still in the spool (the catalog has not taken them yet)."""
        return [r.uid for r in self._mine if r.result is None or r.result.action == "failed"]

    def flush(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Wait until the drain has taken every run of this writer (``SpoolError`` after ``timeout_s``)."""
        self.spool.settle(timeout_s, uids=self.uids)


class Spool:
    """The spool folder of a catalog and its drain thread (see the module doc).

    ``catalog``: the ``gainloop.catalog.Catalog`` drained into (its client, ``stored_state``,
    ``location``). ``folders``: more folders whose ``*.jsonl`` files are drained too (the
    backup folder of older versions).
    """

    def __init__(
        self,
        catalog,
        directory: Path,
        *,
        folders: Iterable[Path] = (),
        stream_after_s: float = STREAM_AFTER_S,
        retry_s: float = RETRY_S,
        scan_s: float = SCAN_S,
    ) -> None:
        self.catalog = catalog
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.folders = [self.directory, *(Path(f) for f in folders)]
        self.stream_after_s, self.retry_s, self.scan_s = stream_after_s, retry_s, scan_s
        self.results: dict[str, DrainResult] = {}
        self.lag_s: list[float] = []  # stop document written -> run complete in the catalog, per own run
        self._own: dict[str, _Run] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._scan_due = True
        self._last_scan = 0.0
        self._busy = 0  # drain passes under way
        self._client = None
        self._client_lock = threading.Lock()
        self._draining: set[str] = set()  # spool files this process is draining now (it holds their flock)
        self._writers: dict[int, tuple] = {}  # id(client) -> (client, its TiledWriter for complete runs)
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ writing
    def writer(self, fsync_each: Callable[[dict], bool] | bool = False) -> SpoolWriter:
        # TiledWriter's imports (pyarrow, ...) take seconds of one core: here, not in the drain thread while
        # the first runs wait for it (readers elsewhere saw a campaign's first trials ~5 s after their stop)
        from bluesky_tiled_plugins import TiledWriter  # noqa: F401

        with contextlib.suppress(Exception):  # connected while the catalog answers (else at the first drain)
            self._drain_client()
        self._start()
        return SpoolWriter(self, fsync_each)

    def open_run(self, uid: str, *, fsync_each: bool = False) -> _Run | None:
        """A new spool file for run ``uid``, held by this process; None if it is being written or spooled already."""
        if not isinstance(uid, str) or not uid or "/" in uid or uid.startswith("."):
            raise ValueError(f"a run uid that cannot name a spool file: {uid!r}")
        path = self.directory / f"{uid}.jsonl"
        with _OPEN_LOCK:
            if uid in _OPEN_UIDS or path.exists():
                return None
            tmp = self.directory / f".{uid}.jsonl.open"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(tmp, path)  # (the lock stays with the file)
            except OSError:
                os.close(fd)
                raise
            _OPEN_UIDS.add(uid)
        run = _Run(uid, path, fd, fsync_each)
        with self._cond:
            self._own[uid] = run
        return run

    def stopped(self, run: _Run) -> None:
        run.stopped_at = time.monotonic()
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ the drain thread
    def _start(self) -> None:
        with self._cond:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._loop, name="gainloop-spool-drain", daemon=True)
                self._thread.start()

    def start(self) -> None:
        """Start the drain (it drains what earlier processes left in the spool first)."""
        self._start()

    def _drain_client(self):
        with self._client_lock:
            if self._client is None:
                client = self.catalog.new_client()
                if getattr(self.catalog, "uri", None) is not None:
                    # a Tiled server: a connection per request. A server of several processes
                    # (``catalog serve --processes``) hands each connection to one of them; the drain's one
                    # kept-alive connection tied all its requests to one process, and two drains (a sweep's
                    # two workers) shared one process in half the sweeps (measured: 0.96x against 1.85x end
                    # to end). A new connection is taken by a process that is free, the busy one being in a
                    # request; on the loopback or a LAN it costs well under a millisecond a request of ~25 ms.
                    client.context.http_client.headers["Connection"] = "close"
                self._client = client
            return self._client

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._closing and not self._work_left():
                    return
                wait = self._next_wait()
                if wait > 0:
                    self._cond.wait(wait)
                if self._closing and not self._work_left():
                    return
                self._busy += 1
            try:
                self._pass()
            except Exception:  # never let the drain die: say it, retry later
                logger.exception("the spool's drain failed; it tries again")
                time.sleep(self.retry_s)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _work_left(self) -> bool:
        now = time.monotonic()
        return any(r.stopped and r.next_try <= now for r in self._own.values())

    def _next_wait(self) -> float:
        now = time.monotonic()
        due = [self._last_scan + self.scan_s - now if not self._scan_due else 0.0]
        for r in self._own.values():
            if r.stopped:
                due.append(r.next_try - now)
            elif r.stream_now:
                due.append(0.0)
            elif not r.whole:
                due.append(max(r.opened, r.last_stream) + self.stream_after_s - now)
        return max(0.0, min(due))

    def _pass(self) -> None:
        now = time.monotonic()
        with self._cond:
            own = list(self._own.values())
        for run in own:
            if run.stopped and run.next_try <= now:
                self._finish_own(run)
            elif (
                not run.stopped
                and not run.whole
                and (run.stream_now or now - max(run.opened, run.last_stream) >= self.stream_after_s)
            ):
                asked, run.stream_now = run.stream_now, False
                self._stream_own(run, rows_now=asked or run.fsync_each)
        if self._scan_due or now - self._last_scan >= self.scan_s:
            self._scan_due = False
            self._last_scan = now
            self.drain_others()

    def _stream_own(self, run: _Run, *, rows_now: bool) -> None:
        """Feed a run still open its new documents (one TiledWriter for the run).

        ``rows_now`` (a campaign's record, fsynced at every document; a run a reader of this process
        asked for): its TiledWriter appends every event row as it comes (a request each: a record has
        a few events a trial). Else (a measurement run open longer than ``stream_after_s``): its run
        and stream nodes appear as they come, and its rows are appended at its stop, one request per
        stream, as TiledWriter does by default: a twin scan slowed past ``stream_after_s`` on a loaded
        machine costs no request per event."""

        run.last_stream = time.monotonic()
        docs, offset, problems = read_spool_file(run.path, run.offset)
        if problems:
            run.whole = True
            return
        try:
            if run.stream is None:
                client = self._drain_client()
                if self.catalog.stored_state(run.uid, client=client).state != "absent":
                    run.whole = True  # stored already (a replay), or the catalog is away: judged at its end
                    return
                run.stream = _tiled_writer(client, batch_size=1) if rows_now else _tiled_writer(client)
            for name, doc in docs:
                run.stream(name, doc)
                run.n_streamed += 1
        except Exception as exc:
            run.whole, run.stream = True, None
            logger.debug("run %s: streaming it into the catalog stopped (%s); written whole at its end", run.uid, exc)
            return
        run.offset = offset

    def _finish_own(self, run: _Run) -> None:
        t_stop = getattr(run, "stopped_at", time.monotonic())
        if run.stream is not None and not run.whole:
            docs, offset, problems = read_spool_file(run.path, run.offset)
            try:
                if problems:
                    raise ValueError("; ".join(problems))
                for name, doc in docs:
                    run.stream(name, doc)
                run.offset = offset
                result = DrainResult(run.uid, run.path.name, "written", run.n_written)
            except Exception as exc:
                run.whole, run.stream = True, None
                result = self._drain_docs(run.path, *self._read_whole(run.path), own=True, first_error=exc)
        else:
            result = self._drain_docs(run.path, *self._read_whole(run.path), own=True)
        run.result = result
        self._record(result)
        if result.action == "failed":
            run.tries += 1
            run.next_try = time.monotonic() + self.retry_s
            return
        if result.action in ("written", "replaced"):
            self.lag_s.append(time.monotonic() - t_stop)
        run.release(remove=result.action != "left")
        with self._cond:
            self._own.pop(run.uid, None)
            self._cond.notify_all()

    @staticmethod
    def _read_whole(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
        docs, _, problems = read_spool_file(path)
        return docs, problems

    def _record(self, result: DrainResult) -> None:
        self.results[result.uid] = result
        if result.action == "failed" and result.uid not in self._warned:
            self._warned.add(result.uid)
            logger.warning(
                "run %s: the catalog at %s did not take it (%s); it stays in the spool %s and the drain tries "
                "again (or: `%s`)",
                result.uid,
                self.catalog.location,
                result.detail,
                self.directory,
                self.catalog.upload_hint(),
            )
        elif result.action in ("written", "replaced") and result.uid in self._warned:
            logger.info("run %s: written into the catalog from the spool", result.uid)
        elif result.action == "skipped":
            logger.info("run %s %s: not written again", result.uid, result.detail)

    # ------------------------------------------------------------------ one run into the catalog
    def _drain_docs(
        self,
        path: Path,
        docs: list[tuple[str, dict]],
        problems: list[str],
        *,
        own: bool,
        first_error: BaseException | None = None,
    ) -> DrainResult:
        """Write one spooled run into the catalog exactly once (see the module doc)."""
        starts = [d for n, d in docs if n == "start"]
        uid = starts[0]["uid"] if starts else path.stem
        stop = next((d for n, d in reversed(docs) if n == "stop"), None)
        result = DrainResult(uid, path.name, "left", len(docs), complete=stop is not None)
        if problems or not starts:
            result.detail = "; ".join(problems) or "no start document in the file"
            return result
        try:
            client = self._drain_client()
        except Exception as exc:
            result.action, result.detail = "failed", _one_line(exc)
            return result
        # one "is it stored?" request first (a 409 on the start document would reach event_model's RunRouter,
        # which warns about it)
        state = self.catalog.stored_state(uid, timeout_s=30.0, client=client)
        try:
            if state is None:
                try:
                    self._write(client, docs)
                    result.action = "written"
                    return result
                except Exception as exc:
                    if not _is_conflict(exc):
                        raise
                state = self.catalog.stored_state(uid, timeout_s=30.0, client=client)
            if state.state == "unreachable":
                result.action, result.detail = "failed", f"the catalog did not answer ({state.reason})"
                return result
            if state.state == "complete":
                if stop is None or state.stop.get("uid") == stop.get("uid"):
                    result.action, result.detail = "skipped", "is already complete in the catalog"
                else:
                    result.detail = "the catalog holds this run with another stop document: left untouched"
                return result
            if state.state == "incomplete":
                client[uid].delete(recursive=True, external_only=False)
                self._write(client, docs)
                result.action, result.detail = "replaced", "the partial run in the catalog was rewritten whole"
            else:
                self._write(client, docs)
                result.action = "written"
        except Exception as exc:
            result.action, result.detail = "failed", _one_line(exc)
            if not _is_transient(exc):
                logger.debug("run %s: not transient: %s", uid, exc)
        return result

    def _write(self, client, docs: list[tuple[str, dict]]) -> None:

        # TiledWriter caches event rows until a stream has ``batch_size`` of them, or the stop: with the
        # stop, one append per stream; without (the process died), a batch that divides every stream
        if not any(name == "stop" for name, _ in docs):
            writer = _tiled_writer(client, batch_size=_common_batch(docs))
            for name, doc in docs:
                writer(name, doc)
            return
        # one TiledWriter for every complete run of this client (its router forgets a run at its stop;
        # a new writer costs a request): dropped after a failure, which leaves it a half-seen run
        writers = self._writers
        writer = writers.get(id(client))
        if writer is None or writer[0] is not client:
            writer = writers[id(client)] = (client, _tiled_writer(client))
        try:
            for name, doc in docs:
                writer[1](name, doc)
        except BaseException:
            writers.pop(id(client), None)
            raise

    # ------------------------------------------------------------------ runs of other processes
    def files(self) -> list[Path]:
        """Spool files not written by this process (runs left by ended processes, or held by running ones)."""
        out = []
        for folder in self.folders:
            if folder.is_dir():
                out += [p for p in folder.glob("*.jsonl") if p.stem not in self._own]
        return sorted(out, key=lambda p: (_mtime(p), p.name))

    def drain_others(self) -> list[DrainResult]:
        """Drain every spool file no live process holds (this thread or a reader); their results."""
        from gainloop.backup import group_runs

        results = []
        for path in self.files():
            with _held(path) as held:
                if not held:
                    continue
                self._draining.add(path.name)
                try:
                    docs, _, problems = read_spool_file(path)
                    runs = group_runs(docs)
                    file_results = []
                    for run_docs in runs or [[]]:
                        file_results.append(self._drain_docs(path, run_docs, problems, own=False))
                    for r in file_results:
                        if r.action != "left" or r.uid not in self.results:
                            self._record(r)
                    results += file_results
                    if all(r.action in ("written", "replaced", "skipped") for r in file_results):
                        path.unlink()
                finally:
                    self._draining.discard(path.name)
        return results

    def pending(self) -> list[Path]:
        """Spool files whose runs the catalog does not hold yet (this process's too)."""
        with self._cond:
            own = [r.path for r in self._own.values()]
        return sorted(set(own) | set(self.files()))

    # ------------------------------------------------------------------ readers
    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S, *, uids: Iterable[str] | None = None) -> None:
        """Wait until the drain has taken what readers need: the runs ``uids`` (default: every run the spool
        holds whose stop document is written, and every run left by an ended process). Runs still open
        (being written by this or another running process) are not waited for: what the drain has of them
        is in the catalog. ``SpoolError`` after ``timeout_s`` names the runs and what to do."""
        wanted = None if uids is None else set(uids)
        if wanted is not None and not wanted & ({p.stem for p in self.pending()} | set(self._own)):
            return
        if wanted is None and not self.pending():
            return
        self._start()
        deadline = time.monotonic() + timeout_s
        targets: dict[str, int] = {}  # own open runs: what is spooled of them now goes into the catalog first
        with self._cond:
            self._scan_due = True
            for r in self._own.values():
                if r.stopped:
                    r.next_try = 0.0
                elif not r.whole and (wanted is None or r.uid in wanted):
                    with contextlib.suppress(OSError):
                        targets[r.uid] = os.path.getsize(r.path)
                        r.stream_now = True
            self._cond.notify_all()
        while True:
            waiting = self._waiting_for(wanted, targets)
            if not waiting:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with self._cond:
                self._cond.wait(min(left, 0.05))
                if not self._busy:
                    self._scan_due = True
                    self._cond.notify_all()
        names = ", ".join(sorted(waiting)[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
        reasons = {self.results[u].detail for u in waiting if u in self.results and self.results[u].detail}
        raise SpoolError(
            f"the catalog at {self.catalog.location} has not taken {len(waiting)} run(s) of the spool "
            f"{self.directory} within {timeout_s:g} s ({names}"
            + (f"; {'; '.join(sorted(reasons))[:300]}" if reasons else "")
            + f"): nothing is lost; when the catalog answers, run `{self.catalog.upload_hint()}` and read again"
        )

    def _waiting_for(self, wanted: set[str] | None, targets: dict[str, int] | None = None) -> set[str]:
        waiting = set()
        with self._cond:
            own = list(self._own.values())
        for run in own:
            if wanted is not None and run.uid not in wanted:
                continue
            if run.stopped or (not run.whole and run.offset < (targets or {}).get(run.uid, 0)):
                waiting.add(run.uid)
        for path in self.files():
            if wanted is not None and path.stem not in wanted and path.parent == self.directory:
                continue
            result = self.results.get(path.stem)
            if result is not None and result.action == "left":
                continue  # a conflict or a bad file: waiting would not help (the command says it)
            if path.name not in self._draining and _held_by_other(path) and not _has_stop(path):
                continue  # still being written by a running process
            waiting.add(path.stem)
        return waiting

    # ------------------------------------------------------------------ closing
    def close(self, timeout_s: float = 30.0) -> list[str]:
        """Drain what this process wrote (at most ``timeout_s``), stop the thread; the uids left in the spool."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            for r in self._own.values():
                if r.stopped:
                    r.next_try = 0.0
            self._closing = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(min(0.1, max(0.0, deadline - time.monotonic())))
        with self._cond:
            left = list(self._own.values())
            self._own.clear()
        for run in left:
            run.release(remove=False)  # the file stays (with its lock released) for the next start
        if left:
            logger.warning(
                "%d run(s) are in the spool %s, not yet in the catalog at %s: the next start with this data "
                "folder writes them, or `%s`",
                len(left),
                self.directory,
                self.catalog.location,
                self.catalog.upload_hint(),
            )
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.context.close()
        self._client = None
        return [r.uid for r in left]


def _mtime(path: Path) -> float:
    """The file's modification time, 0 once it is gone (another process or the drain removed it meanwhile)."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _tiled_writer(client, **kwargs):
    """bluesky's ``TiledWriter`` into ``client`` with every internal array data key written as an array
    node: by default an array of at most 16 elements goes into the event table, whose SQL storage keeps
    it as its numpy text (``'[0.1 0.33333333 ...]'``: rounded to 8 digits, no longer numbers)."""
    from bluesky_tiled_plugins import TiledWriter

    return TiledWriter(client, max_array_size=0, **kwargs)


def _common_batch(docs: list[tuple[str, dict]]) -> int:
    """The largest batch size that divides the number of events of every stream of ``docs``."""
    import math

    stream_of, counts = {}, {}
    for name, doc in docs:
        if name == "descriptor":
            stream_of[doc["uid"]] = doc.get("name")
        elif name in ("event", "event_page"):
            stream = stream_of.get(doc.get("descriptor"))
            n = len(doc["seq_num"]) if name == "event_page" else 1
            counts[stream] = counts.get(stream, 0) + n
    return math.gcd(*counts.values()) if counts else 1


@contextlib.contextmanager
def _held(path: Path):
    """Hold ``path``'s flock for the block (yields False if a live process holds it or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                yield False
                return
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(fd)


def _held_by_other(path: Path) -> bool:
    with _held(path) as held:
        return not held and path.exists()


def _has_stop(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
            tail = f.read()
        return b'"name":"stop"' in tail or b'"name": "stop"' in tail
    except FileNotFoundError:
        return False
