"""The catalog: where every document goes (databroker / Tiled, never a home-made store).

* Embedded default: a local Tiled catalog (SQLite + files) in the data folder,
  served in-process on 127.0.0.1 (``gainloop.embedded``: tiled's own server, its
  database created in-process; no server to start by hand). The data folder is
  ``--data-dir``, else ``$GAINLOOP_DATA_DIR``, else the platform's user data directory for gainloop.
* At scale: ``--catalog URI`` of a Tiled server (e.g. on PostgreSQL) with an API key
  (``--api-key`` or ``$TILED_API_KEY``).

Writing goes through bluesky's ``TiledWriter`` with its backup directory on (in the
data folder), so documents are kept on disk when the server is away. Reading goes
through the Tiled client's BlueskyRun.

``Catalog.writer()`` wraps the TiledWriter with one decision per run, taken at its
start document (one request without retries):

* the uid is new: the run goes to the TiledWriter (which falls back to the backup
  file ``<data dir>/backup/<uid prefix>.jsonl`` if the server goes away mid-run);
* the uid is stored with its stop document: the run is already complete, its
  documents are dropped (a replay, or a second writer on the same RunEngine);
* the uid is stored without a stop document (another writer is writing it): the
  documents are held until the stop document, then dropped if the stored run is
  complete by then, else kept in the backup file;
* the server does not answer: the run goes straight to the backup file (no
  retries stalling the plan).

A run whose documents ended in the backup is reported by one warning line naming
``gainloop catalog upload-backup`` (``gainloop.backup``), which writes it into the
catalog later; until then, opening the catalog says (one line) that the backup holds
runs not yet uploaded (so a campaign is not resumed from an incomplete record unawares).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import NamedTuple

import platformdirs

from core.errors import GainloopError

__all__ = [
    "AmbiguousUidError",
    "Catalog",
    "CatalogError",
    "CatalogWriter",
    "RunNotFoundError",
    "StoredState",
    "backup_file",
    "data_dir",
]

ENV_DATA_DIR = "GAINLOOP_DATA_DIR"
CHECK_TIMEOUT_S = 2.0  # the per-run "is this uid stored?" request (no retries)

logger = logging.getLogger(__name__)

_SECRET_IN_URI = re.compile(r"(api_key=)[^&\s\"']+|(//[^/:@\s]+:)[^@/\s]+(@)", re.IGNORECASE)


def masked(text: str, api_key: str | None = None) -> str:
    """``text`` with API keys (``api_key=...``, the key itself) and URI passwords replaced by ``***``."""
    out = _SECRET_IN_URI.sub(lambda m: f"{m.group(1)}***" if m.group(1) else f"{m.group(2)}***{m.group(3)}", text)
    return out.replace(api_key, "***") if api_key else out


class CatalogError(GainloopError):
    """The catalog cannot be opened or reached."""


class RunNotFoundError(CatalogError, KeyError):
    """No run with that uid in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"


class AmbiguousUidError(CatalogError):
    """A uid prefix that starts several uids (the message lists them)."""


def data_dir(explicit: str | Path | None = None) -> Path:
    """The data folder: ``explicit``, else $GAINLOOP_DATA_DIR, else the user data directory."""
    if explicit is not None:
        p = Path(explicit)
    elif os.environ.get(ENV_DATA_DIR):
        p = Path(os.environ[ENV_DATA_DIR])
    else:
        p = Path(platformdirs.user_data_dir("gainloop", appauthor=False))
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogError(f"cannot create the data folder {p}: {exc}") from None
    return p


class StoredState(NamedTuple):
    """What the catalog holds of one run (``Catalog.stored_state``)."""

    state: str  # "absent", "complete", "incomplete" or "unreachable"
    stop: dict | None = None  # the stored stop document, when complete
    reason: str = ""  # why unreachable


