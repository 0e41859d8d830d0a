"""``gainloop watch``: a live page in the browser following a campaign (``gainloop.watch``).

Errors (no such campaign, a port in use, a catalog away) are one line ``error: ...`` on stderr,
exit status 2. Ctrl+C or SIGTERM stop the server (exit status 0).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from gainloop.cli_common import HostOption, opened_catalog, pick, reads_catalog, with_help

__all__ = ["watch"]

WatchHostOption = with_help(HostOption, "Interface to serve the page on (default 127.0.0.1 only).")


@reads_catalog
def watch(
    campaign_uid: Annotated[
        str | None, typer.Argument(help="uid of the campaign (or an unambiguous start of it).", show_default=False)
    ] = None,
    latest: Annotated[bool, typer.Option("--latest", help="Follow the campaign started last.")] = False,
    host: WatchHostOption = None,
    port: Annotated[int, typer.Option("--port", help="Port of the page (0: a free one, printed).")] = 8765,
    qserver: Annotated[
        str | None,
        typer.Option(
            "--qserver",
            help="Control address of the RE Manager running the campaign (default: tcp://127.0.0.1:<[qserver] "
            "control_port>, 60615); used only for a campaign that runs in the queueserver.",
            show_default=False,
        ),
    ] = None,
    **catalog_args,
) -> None:
    """Serve a live page of a campaign: best threshold vs lab time, the posterior map with the next proposal,
    the latest fluence scan, the budget, films and failures; pause/resume/stop a queueserver campaign."""
    from gainloop.cli_common import catalog_target, command_errors, fail, load_config
    from gainloop.watch import WatchError, latest_campaign_uid, serve

    if campaign_uid is None and not latest:
        fail(WatchError("give a CAMPAIGN_UID or --latest"))
    if campaign_uid is not None and latest:
        fail(WatchError("give a CAMPAIGN_UID or --latest, not both"))
    if not 0 <= port <= 65535:
        fail(WatchError(f"--port {port} is not a port; allowed: 0 (a free one) to 65535"))
    with command_errors():
        conf = load_config(catalog_args.get("config"))
    given = {k: catalog_args.get(k) for k in ("catalog", "data_dir", "api_key")}
    uri, _, key = catalog_target(conf, given["catalog"], given["data_dir"], given["api_key"])
    with opened_catalog(**catalog_args, conf=conf) as cat:
        uid = (
            latest_campaign_uid(cat)
            if latest
            else cat.resolve_uid(campaign_uid, key="campaign_uid", what="campaign", where={"plan_name": "campaign"})
        )

        def announce(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        serve(
            cat,
            uid,
            host=pick(host, "127.0.0.1"),
            port=port,
            # the key a Tiled server is read with is the key the page asks for (the embedded catalog has none)
            api_key=(key or os.environ.get("TILED_API_KEY") or None) if uri is not None else None,
            qserver_addr=pick(qserver, f"tcp://127.0.0.1:{conf.qserver.control_port}"),
            announce=announce,
        )
