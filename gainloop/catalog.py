"""The catalog: where every document goes (databroker / Tiled, never a home-made store).

* Embedded default: a local Tiled catalog (SQLite + files) in the data folder,
  served in-process by tiled's ``SimpleTiledServer`` on 127.0.0.1 (no server to
  start by hand). The data folder is ``--data-dir``, else ``$GAINLOOP_DATA_DIR``,
  else the platform's user data directory for gainloop.
* At scale: ``--catalog URI`` of a Tiled server (e.g. on PostgreSQL) with an API key
  (``--api-key`` or ``$TILED_API_KEY``).

Writing goes through bluesky's ``TiledWriter`` with its backup directory on (in the
data folder), so documents are kept on disk when the server is away. Reading goes
through the Tiled client's BlueskyRun.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import platformdirs

from gainloop.errors import GainloopError

__all__ = ["Catalog", "CatalogError", "RunNotFoundError", "data_dir"]

ENV_DATA_DIR = "GAINLOOP_DATA_DIR"

_SECRET_IN_URI = re.compile(r"(api_key=)[^&\s\"']+|(//[^/:@\s]+:)[^@/\s]+(@)", re.IGNORECASE)


def _masked(text: str, api_key: str | None = None) -> str:
    """``text`` with API keys (``api_key=...``, the key itself) and URI passwords replaced by ``***``."""
    out = _SECRET_IN_URI.sub(lambda m: f"{m.group(1)}***" if m.group(1) else f"{m.group(2)}***{m.group(3)}", text)
    return out.replace(api_key, "***") if api_key else out


class CatalogError(GainloopError):
    """The catalog cannot be opened or reached."""


class RunNotFoundError(CatalogError, KeyError):
    """No run with that uid in the catalog."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"


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


class Catalog:
    """An open catalog (embedded or remote) with its writer's backup directory.

    Use as a context manager; the embedded server stops on exit.
    """

    def __init__(self, uri: str | None = None, *, data_dir_path: str | Path | None = None, api_key: str | None = None):
        self.data_dir = data_dir(data_dir_path)
        self.backup_dir = self.data_dir / "backup"
        self.backup_dir.mkdir(exist_ok=True)
        self.uri = uri
        self._server = None
        if uri is None:
            from tiled.server import SimpleTiledServer

            self.location = str(self.data_dir / "catalog")
            self._server = SimpleTiledServer(directory=self.location)
            self.client = self._connect(self._server.uri, None)
        else:
            self.location = _masked(uri)
            self.client = self._connect(uri, api_key or os.environ.get("TILED_API_KEY"))

    @staticmethod
    def _connect(uri: str, api_key: str | None, timeout_s: float = 5.0):
        import httpx
        from tiled.client import from_uri

        try:  # fail fast (the client itself retries for tens of seconds)
            httpx.get(uri, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise CatalogError(
                _masked(
                    f"cannot reach the catalog at {uri}: {exc}. "
                    "Start the Tiled server at that address, or check the URI.",
                    api_key,
                )
            ) from None
        try:
            return from_uri(uri, api_key=api_key) if api_key else from_uri(uri)
        except Exception as exc:  # httpx connection errors, auth errors, bad URIs
            raise CatalogError(
                _masked(
                    f"cannot reach the catalog at {uri}: {exc}. Start the Tiled server "
                    "at that address, or check the URI and API key.",
                    api_key,
                )
            ) from None

    def writer(self, batch_size: int | None = None):
        """A ``TiledWriter`` into this catalog, backing documents up on disk when the server is away.

        ``batch_size=1`` writes every event as it comes (a campaign's record, so that a
        killed process loses nothing already decided); the default batches event rows.
        """
        from bluesky_tiled_plugins import TiledWriter

        kwargs = {} if batch_size is None else {"batch_size": batch_size}
        return TiledWriter(self.client, backup_directory=str(self.backup_dir), **kwargs)

    def campaign_writer(self):
        """Writers per run: a campaign's record run event by event (a process killed mid-campaign
        loses nothing already decided), measurement runs in batches (complete at their stop document)."""
        from event_model import RunRouter

        every_event = self.writer(batch_size=1)
        batched = self.writer()

        def factory(name, start):
            return [every_event if start.get("plan_name") == "campaign" else batched], []

        return RunRouter([factory])

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
