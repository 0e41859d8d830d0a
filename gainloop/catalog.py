"""The catalog: where every document goes (databroker / Tiled, never a home-made store).

* Embedded default: a local Tiled catalog (SQLite + files) in the data folder,
  served in-process on 127.0.0.1 (``gainloop.embedded``: tiled's own server, its
  database created in-process; no server to start by hand). The data folder is
  ``--data-dir``, else ``$GAINLOOP_DATA_DIR``, else the platform's user data directory for gainloop.
* At scale: ``--catalog URI`` of a Tiled server (e.g. on PostgreSQL) with an API key
  (``--api-key`` or ``$TILED_API_KEY``).

Writing goes through the spool (``gainloop.spool``): the RunEngine's documents are appended
to ``<data dir>/spool/<run uid>.jsonl`` (fsynced at each stop document, and at each document
of a campaign's record), and a background thread drains each run into the catalog through
bluesky's ``TiledWriter``, exactly once (a run already complete in the catalog is not written
again; a partial one is rewritten whole). The RunEngine never waits on the catalog; a catalog
away mid-run loses nothing (the run stays in the spool and the drain tries again); runs a
process leaves behind (it ended before the drain, or was killed) are drained at the next start
with the same data folder, or by ``gainloop catalog upload-backup``. Reading goes through the
Tiled client's BlueskyRun, after the drain of the runs the reader needs (``Catalog.settle``,
bounded, with a message naming the runs when the catalog does not take them).
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
    "RunNotFoundError",
    "StoredState",
    "data_dir",
]

ENV_DATA_DIR = "GAINLOOP_DATA_DIR"
CHECK_TIMEOUT_S = 2.0  # the "is this uid stored?" request (no retries)

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
    """An open catalog (embedded or remote) with its spool (``gainloop.spool``) and the spool's drain.

    Use as a context manager; on exit the drain takes what this process wrote (bounded by
    ``close_timeout_s``), then the embedded server stops.
    """

    def __init__(
        self,
        uri: str | None = None,
        *,
        data_dir_path: str | Path | None = None,
        api_key: str | None = None,
        warn_pending_backup: bool = True,
        drain_at_open: bool = True,
        close_timeout_s: float = 30.0,
    ):
        from gainloop.spool import SPOOL_DIR, Spool

        self.data_dir = data_dir(data_dir_path)
        self.spool_dir = self.data_dir / SPOOL_DIR
        #: Where runs wait for the catalog (the spool; older versions' ``backup/`` folder is drained too).
        self.backup_dir = self.spool_dir
        self.uri = uri
        self.close_timeout_s = close_timeout_s
        self._server = None
        self._api_key = None
        if uri is None:
            from gainloop.embedded import EmbeddedTiledServer

            self.location = str(self.data_dir / "catalog")
            self._server = EmbeddedTiledServer(self.location)
            self._client = self._connect(self._server.uri, None, compress=False)
        else:
            self.location = masked(uri)
            self._api_key = api_key or os.environ.get("TILED_API_KEY")
            self._client = self._connect(uri, self._api_key)
        _quiet_connection_tracebacks()
        self.spool = Spool(self, self.spool_dir, folders=[self.data_dir / "backup"])
        if drain_at_open:
            self._drain_leftovers(logger.warning if warn_pending_backup else logger.info)

    def _drain_leftovers(self, say) -> None:
        """Write the runs that ended processes left in the spool (ended before their drain, or killed)
        before anything reads this catalog; what the catalog does not take stays for the background drain."""
        if not self.spool.files():
            return
        # (a file a live process holds is a run it is still writing: not a leftover, not said)
        results = self.spool.drain_others()
        if not results:
            return
        done = [r for r in results if r.action in ("written", "replaced", "skipped")]
        say(
            "%d file(s) in the spool %s held runs not yet written into the catalog: %d run(s) written now%s",
            len({r.file for r in results}),
            self.spool_dir,
            len(done),
            "" if len(done) == len(results) else f", {len(results) - len(done)} left (see above)",
        )
        if len(done) != len(results):
            self.spool.start()

    @property
    def api_key(self) -> str | None:
        """The API key this catalog was opened with (None for the embedded one: its key is per process)."""
        return self._api_key

    @property
    def client(self):
        """The Tiled client (a ``tiled.client`` container of BlueskyRuns), for reading: the runs the spool
        held for readers are drained first (``settle``: bounded, an error naming them if the catalog does
        not take them)."""
        spool = getattr(self, "spool", None)
        if spool is not None:
            self.settle()
        return self._client

    def new_client(self):
        """Another client of this catalog (the drain's own, off the reader's connection pool)."""
        if self._server is not None:
            return self._connect(self._server.uri, None, compress=False)
        return self._connect(self.uri, self._api_key)

    @staticmethod
    def _connect(uri: str, api_key: str | None, timeout_s: float = 5.0, *, compress: bool = True):
        """A Tiled client of ``uri``. ``compress`` False: ask for uncompressed answers (``Accept-Encoding:
        identity``), for the embedded server on loopback, where compressing a spectrum array costs both
        ends CPU and saves no time (a remote server keeps Tiled's default: compressed answers)."""
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
            headers = None if compress else {"accept-encoding": "identity"}
            return from_uri(uri, api_key=api_key, headers=headers) if api_key else from_uri(uri, headers=headers)
        except Exception as exc:  # httpx connection errors, auth errors, bad URIs
            raise CatalogError(
                masked(
                    f"cannot reach the catalog at {uri}: {exc}. Start the Tiled server "
                    "at that address, or check the URI and API key.",
                    api_key,
                )
            ) from None

    def writer(self, fsync_each=False):
        """The RunEngine's writer into this catalog: documents to the spool, drained in the background
        (see the module doc). ``fsync_each``: fsync every document (bool, or a function of the start
        document saying it per run); the default fsyncs at each stop document."""
        return self.spool.writer(fsync_each)

    # -- what is stored
    def stored_state(self, uid: str, *, timeout_s: float = CHECK_TIMEOUT_S, client=None) -> StoredState:
        """What the catalog holds of the run ``uid``, from one request without retries.

        ``state``: ``"absent"``, ``"complete"`` (stored with its stop document, in ``stop``),
        ``"incomplete"`` (stored without one) or ``"unreachable"`` (no answer or an error,
        said in ``reason``).
        """
        import httpx

        client = client if client is not None else self._client
        url = f"{client.uri.rstrip('/')}/{uid}"
        try:
            response = client.context.http_client.get(url, timeout=timeout_s)
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
        """Spool files whose runs are not (all) in the catalog yet (being written, or waiting for the drain)."""
        return self.spool.pending()

    def settle(self, timeout_s: float | None = None, *, uids=None) -> None:
        """Wait (bounded) until the drain has written what the spool holds for readers (``Spool.settle``);
        ``gainloop.spool.SpoolError``, a ``CatalogError``, if the catalog does not take it in time."""
        from gainloop.spool import SETTLE_TIMEOUT_S

        self.spool.settle(SETTLE_TIMEOUT_S if timeout_s is None else timeout_s, uids=uids)

    def upload_hint(self) -> str:
        """The command that writes this catalog's backup into it (no API key in it)."""
        where = "" if self.uri is None else f" --catalog {self.location}"
        return f"gainloop catalog upload-backup{where} --data-dir {self.data_dir}"

    def campaign_writer(self):
        """The writer of a campaign: its record run fsynced at every document (a process killed
        mid-campaign loses nothing already decided, even with the machine), measurement runs at their stop."""
        return self.writer(fsync_each=lambda start: start.get("plan_name") == "campaign")

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
        """The stored run (BlueskyRun) with this uid, after the drain of its spool file (only its own: a reader of
        one run never waits for the drain of a backlog of others); else ``RunNotFoundError``."""
        if any(p.stem == uid for p in self.spool.pending()):
            self.settle(uids=[uid])
        try:
            return self._client[uid]
        except KeyError:
            raise RunNotFoundError(f"no run with uid {uid!r} in the catalog at {self.location}") from None

    def close(self) -> None:
        spool = getattr(self, "spool", None)
        if spool is not None:
            spool.close(self.close_timeout_s)
        context = getattr(self._client, "context", None)
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
