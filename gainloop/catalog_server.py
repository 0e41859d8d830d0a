"""The catalog at scale: a Tiled server on PostgreSQL behind a single-user API key.

``gainloop catalog serve`` wires tiled's own pieces together, nothing home-made:

* the catalog (nodes, metadata, the run documents) in a PostgreSQL database,
  created and initialised (tables + alembic stamp) on first use;
* writable storage for what ``TiledWriter`` stores: event tables in the *same*
  PostgreSQL database (tiled's ``RemoteSQLStorage``, over ADBC) and array files in a
  folder (``--data-dir``, else ``<gainloop data folder>/server/<database>``);
* served by uvicorn on 127.0.0.1 unless an interface is named, with a single-user
  API key (``--api-key``, else ``$GAINLOOP_TILED_API_KEY``, else
  ``$TILED_SINGLE_USER_API_KEY``, else a random key printed once at start-up).
  Anonymous access is off: reads and writes without the key get 401;
* in one process, or in ``--processes N`` (uvicorn's supervisor: N server processes on one
  socket, each its own event loop and connections to PostgreSQL, replaced if one dies or does not
  answer its health check for 60 s): one process serves requests on one core (the GIL), and a
  sweep's writers saturate it first. With
  more than one, tiled's streaming cache (what live subscribers, e.g. ``gainloop watch``, are
  told) must be shared: ``--redis redis://HOST:PORT/DB`` (a Redis database of its own per
  catalog: tiled keys it by node id, which each catalog numbers from 1); in memory it would be
  per process, and a subscriber would miss the writes another process served. A server process
  whose supervisor is killed (SIGKILL) stops within ~1 s (it checks its parent every second).

Secrets stay secret: the API key is printed at most once (only when generated), URIs
are printed with their password masked, and every log handler redacts the key, the
PostgreSQL password and any ``api_key=...`` query parameter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from core.errors import GainloopError
from gainloop.catalog import data_dir as gainloop_data_dir

__all__ = [
    "DEFAULT_POSTGRES_URI",
    "ENV_API_KEYS",
    "ENV_POSTGRES_URI",
    "ENV_REDIS_URI",
    "CatalogServerError",
    "ServerSettings",
    "build_app",
    "check_redis",
    "ensure_database",
    "init_catalog",
    "mask_password",
    "serve",
    "server_process_app",
    "startup_line",
]

DEFAULT_POSTGRES_URI = "postgresql://postgres@127.0.0.1:5432/gainloop"
ENV_POSTGRES_URI = "GAINLOOP_POSTGRES_URI"
ENV_REDIS_URI = "GAINLOOP_REDIS_URI"
MAX_PROCESSES = 64
#: Seconds between a server process's checks that its supervisor is alive.
PARENT_CHECK_S = 1.0
#: Seconds a server process has to answer its supervisor's health check before it is killed and replaced.
#: uvicorn's default, 5 s, killed processes on a loaded machine (seen in a full test run: a process still
#: importing, another busy serving), losing the requests in flight; a hung process is still replaced.
HEALTHCHECK_TIMEOUT_S = 60
ENV_API_KEYS = ("GAINLOOP_TILED_API_KEY", "TILED_SINGLE_USER_API_KEY")
POSTGRES_SCHEMES = ("postgresql", "postgres", "postgresql+asyncpg")
CONNECT_TIMEOUT_S = 5.0
REDACTED = "[redacted]"
_DBNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


class CatalogServerError(GainloopError):
    """The catalog server cannot start: bad settings, PostgreSQL away, port taken."""


def mask_password(uri: str) -> str:
    """``uri`` with the password (if any) replaced by ``***``: safe to print."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def _normalise_postgres_uri(uri: str) -> str:
    """``postgresql://user[:password]@host:port/database``, or ``CatalogServerError``."""
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise CatalogServerError(f"bad PostgreSQL URI {mask_password(uri)!r}: {exc}") from None
    if parts.scheme not in POSTGRES_SCHEMES:
        raise CatalogServerError(
            f"bad PostgreSQL URI {mask_password(uri)!r}: the scheme must be postgresql:// "
            "(e.g. postgresql://postgres@127.0.0.1:5432/gainloop)"
        )
    dbname = unquote(parts.path.lstrip("/"))
    if not _DBNAME.match(dbname):
        raise CatalogServerError(
            f"bad PostgreSQL URI {mask_password(uri)!r}: name the database in the path "
            "(letters, digits, _ or -), e.g. postgresql://postgres@127.0.0.1:5432/gainloop"
        )
    return urlunsplit(parts._replace(scheme="postgresql"))


