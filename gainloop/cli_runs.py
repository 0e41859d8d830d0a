"""``gainloop runs``: the runs in the catalog, newest first (filters: ``gainloop.runs``).

Registered in the CLI as ``app.command("runs")(runs)``. A bad filter or an unreachable
catalog is one line ``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gainloop.cli_common import JsonOption, opened_catalog, print_table, reads_catalog
from gainloop.runs import DEFAULT_LIMIT, list_runs

__all__ = ["runs"]


@reads_catalog
def runs(
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Runs started at or after this time: 2026-12-01, '2026-12-01 14:30' (in --timezone)."
        ),
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="Runs started before this time (same forms).")] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="Only runs of this plan (e.g. ase_fluence_scan).")] = None,
    sample: Annotated[str | None, typer.Option("--sample", help="Only runs on this sample id.")] = None,
    uid: Annotated[str | None, typer.Option("--uid", help="Only runs whose uid starts so (4+ hex digits).")] = None,
    status: Annotated[
        str | None, typer.Option("--status", help="Only runs with this exit status: success, abort, fail, incomplete.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many runs, the newest.")] = DEFAULT_LIMIT,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="IANA time zone of --since/--until and of the listed times (default: local)."),
    ] = None,
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """List the catalog's runs, newest first: uid prefix, start time, plan, sample, exit status."""
    with opened_catalog(**catalog_args) as cat:
        found = list_runs(
            cat,
            since=since,
            until=until,
            plan=plan,
            sample=sample,
            uid=uid,
            status=status,
            limit=limit,
            timezone=timezone,
        )
        where = str(cat.location)
    if json_out:
        typer.echo(json.dumps({"catalog": where, "runs": [r.as_dict() for r in found]}))
        return
    console = Console()
    if not found:
        console.print(f"no runs match in the catalog at {where}", highlight=False)
        return
    table = Table(title=f"{len(found)} run(s), newest first: {where}", title_justify="left")
    for column in ("uid", "start time", "plan", "sample", "scan", "exit status"):
        table.add_column(column, no_wrap=column in ("uid", "start time"))
    for r in found:
        table.add_row(
            r.uid[:8],
            r.time,
            r.plan or "-",
            r.sample or "-",
            "-" if r.scan_id is None else str(r.scan_id),
            r.exit_status,
        )
    print_table(console, table)