class Catalog:
    """An open catalog (embedded or remote) with its writer's backup directory.

    Use as a context manager; the embedded server stops on exit.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        data_dir_path: str | Path | None = None,
        api_key: str | None = None,
        warn_pending_backup: bool = True,
    ):
        self.data_dir = data_dir(data_dir_path)
        self.backup_dir = self.data_dir / "backup"
        self.backup_dir.mkdir(exist_ok=True)
        self.uri = uri
        self._server = None
        if uri is None:
            from gainloop.embedded import EmbeddedTiledServer

            self.location = str(self.data_dir / "catalog")
            self._server = EmbeddedTiledServer(self.location)
            self.client = self._connect(self._server.uri, None)
        else:
            self.location = masked(uri)
            self.client = self._connect(uri, api_key or os.environ.get("TILED_API_KEY"))
        pending = self.pending_backup() if warn_pending_backup else []
        if pending:  # e.g. before a campaign is resumed: its runs are not all in the catalog yet
            logger.warning(
                "%d file(s) in the backup %s hold runs not yet written into the catalog: write them with `%s`",
                len(pending),
                self.backup_dir,
                self.upload_hint(),
            )

    @staticmethod
    def _connect(uri: str, api_key: str | None, timeout_s: float = 5.0):
        import httpx
        from tiled.client import from_uri

        try:  # fail fast (the client itself retries for tens of seconds)
            httpx.get(uri, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise CatalogError(
                masked(
                    f"cannot reach the catalog at {uri}: {exc}. "
                    "Start the Tiled server at that address, or check the URI.",
                    api_key,
                )
            ) from None
        _check_api_key(uri, api_key, timeout_s)
        try:
            return from_uri(uri, api_key=api_key) if api_key else from_uri(uri)
        except Exception as exc:  # httpx connection errors, auth errors, bad URIs
            raise CatalogError(
                masked(
                    f"cannot reach the catalog at {uri}: {exc}. Start the Tiled server "
                    "at that address, or check the URI and API key.",
                    api_key,
                )
            ) from None

    def writer(self, batch_size: int | None = None) -> CatalogWriter:
        """A writer into this catalog (a ``TiledWriter`` behind a per-run guard, see the module doc),
        backing documents up on disk when the server is away.

        ``batch_size=1`` writes every event as it comes (a campaign's record, so that a
        killed process loses nothing already decided); the default batches event rows.
        """
        from bluesky_tiled_plugins import TiledWriter

        _quiet_connection_tracebacks()
        kwargs = {} if batch_size is None else {"batch_size": batch_size}
        return CatalogWriter(self, TiledWriter(self.client, backup_directory=str(self.backup_dir), **kwargs))

    # -- what is stored
    def stored_state(self, uid: str, *, timeout_s: float = CHECK_TIMEOUT_S) -> StoredState:
        """What the catalog holds of the run ``uid``, from one request without retries.

        ``state``: ``"absent"``, ``"complete"`` (stored with its stop document, in ``stop``),
        ``"incomplete"`` (stored without one) or ``"unreachable"`` (no answer or an error,
        said in ``reason``).
        """
        import httpx

        url = f"{self.client.uri.rstrip('/')}/{uid}"
        try:
            response = self.client.context.http_client.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return StoredState("unreachable", reason=f"no answer: {type(exc).__name__}")
        if response.status_code == 404:
            return StoredState("absent")
        if response.status_code != 200:
            return StoredState("unreachable", reason=f"HTTP {response.status_code} {response.reason_phrase}")
        try:
            metadata = response.json()["data"]["attributes"]["metadata"] or {}
        except (ValueError, KeyError, TypeError):
            return StoredState("unreachable", reason="an answer that is not a Tiled node")
        stop = metadata.get("stop")
        return StoredState("complete", stop=stop) if stop else StoredState("incomplete")

    def pending_backup(self) -> list[Path]:
        """Backup files not yet uploaded (``gainloop catalog upload-backup`` moves them to ``backup/uploaded``)."""
        return sorted(self.backup_dir.glob("*.jsonl"))

    def upload_hint(self) -> str:
        """The command that writes this catalog's backup into it (no API key in it)."""
        where = "" if self.uri is None else f" --catalog {self.location}"
        return f"gainloop catalog upload-backup{where} --data-dir {self.data_dir}"

    def campaign_writer(self):
        """Writers per run: a campaign's record run event by event (a process killed mid-campaign
        loses nothing already decided), measurement runs in batches (complete at their stop document)."""
        from event_model import RunRouter

        every_event = self.writer(batch_size=1)
        batched = self.writer()

        def factory(name, start):
            return [every_event if start.get("plan_name") == "campaign" else batched], []

        return RunRouter([factory])

    def resolve_uid(self, uid: str, *, key: str = "uid", what: str = "run", where: dict | None = None) -> str:
        """The whole uid of the run (``key`` "uid") or campaign (``key`` "campaign_uid") that ``uid`` names:
        itself, or an unambiguous prefix of it (e.g. the 8 characters the live table prints).

        ``RunNotFoundError`` if nothing matches, ``AmbiguousUidError`` (listing the matches) if several do.
        ``where``: more start-document keys the runs must have (e.g. ``{"plan_name": "campaign"}``).
        """
        from tiled.queries import Key, Like

        text = str(uid).strip().lower()
        if not re.fullmatch(r"[0-9a-f-]{1,36}", text) or len(text) < 4:
            raise RunNotFoundError(
                f"no {what} with uid {uid!r} in the catalog at {self.location}: give its uid or the start of it "
                "(at least 4 hexadecimal digits, e.g. the 8 characters the live table prints)"
            )
        results = self.client
        for k, v in (where or {}).items():
            results = results.search(Key(f"start.{k}") == v)
        if len(text) == 36:
            exact = results.search(Key(f"start.{key}") == text)
            if len(exact):
                return text
            raise RunNotFoundError(f"no {what} with uid {text!r} in the catalog at {self.location}")
        found = results.search(Like(f"start.{key}", f"{text}%"))
        matches = sorted({str(run.start[key]) for run in found.values()}, key=str)
        if not matches:
            raise RunNotFoundError(f"no {what} whose uid starts with {text!r} in the catalog at {self.location}")
        if len(matches) > 1:
            shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
            raise AmbiguousUidError(f"{text!r} is the start of {len(matches)} {what} uids: {shown}; give more of it")
        return matches[0]

    def run(self, uid: str):
        """The stored run (BlueskyRun) with this uid, or ``RunNotFoundError``."""
        try:
            return self.client[uid]
        except KeyError:
            raise RunNotFoundError(f"no run with uid {uid!r} in the catalog at {self.location}") from None

    def close(self) -> None:
        context = getattr(self.client, "context", None)
        if context is not None:
            context.close()
        if self._server is not None:
            self._server.close()
            self._server = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_api_key(uri: str, api_key: str | None, timeout_s: float) -> None:
    """Say exactly what is wrong when the server answers 401: no key given, or the key given refused."""
    import httpx

    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{uri.rstrip('/')}/api/v1/metadata/", headers=headers, timeout=timeout_s)
    except httpx.HTTPError:
        return  # (the client's own connection reports it)
    if response.status_code != 401:
        return
    how = (
        "pass it with --api-key, or in $TILED_API_KEY (or the variable the config's [catalog] api_key_env "
        "names); it is the key the server was started with (`gainloop catalog serve` prints it once, or takes "
        "it from $GAINLOOP_TILED_API_KEY)"
    )
    if not api_key:
        raise CatalogError(f"the catalog at {masked(uri)} needs an API key and none was given: {how}")
    raise CatalogError(f"the catalog at {masked(uri)} refused the API key given (HTTP 401): check it; {how}")