@dataclass(frozen=True)
class ServerSettings:
    """Everything the server needs. Build with ``ServerSettings.resolve(...)``.

    ``repr`` shows neither the API key nor the PostgreSQL password.
    """

    postgres_uri: str = field(repr=False)  # postgresql://..., may carry a password
    data_dir: Path
    api_key: str = field(repr=False)
    api_key_source: str  # "--api-key", "$GAINLOOP_TILED_API_KEY", ... or "generated"
    host: str = "127.0.0.1"
    port: int = 8000
    processes: int = 1
    #: tiled's streaming cache: "memory" (one process) or a Redis URI (shared by the processes)
    streaming_cache: str = field(default="memory", repr=False)  # a redis:// URI may carry a password

    @classmethod
    def resolve(
        cls,
        postgres: str | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        data_dir: str | Path | None = None,
        api_key: str | None = None,
        environ: dict[str, str] | None = None,
        api_key_envs: tuple[str, ...] = ENV_API_KEYS,
        processes: int | None = None,
        redis: str | None = None,
    ) -> ServerSettings:
        """Settings from explicit values, else the environment, else the defaults.

        ``api_key_envs``: the environment variables tried in turn for the key when ``api_key`` is None.
        ``processes``: server processes (default 1); more than one needs ``redis`` (else ``$GAINLOOP_REDIS_URI``),
        the URI of the streaming cache they share.
        """
        env = os.environ if environ is None else environ
        uri = _normalise_postgres_uri(postgres or env.get(ENV_POSTGRES_URI) or DEFAULT_POSTGRES_URI)
        if api_key is not None:
            source = "--api-key"
        else:
            name = next((n for n in api_key_envs if env.get(n)), None)
            api_key, source = (env[name], f"${name}") if name else (secrets.token_hex(32), "generated")
        if not api_key.isalnum():
            raise CatalogServerError(
                f"the API key from {source} must be letters and digits only (tiled's rule; "
                "e.g. python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        port = 8000 if port is None else port
        if not 0 <= port <= 65535:
            raise CatalogServerError(f"port {port} is out of range (0-65535; 0 picks a free one)")
        processes = 1 if processes is None else processes
        if not 1 <= processes <= MAX_PROCESSES:
            raise CatalogServerError(f"--processes {processes} is out of range (1-{MAX_PROCESSES})")
        redis = redis or env.get(ENV_REDIS_URI)
        if redis is not None and urlsplit(redis).scheme not in ("redis", "rediss"):
            raise CatalogServerError(
                f"the streaming cache {mask_password(redis)!r} is not a Redis URI (allowed: redis://HOST:PORT/DB, "
                "rediss://...)"
            )
        if processes > 1 and redis is None:
            raise CatalogServerError(
                f"--processes {processes} needs a streaming cache the processes share: --redis redis://HOST:PORT/DB "
                f"(or ${ENV_REDIS_URI}); in memory, a live subscriber (gainloop watch) would miss the writes "
                "another process served"
            )
        dbname = unquote(urlsplit(uri).path.lstrip("/"))
        folder = Path(data_dir) if data_dir is not None else gainloop_data_dir() / "server" / dbname
        return cls(
            postgres_uri=uri,
            data_dir=folder,
            api_key=api_key,
            api_key_source=source,
            host=host or "127.0.0.1",
            port=port,
            processes=processes,
            streaming_cache=redis or "memory",
        )

    @property
    def postgres_display(self) -> str:
        """The PostgreSQL URI with its password masked."""
        return mask_password(self.postgres_uri)

    @property
    def catalog_uri(self) -> str:
        """The SQLAlchemy URI of the catalog database (asyncpg driver)."""
        return "postgresql+asyncpg" + self.postgres_uri[len("postgresql") :]

    @property
    def tabular_uri(self) -> str:
        """Writable tabular storage (event tables): the same database, over ADBC."""
        return self.postgres_uri

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "data"

    @property
    def streaming_display(self) -> str:
        """Where the streaming cache is: "memory", or the Redis URI with its password masked."""
        return mask_password(self.streaming_cache) if self.streaming_cache != "memory" else "memory"

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every secret that must never reach a log."""
        passwords = [urlsplit(u).password for u in (self.postgres_uri, self.streaming_cache) if "://" in u]
        return tuple(dict.fromkeys(s for s in (self.api_key, *passwords, *(p and unquote(p) for p in passwords)) if s))


def _reason(settings: ServerSettings, exc: BaseException) -> str:
    """The exception's message, on one line, with the secrets redacted."""
    reason = " ".join((str(exc) or type(exc).__name__).split())
    for s in settings.secret_values:
        reason = reason.replace(s, REDACTED)
    return reason


def _unreachable(settings: ServerSettings, exc: BaseException) -> CatalogServerError:
    return CatalogServerError(
        f"cannot reach PostgreSQL at {settings.postgres_display} ({_reason(settings, exc)}): "
        "start it or pass --postgres URI"
    )


def ensure_database(settings: ServerSettings) -> bool:
    """Create the PostgreSQL database if it does not exist; True if it was created."""
    import asyncpg

    dbname = unquote(urlsplit(settings.postgres_uri).path.lstrip("/"))
    maintenance = urlunsplit(urlsplit(settings.postgres_uri)._replace(path="/postgres"))

    async def connect(uri):
        return await asyncpg.connect(uri, timeout=CONNECT_TIMEOUT_S)

    async def run() -> bool:
        try:
            conn = await connect(settings.postgres_uri)
        except asyncpg.InvalidCatalogNameError:
            conn = await connect(maintenance)
            try:
                await conn.execute(f'CREATE DATABASE "{dbname}"')
            except asyncpg.DuplicateDatabaseError:  # created meanwhile by someone else
                return False
            finally:
                await conn.close()
            return True
        await conn.close()
        return False

    try:
        return asyncio.run(run())
    except (TimeoutError, OSError) as exc:
        raise _unreachable(settings, exc) from None
    except asyncpg.PostgresError as exc:
        raise CatalogServerError(
            f"PostgreSQL at {settings.postgres_display} refused: {_reason(settings, exc)}. Check the user, "
            "password and database in --postgres (the user must be allowed to create the database if it is new)."
        ) from None


def init_catalog(settings: ServerSettings) -> bool:
    """Initialise tiled's catalog tables in the database if it is new; True if it was.

    The same steps as ``tiled catalog init --if-not-exists``, in-process (so the
    password never appears on a command line).
    """
    import asyncpg
    from sqlalchemy.exc import SQLAlchemyError
    from tiled.alembic_utils import DatabaseUpgradeNeeded

    from gainloop.embedded import init_catalog_database

    try:
        return init_catalog_database(settings.catalog_uri)
    except DatabaseUpgradeNeeded:
        raise CatalogServerError(
            f"the catalog in {settings.postgres_display} was made by an older tiled: back it up, then run "
            "`tiled catalog upgrade-database URI`"
        ) from None
    except (TimeoutError, OSError) as exc:
        raise _unreachable(settings, exc) from None
    except (SQLAlchemyError, asyncpg.PostgresError) as exc:
        raise CatalogServerError(
            f"cannot initialise the catalog in {settings.postgres_display}: {_reason(settings, exc)}"
        ) from None


def build_app(settings: ServerSettings):
    """The Tiled ASGI app: the PostgreSQL catalog, writable, API key required for everything."""
    from tiled.catalog import from_uri as catalog_from_uri
    from tiled.config import Authentication, StreamingCacheConfig
    from tiled.server.app import build_app as tiled_build_app

    from gainloop.embedded import cache_request_dependants

    cache_request_dependants()  # (opt-in) FastAPI's per-request rebuild of every dependency (see there)
    try:
        settings.files_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CatalogServerError(f"cannot create the data folder {settings.files_dir}: {exc}") from None
    tree = catalog_from_uri(
        settings.catalog_uri,
        writable_storage=[settings.files_dir, settings.tabular_uri],
        init_if_not_exists=False,  # done by init_catalog, without a subprocess
        cache_config=StreamingCacheConfig(uri=settings.streaming_cache).model_dump(),
    )
    return tiled_build_app(
        tree,
        authentication=Authentication(single_user_api_key=settings.api_key, allow_anonymous_access=False),
    )


class _RedactingFormatter(logging.Formatter):
    """Wraps a handler's formatter: removes secrets and ``api_key=...`` values from the text."""

    _QUERY_KEY = re.compile(r"(api_key=)[^&\s\"']+", re.IGNORECASE)

    def __init__(self, inner: logging.Formatter | None, secrets_: tuple[str, ...]):
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.secrets = secrets_

    def format(self, record: logging.LogRecord) -> str:
        text = self._QUERY_KEY.sub(r"\1" + REDACTED, self.inner.format(record))
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        return text


def _redact_logs(secrets_: tuple[str, ...]) -> None:
    """Make every configured log handler redact the secrets (after uvicorn set up logging)."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    handlers = {h for lg in loggers for h in lg.handlers}
    if logging.lastResort is not None:
        handlers.add(logging.lastResort)
    for h in handlers:
        if not isinstance(h.formatter, _RedactingFormatter):
            h.setFormatter(_RedactingFormatter(h.formatter, secrets_))


def _log_config() -> dict:
    import copy

    from tiled.server.logging_config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for formatter in config["formatters"].values():
        formatter["use_colors"] = None  # colours on a terminal only, not in captured logs
    return config


def _bind(settings: ServerSettings) -> socket.socket:
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CatalogServerError(f"cannot bind {settings.host}:{settings.port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError as exc:
        sock.close()
        raise CatalogServerError(
            f"cannot bind {settings.host}:{settings.port}: {exc.strerror or exc} (is another server there? pass --port)"
        ) from None
    return sock


def startup_line(settings: ServerSettings, url: str) -> str:
    """The one line printed at start-up; it shows the API key only if it was generated."""
    key = (
        f"API key (generated, shown only now): {settings.api_key}"
        if settings.api_key_source == "generated"
        else f"API key from {settings.api_key_source}"
    )
    processes = (
        f", {settings.processes} processes (streaming cache: Redis at {settings.streaming_display})"
        if settings.processes > 1
        else ""
    )
    return (
        f"gainloop catalog: Tiled server at {url} on {settings.postgres_display}, files in {settings.files_dir}"
        f"{processes}; {key}"
    )


def check_redis(settings: ServerSettings) -> None:
    """Fail with one clear line if the streaming cache's Redis does not answer (before any process starts)."""
    if settings.streaming_cache == "memory":
        return
    import redis

    try:
        client = redis.Redis.from_url(settings.streaming_cache, socket_connect_timeout=CONNECT_TIMEOUT_S)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise CatalogServerError(
            f"the streaming cache's Redis at {settings.streaming_display} did not answer "
            f"({_reason(settings, exc)}); start it or pass another --redis"
        ) from None


def _exit_with_supervisor(parent_pid: int, period_s: float = PARENT_CHECK_S) -> None:
    """In a server process of ``--processes N``: stop this process (SIGTERM: uvicorn's graceful shutdown) once
    its supervisor is gone, whatever ended it (a SIGKILL leaves no one to tell the processes)."""
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(period_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gainloop-supervisor-watch", daemon=True).start()


def server_process_app(settings: ServerSettings, parent_pid: int):
    """The app of one server process of ``--processes N`` (uvicorn calls it in the process, after its logging
    is set up): the logs redacted as in one process, and the process ends with its supervisor."""
    logging.captureWarnings(True)
    _redact_logs(settings.secret_values)
    _exit_with_supervisor(parent_pid)
    return build_app(settings)


def serve(settings: ServerSettings, *, out=None) -> None:
    """Create/initialise the database, start the server and block until it is stopped (Ctrl-C / SIGTERM).

    With ``settings.processes`` > 1: uvicorn's supervisor in this process, that many server processes on
    the one socket (spawned: each builds its own app), restarted if one dies, all stopped with it."""
    import functools

    import uvicorn

    out = out or sys.stdout
    check_redis(settings)
    ensure_database(settings)
    init_catalog(settings)
    sock = _bind(settings)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    logging.captureWarnings(True)  # warnings go through the (redacting) log handlers too
    try:
        if settings.processes == 1:
            app = build_app(settings)
            config = uvicorn.Config(app, log_config=_log_config(), loop="asyncio", lifespan="on")
            _redact_logs(settings.secret_values)
            print(startup_line(settings, url), file=out, flush=True)
            uvicorn.Server(config).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            config = uvicorn.Config(
                functools.partial(server_process_app, settings, os.getpid()),
                factory=True,
                workers=settings.processes,
                timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S,
                log_config=_log_config(),
                loop="asyncio",
                lifespan="on",
            )
            _redact_logs(settings.secret_values)
            print(startup_line(settings, url), file=out, flush=True)
            Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
