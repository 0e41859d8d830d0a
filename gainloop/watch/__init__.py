"""``gainloop watch``: a live page in the browser following a campaign as it runs (or after it ended).

``serve(catalog, campaign_uid, ...)`` reads the campaign with the one reader (``gainloop.records``),
follows it (``follow.Follower``: the catalog's subscription, else a bounded poll), and serves the
page (``app``: Starlette on uvicorn, 127.0.0.1 by default) until Ctrl+C or SIGTERM. What the page
shows is ``view``; the queueserver controls are ``control``.

* ``view``: the campaign's data for the page (JSON), the posterior map (PNG, the report's code);
* ``follow``: when to read the campaign again, and the page's waiting requests;
* ``control``: pause / resume / stop through the queueserver's API, only where safe;
* ``app``: the routes, the API key and the other security rules.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

from core.errors import GainloopError

__all__ = ["WatchError", "is_loopback", "latest_campaign_uid", "serve"]


class WatchError(GainloopError):
    """The watch cannot start (the message says what to change)."""


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise WatchError(f"--host {host!r} names no interface: {exc}") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def latest_campaign_uid(catalog) -> str:
    """The uid of the campaign whose first record run started last (``WatchError`` if the catalog has none)."""
    from gainloop.records import search_runs

    runs = search_runs(catalog, plan_name="campaign")
    if not runs:
        raise WatchError(f"no campaign in the catalog at {catalog.location}: start one (gainloop campaign run)")
    first: dict[str, float] = {}
    for r in runs:
        uid = str(r.start.get("campaign_uid", ""))
        if uid:
            first.setdefault(uid, float(r.start["time"]))
    return max(first, key=first.get)


def serve(
    catalog,
    campaign_uid: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    api_key: str | None = None,
    qserver_addr: str | None = None,
    announce: Callable[[str], None] = print,
    subscribe: bool = True,
) -> None:
    """Serve the page following ``campaign_uid`` on ``host:port`` until stopped (Ctrl+C, SIGTERM).

    ``api_key``: the key a Tiled server's catalog was opened with (None for the embedded one); required of every
    request when given, and a host other than loopback is refused without one. ``qserver_addr``: the
    RE Manager's control address (``tcp://127.0.0.1:60615``) for the controls of a campaign that runs
    in the queueserver. ``announce``: called once with the page's address (no key in it) when it listens.
    The posterior map is fitted in a spawned process: from a script, call this under
    ``if __name__ == "__main__":`` (as for any ``multiprocessing`` spawn).
    """
    import uvicorn

    from gainloop.watch.app import build_app
    from gainloop.watch.control import QueueControl
    from gainloop.watch.follow import Follower

    loopback = is_loopback(host)
    if not loopback and api_key is None:
        raise WatchError(
            f"serving on {host} (not loopback) needs an API key: watch a Tiled server's catalog with its key "
            "(--catalog URI, $TILED_API_KEY), or leave --host out (127.0.0.1)"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # listen before the address is announced: a client that connects while uvicorn starts
        # waits in the backlog instead of being refused
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise WatchError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port") from None
    control = QueueControl(qserver_addr, keyed=api_key is not None) if qserver_addr else None
    follower = Follower(catalog, campaign_uid, control=control, subscribe=subscribe)
    try:
        follower.start()
        app = build_app(follower, api_key=api_key, loopback=loopback, control=control)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=1, ws="none"
        )
        server = uvicorn.Server(config)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        announce(
            f"gainloop watch: http://{shown}:{bound}/ follows campaign {campaign_uid}; "
            + ("sign in with the catalog's API key; " if api_key else "")
            + "Ctrl+C stops"
        )
        server.run(sockets=[sock])
    finally:
        follower.close()
        if control is not None:
            control.close()
        sock.close()