def backup_file(backup_dir: Path, uid: str) -> Path:
    """Where ``TiledWriter`` backs a run up: ``<backup_dir>/<uid up to its first dash>.jsonl``."""
    return Path(backup_dir) / f"{uid.split('-')[0]}.jsonl"


class CatalogWriter:
    """``writer(name, doc)``: documents into the catalog through a ``TiledWriter``, one decision per run.

    See the module doc for the decisions. ``backed_up`` lists the uids of runs whose
    documents ended in the backup directory; ``skipped`` those not written because
    the catalog already had them.
    """

    def __init__(self, catalog: Catalog, tiled_writer) -> None:
        from event_model import RunRouter

        self.catalog = catalog
        self.tiled_writer = tiled_writer
        self.backed_up: list[str] = []
        self.skipped: list[str] = []
        self._router = RunRouter([self._factory])

    def __call__(self, name: str, doc: dict) -> None:
        self._router(name, doc)

    def _factory(self, name: str, start: dict):
        uid = start["uid"]
        stored = self.catalog.stored_state(uid)
        if stored.state == "absent":
            return [_ToTiled(self, uid)], []
        if stored.state == "complete":
            return [_Drop(self, uid)], []
        if stored.state == "incomplete":
            return [_HoldUntilStop(self, uid)], []
        return [_ToBackup(self, uid, stored.reason)], []

    # -- notes, one line each
    def _note_backed_up(self, uid: str, why: str) -> None:
        self.backed_up.append(uid)
        logger.warning(
            "run %s: %s; its documents are in %s: write them into the catalog with `%s`",
            uid,
            why,
            backup_file(self.catalog.backup_dir, uid),
            self.catalog.upload_hint(),
        )

    def _note_skipped(self, uid: str, why: str) -> None:
        self.skipped.append(uid)
        logger.info("run %s %s: not written again", uid, why)


