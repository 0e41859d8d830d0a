"""The ``gainloop`` command line: one app, its commands and groups registered from their modules.

* ``sweep`` (``gainloop.cli_sweep``): many offline campaigns on the twin, on a Dask cluster;
* ``measure``, ``replay``, ``plans`` (``gainloop.cli_measure``): one measurement plan, a stored run;
* ``demo``, ``report``, ``campaign run|resume|status`` (``gainloop.cli_campaign``): campaigns;
* ``watch`` (``gainloop.cli_watch``): a live page in the browser following a campaign;
* ``twin reproduce|predict|optimum|serve`` (``gainloop.cli_twin``): the digital twin;
* ``catalog serve|upload-backup`` (``gainloop.cli_catalog``): the catalog at scale;
* ``qserver start|reconcile`` (``gainloop.cli_qserver``): plans from bluesky-queueserver.

What they share (the config file, the catalog, one-line errors) is ``gainloop.cli_common``.
"""

from __future__ import annotations

import atexit

import typer

from gainloop.cli_campaign import campaign_app, demo, report_cmd
from gainloop.cli_catalog import catalog_app
from gainloop.cli_common import end_without_teardown, process_ends_with_command, set_exit_status
from gainloop.cli_measure import list_plans, measure, replay_cmd
from gainloop.cli_qserver import qserver_app
from gainloop.cli_runs import runs
from gainloop.cli_sweep import sweep
from gainloop.cli_twin import twin_app
from gainloop.cli_watch import watch

__all__ = ["app", "main"]

app = typer.Typer(
    help="gainloop: closed-loop optimisation and digital twin for CQD infrared lasers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
# `gainloop --help` lists the commands in this order, then the groups in theirs
app.command("sweep")(sweep)
app.command("measure")(measure)
app.command("replay")(replay_cmd)
app.command("runs")(runs)
app.command("plans")(list_plans)
app.command("demo")(demo)
app.command("report")(report_cmd)
app.command("watch")(watch)
app.add_typer(twin_app, name="twin")
app.add_typer(catalog_app, name="catalog")
app.add_typer(qserver_app, name="qserver")
app.add_typer(campaign_app, name="campaign")


def main() -> None:
    """Console-script entry point: the command; the process then ends without the interpreter's teardown
    (``cli_common.end_without_teardown``, registered first so that it runs after every other exit handler)."""
    atexit.register(end_without_teardown)
    process_ends_with_command()
    try:
        app()
    except SystemExit as exc:  # typer ends every command (success, error, --help) with SystemExit
        code = exc.code
        set_exit_status(0 if code is None else code if isinstance(code, int) else 1)
        raise
    except KeyboardInterrupt:
        set_exit_status(130)
        raise
    set_exit_status(0)


if __name__ == "__main__":  # pragma: no cover
    main()
