"""``gainloop sweep``: many offline campaigns on the twin, on a Dask cluster, into the catalog.

Errors in the input (an unknown strategy, bad seeds, a bad presets file, a scheduler
that does not answer) are printed as one line ``error: ...`` on stderr with exit
status 2, before anything runs. A campaign that fails is a row of the summary with its
reason, and the command then exits with status 1.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.errors import GainloopError
from gainloop.cli_common import (
    BudgetHoursOption,
    HostOption,
    JsonOption,
    MaxTrialsOption,
    TargetOption,
    catalog_target,
    check_budget_hours,
    command_errors,
    load_config,
    opened_catalog,
    pick,
    print_json,
    print_table,
    reads_catalog,
    with_help,
)

__all__ = ["sweep"]

_console = Console(width=None if sys.stdout.isatty() else 160)  # a table piped to a file keeps its columns
_err = Console(stderr=True, soft_wrap=True)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def _print_table(result: dict, rows: list[dict]) -> None:
    table = Table(title=f"Sweep: {_n(len(rows), 'campaign')} on the twin")
    columns = [
        ("strategy", "left"),
        ("seed", "right"),
        ("presets", "left"),
        ("best threshold uJ/cm^2", "right"),
        ("stripe um", "right"),
        ("doping", "right"),
        ("lab h", "right"),
        ("trials", "right"),
        ("failed", "right"),
        ("campaign_uid", "left"),
    ]
    if any(r["error"] for r in rows):
        columns.append(("error", "left"))
    for name, justify in columns:
        table.add_column(name, justify=justify, no_wrap=name == "campaign_uid")
    for r in rows:
        best = (
            f"{_fmt(r['threshold_uJ_cm2'], '.1f')} ± {_fmt(r['threshold_err_uJ_cm2'], '.1f')}"
            if r["threshold_uJ_cm2"] is not None
            else "-"
        )
        cells = [
            r["strategy"],
            str(r["seed"]),
            Path(r["presets"]).name if r["presets"] != "shipped" else "shipped",
            best,
            _fmt(r["stripe_length_um"], ".0f"),
            _fmt(r["doping"], ".2f"),
            _fmt(r["lab_hours"], ".2f"),
            _fmt(r["trials"], "d"),
            _fmt(r["failures"], "d"),
            r["campaign_uid"] or "-",
        ]
        if len(columns) > len(cells):
            cells.append(escape(r["error"] or ""))
        table.add_row(*cells)
    print_table(_console, table)
    _console.print(
        f"{_n(len(rows), 'campaign')} on {_n(result['workers'], 'Dask worker')} ({result['scheduler']}) in "
        f"{result['wall_s']:.1f} s; catalog: {result['catalog']}"
    )


EachMaxTrialsOption = with_help(MaxTrialsOption, "Trial budget of each campaign.")
EachBudgetHoursOption = with_help(BudgetHoursOption, "Lab-time budget of each campaign, hours (default: 24).")
EachTargetOption = with_help(TargetOption, "Stop a campaign at a threshold at or below this, uJ/cm^2.")
ClusterHostOption = with_help(HostOption, "Interface the LocalCluster binds (default 127.0.0.1 only).")


@reads_catalog
def sweep(
    strategies: Annotated[
        list[str] | None,
        typer.Option(
            "--strategies",
            help="Strategies, comma-separated or repeated: nested, random, grid (or [sweep] strategies).",
        ),
    ] = None,
    seeds: Annotated[
        list[str] | None,
        typer.Option(
            "--seeds", help="Optimiser seeds (each also the twin's noise seed): e.g. 0,1,2 or 0-9 (or [sweep] seeds)."
        ),
    ] = None,
    presets: Annotated[
        list[str] | None,
        typer.Option(
            "--presets", help="Presets TOML files of the twin, comma-separated or repeated (default: shipped)."
        ),
    ] = None,
    max_trials: EachMaxTrialsOption = None,
    budget_hours: EachBudgetHoursOption = None,
    target: EachTargetOption = None,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Address of an existing Dask scheduler (default: start a LocalCluster)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Worker processes of the LocalCluster (default: the cores).")
    ] = None,
    host: ClusterHostOption = None,
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Many offline campaigns (strategies x seeds x presets) on the twin, on a Dask cluster, into the catalog.

    Strategies, seeds, presets and the cluster can come from the config file's [sweep] table,
    budgets and limits from its other tables; options on the command line win.
    """
    import os

    from gainloop.sweep import collect_sweep, dask_client, parse_seeds, parse_strategies, submit_sweep, sweep_tasks

    with command_errors():
        if scheduler is not None and (workers is not None or host is not None):
            raise GainloopError("--workers and --host set up a LocalCluster; leave them out with --scheduler")
        check_budget_hours(budget_hours)
        if max_trials is not None and max_trials < 1:
            raise GainloopError(f"--max-trials must be at least 1, got {max_trials}")
        conf = load_config(catalog_args["config"])
        sw = conf.sweep
        if scheduler is None and workers is None and host is None:
            scheduler = sw.scheduler  # the file's cluster, unless the command line sets one up
        if scheduler is None:
            workers, host = pick(workers, sw.workers), pick(host, sw.host)
        if strategies is None and sw.strategies is None:
            raise GainloopError("no strategy given: pass --strategies (e.g. nested,random) or set [sweep] strategies")
        if seeds is None and sw.seeds is None:
            raise GainloopError("no seed given: pass --seeds (e.g. 0-9) or set [sweep] seeds")
        presets_given = [p.strip() for value in presets or [] for p in value.split(",") if p.strip()]
        tasks = sweep_tasks(
            parse_strategies(pick(strategies, sw.strategies)),
            parse_seeds(pick(seeds, sw.seeds)),  # a list of ints or a string like "0-9"
            presets_given or [str(p) for p in sw.presets or []] or None,
            base_config=conf,
            overrides={"max_trials": max_trials, "budget_lab_h": budget_hours, "target_threshold_uJ_cm2": target},
        )
        n_workers = workers if workers is not None else min(len(tasks), os.cpu_count() or 1)
        with dask_client(
            scheduler, workers=n_workers, host=host or "127.0.0.1"
        ) as client:  # fail fast: the cluster first
            address = client.scheduler.address
            n_workers = len(client.scheduler_info()["workers"])
            if not json_out:
                where = "a new LocalCluster" if scheduler is None else "the scheduler"
                _err.print(
                    f"sweep: {_n(len(tasks), 'campaign')} on {_n(n_workers, 'Dask worker')} of {where} at {address}"
                )
            uri, folder, key = catalog_target(
                conf, catalog_args["catalog"], catalog_args["data_dir"], catalog_args["api_key"]
            )
            target = (  # a Tiled server: the workers write their campaigns into it themselves
                None
                if uri is None
                else {"uri": uri, "api_key": key or os.environ.get("TILED_API_KEY"), "data_dir": folder and str(folder)}
            )
            submitted = submit_sweep(client, tasks, target)  # the campaigns run while the catalog opens
            with opened_catalog(**catalog_args, conf=conf, announce=not json_out) as cat:

                def done(row: dict, k: int, total: int) -> None:
                    if json_out:
                        return
                    what = (
                        f"failed: {row['error']}"
                        if row["error"]
                        else f"best {_fmt(row['threshold_uJ_cm2'], '.1f')} uJ/cm^2 in {row['trials']} trials"
                    )
                    _err.print(
                        escape(f"[{k}/{total}] {row['strategy']} seed {row['seed']} ({row['presets']}): {what}"),
                        highlight=False,
                    )

                result = collect_sweep(cat, submitted, on_done=done)
                result.update(scheduler=address, workers=n_workers, catalog=str(cat.location))
    rows = result.pop("rows")
    if json_out:
        print_json({**result, "campaigns": rows})
    else:
        _print_table(result, rows)
    if any(r["error"] for r in rows):
        raise typer.Exit(code=1)