class _ToTiled:
    """The run goes to the TiledWriter; at its stop, notes whether the writer fell back to its backup."""

    def __init__(self, owner: CatalogWriter, uid: str) -> None:
        self.owner, self.uid = owner, uid
        self.file = backup_file(owner.catalog.backup_dir, uid)
        self.size0 = self.file.stat().st_size if self.file.exists() else 0

    def __call__(self, name: str, doc: dict) -> None:
        self.owner.tiled_writer(name, doc)
        if name == "stop" and self.file.exists() and self.file.stat().st_size > self.size0:
            self.owner._note_backed_up(self.uid, f"the catalog at {self.owner.catalog.location} failed mid-run")


class _Drop:
    def __init__(self, owner: CatalogWriter, uid: str) -> None:
        owner._note_skipped(uid, "is already complete in the catalog")

    def __call__(self, name: str, doc: dict) -> None:
        pass


class _HoldUntilStop:
    """The run is being written by another writer: hold its documents; at the stop, drop them if the
    stored run is complete with this stop document, else keep them in the backup file."""

    def __init__(self, owner: CatalogWriter, uid: str) -> None:
        self.owner, self.uid = owner, uid
        self.docs: list[tuple[str, dict]] = []

    def __call__(self, name: str, doc: dict) -> None:
        self.docs.append((name, doc))
        if name != "stop":
            return
        stored = self.owner.catalog.stored_state(self.uid)
        if stored.state == "complete" and stored.stop.get("uid") == doc.get("uid"):
            self.owner._note_skipped(self.uid, "was written by another writer")
            return
        from bluesky.callbacks.json_writer import JSONLinesWriter

        backup = JSONLinesWriter(str(self.owner.catalog.backup_dir), filename=backup_file(Path("."), self.uid).name)
        for held in self.docs:
            backup(*held)
        self.docs.clear()
        self.owner._note_backed_up(self.uid, "the catalog holds an incomplete copy of this run")


class _ToBackup:
    """The server did not answer at the run's start: every document goes to the backup file."""

    def __init__(self, owner: CatalogWriter, uid: str, reason: str) -> None:
        from bluesky.callbacks.json_writer import JSONLinesWriter

        self.owner, self.uid, self.reason = owner, uid, reason
        self.backup = JSONLinesWriter(str(owner.catalog.backup_dir), filename=backup_file(Path("."), uid).name)

    def __call__(self, name: str, doc: dict) -> None:
        self.backup(name, doc)
        if name == "stop":
            where = self.owner.catalog.location
            self.owner._note_backed_up(self.uid, f"the catalog at {where} did not take it ({self.reason})")


class _ConnectionFailureFilter(logging.Filter):
    """TiledWriter logs a full traceback when its server goes away mid-run; the guard says it in one
    line at the run's stop, so a connection failure's record loses its traceback and drops to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        import httpx

        exc = record.exc_info[1] if record.exc_info else None
        seen = set()
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, httpx.TransportError):
                record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
                record.args = ()
                record.exc_info = record.exc_text = None
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
                return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
            exc = exc.__cause__ or exc.__context__
        return True


def _quiet_connection_tracebacks() -> None:
    tw_logger = logging.getLogger("bluesky_tiled_plugins.writing.tiled_writer")
    if not any(isinstance(f, _ConnectionFailureFilter) for f in tw_logger.filters):
        tw_logger.addFilter(_ConnectionFailureFilter())
