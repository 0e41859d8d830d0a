"""The embedded catalog's Tiled server: in this process, on 127.0.0.1, in the data folder.

What tiled's ``SimpleTiledServer`` does (SQLite catalog + DuckDB table storage + data
files in one folder, one random API key, uvicorn on a thread, ready once ``/healthz``
answers), with one difference that matters on a bench PC and in a test suite: the catalog
database is created and stamped *in this process* the first time, and an existing one is
only checked. ``SimpleTiledServer`` runs ``python -m tiled catalog init --if-not-exists``
as a subprocess on every start, a new interpreter that imports tiled (about 3 CPU seconds
and 4 wall seconds per command, whether the catalog is new or not).

The layout on disk is ``SimpleTiledServer``'s (``catalog.db``, ``storage.duckdb``,
``data/``, ``access.log``, ``error.log``), so a folder written by either serves with the
other and with ``tiled serve catalog``.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import re
import secrets
import threading
import time
import warnings
from pathlib import Path
from urllib.parse import quote_plus

from core.errors import GainloopError

__all__ = ["EmbeddedTiledServer", "cache_request_dependants", "init_catalog_database"]

#: The API key of every embedded server of this process. One key, not one per server: tiled's
#: app settings are one cached object per process, and each ``build_app`` writes its key into
#: it, so a second server with its own key would lock the first one's clients out.
PROCESS_API_KEY = secrets.token_hex(16)

#: Set to "0": servers started in this process rebuild FastAPI's dependants on every request, as tiled's
#: app does (``cache_request_dependants``; on by default: a quarter of ``catalog serve``'s CPU per run
#: written). (The sweeps into ``catalog serve`` that stalled, with it on and off, were Dask's profiler
#: deadlocking its worker: ``gainloop.sweep._stop_worker_profiler``.) plan_overhead measures both.
DEPENDANT_CACHE_ENV = "GAINLOOP_TILED_DEPENDANT_CACHE"

#: Wall seconds the server may take to answer ``/healthz`` after it starts listening.
STARTUP_TIMEOUT_S = 20.0
#: Seconds the server gives requests still running when it is closed (uvicorn waits for ever without it).
SHUTDOWN_GRACE_S = 5


def init_catalog_database(uri: str) -> bool:
    """Create the Tiled catalog tables in the SQL database ``uri`` and stamp its schema
    revision, unless it is already a Tiled catalog (then check it is one this tiled reads):
    what ``tiled catalog init --if-not-exists`` does, in this process.

    Returns True when the database was new. Raises what the database or tiled raised
    (e.g. ``tiled.alembic_utils.DatabaseUpgradeNeeded``); callers say it for their users.
    Runs on a thread of its own (the alembic stamp calls ``asyncio.run``), so it works
    whether or not the caller has an event loop.
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import UninitializedDatabase, check_database, stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION, initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(uri)
    outcome: dict[str, object] = {}

    async def create_if_new() -> bool:
        engine = create_async_engine(uri)
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        except UninitializedDatabase:
            await initialize_database(engine)
            return True
        finally:
            await engine.dispose()
        return False

    def work() -> None:
        try:
            new = asyncio.run(create_if_new())
            if new:
                with warnings.catch_warnings():
                    # tiled's alembic.ini predates alembic's ``path_separator`` option
                    warnings.filterwarnings("ignore", "No path_separator found", DeprecationWarning)
                    stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)
            outcome["new"] = new
        except BaseException as exc:  # raised again in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="gainloop-catalog-init")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return bool(outcome["new"])


def write_ahead_log(path: Path) -> None:
    """Put the SQLite catalog database ``path`` in write-ahead-log mode (kept in the file).

    tiled's ``initialize_database`` asks for it, but inside a transaction, where SQLite leaves the mode
    as it is: the catalog stayed in rollback-journal mode, in which a long read (a calibration reading
    its runs) blocks the drain's writes and the server answered "database is locked". In WAL mode readers
    and the one writer do not block each other."""
    import sqlite3

    connection = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        connection.close()
    if str(mode).lower() != "wal":
        raise GainloopError(f"the catalog database {path} cannot use write-ahead logging (journal mode {mode})")


def cache_request_dependants() -> None:
    """Make FastAPI build each dependency's ``Dependant`` once, not on every request (this process).

    tiled's app overrides one dependency (its settings). With any override in place, FastAPI's
    ``solve_dependencies`` calls ``get_dependant`` again for every sub-dependency of every
    request (``inspect.signature`` of each: about a tenth of the server's CPU per request, on
    a writer's requests). The result depends only on the arguments (the same ``call``, path,
    name and scopes give the same ``Dependant``), so it is kept per arguments here, for the
    requests only: route set-up (``fastapi.routing``) keeps its own, uncached reference.
    """
    import os

    import fastapi.dependencies.utils as utils

    if os.environ.get(DEPENDANT_CACHE_ENV) == "0" or getattr(utils.get_dependant, "gainloop_cached", False):
        return
    original = utils.get_dependant
    cache: dict[tuple, object] = {}

    def get_dependant(**kwargs):
        try:
            key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
            return cache[key]
        except TypeError:  # an argument that cannot be a key: built as FastAPI does
            return original(**kwargs)
        except KeyError:
            cache[key] = dependant = original(**kwargs)
            return dependant

    get_dependant.gainloop_cached = True
    get_dependant.original = original
    utils.get_dependant = get_dependant


