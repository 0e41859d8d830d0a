"""Which runs the catalog holds: ``gainloop runs`` and ``list_runs`` (newest first, filtered).

The catalog is Tiled with bluesky-tiled-plugins' ``BlueskyRun`` nodes (what databroker 2
became); every filter is a standard Tiled query on the run's start or stop document, so it
works the same on the embedded catalog (SQLite) and on a Tiled server (PostgreSQL):

* ``since`` / ``until``: the run's start time (``start.time``, Unix seconds), given as a
  date or date-time string (``2026-12-01``, ``2026-12-01 14:30``, ...; read in ``timezone``,
  default the machine's) or as Unix seconds; parsed by bluesky-tiled-plugins' ``TimeRange``
  (the query databroker's ``TimeRange`` is); ``since`` is inclusive, ``until`` exclusive;
* ``plan``: ``start.plan_name`` exactly; ``sample``: ``start.sample_id`` exactly;
* ``uid``: the start of ``start.uid`` (at least 4 hexadecimal digits);
* ``status``: ``stop.exit_status`` ("success", "abort" or "fail").

A run without a stop document (still being written, or cut off) is listed with the
exit status ``"incomplete"``.

For scientists used to databroker: ``bluesky_runs(catalog)`` is the catalog as
bluesky-tiled-plugins' ``CatalogOfBlueskyRuns`` (``runs[-1]``, ``runs["054128ee"]``,
``runs.search(TimeRange(since="2026-12-01"))`` with databroker's query types), and
``broker(catalog)`` its databroker-1 view (``db = broker(cat); db[-1].table()``,
``db(plan_name="vsl_scan", since="2026-12-01")``; what of it works: README, "databroker and
this catalog").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import GainloopError
from core.rows import Row

__all__ = ["EXIT_STATUSES", "RunQueryError", "RunSummary", "bluesky_runs", "broker", "list_runs"]

#: The exit statuses bluesky writes into a stop document.
EXIT_STATUSES = ("success", "abort", "fail")
INCOMPLETE = "incomplete"  # listed for a run without a stop document
DEFAULT_LIMIT = 50


class RunQueryError(GainloopError):
    """A filter of ``list_runs`` that cannot be used (the message says what is allowed)."""


@dataclass(frozen=True)
class RunSummary(Row):
    """One run as ``gainloop runs`` lists it."""

    uid: str
    time_unix_s: float  # the start document's time (Unix seconds, UTC)
    time: str  # the same, as "YYYY-MM-DD HH:MM:SS" in the listing's time zone
    plan: str | None
    sample: str | None
    scan_id: int | None
    exit_status: str  # the stop document's ("success", "abort", "fail"), else "incomplete"


def _zone(timezone: str | None) -> str:
    if timezone is None:
        import tzlocal

        return tzlocal.get_localzone_name() or "UTC"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise RunQueryError(
            f"unknown time zone {timezone!r}: give an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None
    return timezone


def _time_bounds(since, until, zone: str) -> tuple[float | None, float | None]:
    """``(since, until)`` in Unix seconds (either may be None), read in the time zone ``zone``."""
    from bluesky_tiled_plugins.queries import TimeRange

    try:
        bounds = TimeRange(since=since, until=until, timezone=zone)
    except ValueError as exc:
        raise RunQueryError(
            f"bad time range (since={since!r}, until={until!r}): {exc}; give dates as YYYY, YYYY-MM, "
            "YYYY-MM-DD, 'YYYY-MM-DD HH', 'YYYY-MM-DD HH:MM' or 'YYYY-MM-DD HH:MM:SS' (or Unix seconds), "
            "with since before until"
        ) from None
    return bounds.since, bounds.until


def list_runs(
    catalog,
    *,
    since: str | float | None = None,
    until: str | float | None = None,
    plan: str | None = None,
    sample: str | None = None,
    uid: str | None = None,
    status: str | None = None,
    limit: int = DEFAULT_LIMIT,
    timezone: str | None = None,
) -> list[RunSummary]:
    """The newest ``limit`` runs of ``catalog`` (a ``gainloop.catalog.Catalog``) that pass every filter
    given (see the module doc), newest first.

    ``RunQueryError`` for a filter that cannot be used (a time that does not parse, ``since`` after
    ``until``, a uid prefix that is not hexadecimal, an unknown exit status or time zone, ``limit`` < 1).
    """
    from tiled.queries import Comparison, Key, Like

    if limit < 1:
        raise RunQueryError(f"limit must be at least 1, got {limit}")
    zone = _zone(timezone)
    t_since, t_until = _time_bounds(since, until, zone)
    results = catalog.client
    if t_since is not None:
        results = results.search(Comparison("ge", "start.time", t_since))
    if t_until is not None:
        results = results.search(Comparison("lt", "start.time", t_until))
    if plan is not None:
        results = results.search(Key("start.plan_name") == plan)
    if sample is not None:
        results = results.search(Key("start.sample_id") == sample)
    if uid is not None:
        prefix = uid.strip().lower()
        if not re.fullmatch(r"[0-9a-f][0-9a-f-]{3,35}", prefix):
            raise RunQueryError(
                f"bad uid {uid!r}: give the start of a run's uid, at least 4 hexadecimal digits (e.g. the 8 "
                "characters `gainloop runs` prints)"
            )
        results = results.search(Like("start.uid", f"{prefix}%"))
    if status is not None:
        if status not in (*EXIT_STATUSES, INCOMPLETE):
            allowed = ", ".join(repr(s) for s in (*EXIT_STATUSES, INCOMPLETE))
            raise RunQueryError(f"unknown exit status {status!r}: give one of {allowed}")
        if status == INCOMPLETE:
            from tiled.queries import KeyPresent

            results = results.search(KeyPresent("stop", False))
        else:
            results = results.search(Key("stop.exit_status") == status)
    newest_first = results.sort(("start.time", -1))
    tz = ZoneInfo(zone)
    out = []
    for node in newest_first.values().head(limit):
        start = node.metadata.get("start") or {}
        if "uid" not in start:
            continue  # not a bluesky run
        stop = node.metadata.get("stop") or {}
        t = float(start.get("time", 0.0))
        out.append(
            RunSummary(
                uid=start["uid"],
                time_unix_s=t,
                time=datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S"),
                plan=start.get("plan_name"),
                sample=start.get("sample_id"),
                scan_id=start.get("scan_id"),
                exit_status=stop.get("exit_status") or INCOMPLETE,
            )
        )
    return out


def bluesky_runs(catalog):
    """``catalog`` (a ``gainloop.catalog.Catalog``) as bluesky-tiled-plugins' ``CatalogOfBlueskyRuns``.

    ``Catalog.client`` is a plain Tiled container (the root node of the embedded catalog and of
    ``gainloop catalog serve`` declares no ``CatalogOfBlueskyRuns`` spec), on which databroker's
    query types (``TimeRange``, ``PartialUID``, ``ScanID``, ``ScanIDRange``) are silently not
    applied (a Tiled server; the embedded one when they are imported after it started) or refused
    (HTTP 400). This view turns them into standard Tiled queries, and
    is told that the catalog is SQL-backed (both of gainloop's are: SQLite embedded,
    PostgreSQL served; runs written by ``TiledWriter``), so that a uid prefix is a ``LIKE`` query.
    """
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns

    class SqlCatalogOfBlueskyRuns(CatalogOfBlueskyRuns):
        is_sql = True  # (upstream: read from the root node's spec, which these catalogs do not declare)

    from tiled.utils import OneShotCachedMap

    client = catalog.client
    # A map of its own: the view's ``v1``/``v2`` switch does ``copy.copy(structure_clients).set(...)``,
    # and a shallow copy of Tiled's OneShotCachedMap shares its dict: on the catalog's own map that
    # would turn every later run of the process into a databroker-1 client (and break replay).
    own = OneShotCachedMap()
    for name in client.structure_clients:
        own.set(name, lambda name=name: client.structure_clients[name])
    return SqlCatalogOfBlueskyRuns(client.context, item=client.item, structure_clients=own)


def broker(catalog):
    """The databroker-1 view (``databroker.v1.Broker``) of ``catalog`` (a ``gainloop.catalog.Catalog``).

    ``db[-1]``, ``db["054128ee"]`` (a uid prefix, 5+ characters), ``db(since=..., until=...,
    plan_name=..., sample_id=...)`` give ``Header`` objects with ``.start``, ``.stop``,
    ``.table(stream_name)`` (a pandas DataFrame) and ``.stream_names``. Not available on these
    catalogs: ``Header.documents()`` / ``db.get_documents`` (the server does not offer the
    ``application/json-seq`` format they ask for: HTTP 406) and ``Broker.from_config`` (removed in
    databroker 2); re-streaming a run's documents is ``gainloop replay``.
    """
    from databroker.v1 import Broker

    return Broker(bluesky_runs(catalog))