class RedactApiKey(logging.Filter):
    """A log filter: the text of a record (its message and its arguments, e.g. uvicorn's request line
    ``GET /api/v1?api_key=...``) with every ``api_key=`` value and the process's key replaced."""

    _QUERY_KEY = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)

    def _clean(self, value):
        if not isinstance(value, str):
            return value
        return self._QUERY_KEY.sub(r"\1[redacted]", value).replace(PROCESS_API_KEY, "[redacted]")

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: self._clean(v) for k, v in record.args.items()}
        return True


class EmbeddedTiledServer:
    """A Tiled server for the catalog in ``directory``, on a background thread, 127.0.0.1 only.

    ``uri`` carries its API key (``PROCESS_API_KEY``: random for each process, never written to disk).
    ``close()`` stops it; a context manager does too.
    """

    def __init__(self, directory: str | Path):
        import httpx
        import uvicorn
        from tiled.catalog import from_uri as catalog_from_uri
        from tiled.config import Authentication, StreamingCacheConfig
        from tiled.server.app import build_app
        from tiled.server.logging_config import LOGGING_CONFIG
        from tiled.server.simple import ThreadedServer
        from tiled.storage import get_storage
        from tiled.utils import ensure_uri

        self.directory = Path(directory).resolve()
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        storage_uri = ensure_uri(f"duckdb:///{self.directory / 'storage.duckdb'}")
        catalog_db = self.directory / "catalog.db"
        try:
            init_catalog_database(f"sqlite:///{catalog_db}")
        except Exception as exc:
            from tiled.alembic_utils import DatabaseUpgradeNeeded

            if isinstance(exc, DatabaseUpgradeNeeded):
                raise GainloopError(
                    f"the catalog {catalog_db} was made by an older tiled: back the folder up, then run "
                    f"`tiled catalog upgrade-database {catalog_db}`"
                ) from None
            raise GainloopError(f"cannot open the catalog database {catalog_db}: {exc}") from exc
        write_ahead_log(catalog_db)
        self.api_key = PROCESS_API_KEY

        log_config = copy.deepcopy(LOGGING_CONFIG)  # to files in the folder, not the terminal
        log_config.setdefault("filters", {})["redact_api_key"] = {"()": RedactApiKey}
        for formatter in log_config["formatters"].values():
            formatter["use_colors"] = False  # plain text in the files
        for handler, filename in (("access", "access.log"), ("default", "error.log")):
            handler_filters = log_config["handlers"][handler].setdefault("filters", [])
            handler_filters.append("redact_api_key")  # the key never reaches the files
            log_config["handlers"][handler]["class"] = "logging.FileHandler"
            log_config["handlers"][handler].pop("stream", None)
            log_config["handlers"][handler]["filename"] = str(self.directory / filename)

        self.catalog = catalog_from_uri(
            catalog_db,
            writable_storage=[self.directory / "data", storage_uri],
            init_if_not_exists=False,  # done above, in this process
            cache_config=StreamingCacheConfig(uri="memory").model_dump(),
        )
        self._storage = get_storage(storage_uri)
        cache_request_dependants()
        app = build_app(self.catalog, authentication=Authentication(single_user_api_key=self.api_key))
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop="asyncio",
            log_config=log_config,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        server = ThreadedServer(config)
        self._running = server.run_in_thread()
        base_url = self._running.__enter__()
        try:
            self._wait_ready(httpx, server, base_url)
        except BaseException:
            self._running.__exit__(None, None, None)
            raise
        self.base_url = base_url
        self.uri = f"{base_url}/api/v1?api_key={quote_plus(self.api_key)}"

    def _wait_ready(self, httpx, server, base_url: str) -> None:
        """Until the app answers ``/healthz`` (uvicorn listens before FastAPI's startup is done)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(trust_env=False) as client:
            while True:
                if not server.thread.is_alive():
                    raise GainloopError(
                        f"the embedded catalog's server stopped while starting: see {self.directory / 'error.log'}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GainloopError(
                        f"the embedded catalog's server did not answer within {STARTUP_TIMEOUT_S:g} s: "
                        f"see {self.directory / 'error.log'}"
                    )
                try:
                    if client.get(f"{base_url}/healthz", timeout=min(1.0, remaining)).status_code == 200:
                        return
                except httpx.RequestError:
                    pass
                time.sleep(0.05)

    def close(self) -> None:
        """Stop the server (requests still running get ``SHUTDOWN_GRACE_S``), then release the table
        storage's connections: disposing them first failed the requests in flight (DuckDB: "no active
        transaction") and one left hanging kept the server, and the process, from ever ending."""
        self._running.__exit__(None, None, None)
        self._storage.dispose()

    def __enter__(self) -> EmbeddedTiledServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
