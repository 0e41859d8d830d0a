"""``gainloop twin reproduce|predict|optimum|serve``: query the digital twin, or serve it as an IOC.

Errors in the user's input (a bad presets file, an unknown sample, a doping outside the
model's range) are printed as one clear message and exit with status 2, never as a
traceback.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.errors import GainloopError
from gainloop.cli_common import (
    ConfigOption,
    JsonOption,
    SampleOption,
    command_errors,
    command_group,
    fail,
    load_config,
    opened_catalog,
    pick,
    print_json,
    print_table,
    reads_catalog,
)

__all__ = ["twin_app"]

twin_app = command_group("Query the CQD gain-model digital twin.")

PresetsOption = Annotated[
    Path | None,
    typer.Option("--presets", help="TOML presets file for your own samples (default: the shipped presets)."),
]

_console = Console()


@twin_app.command("reproduce")
def twin_reproduce(
    presets: PresetsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated measurements' noise.")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Re-measure every number of the paper on the twin: paper value, twin value, tolerance, pass."""
    from gainloop.reproduce import basis_summary, reproduce
    from twin.presets import load_presets

    with command_errors():
        rows = reproduce(load_presets(presets), seed=seed)
    if json_out:
        keys = ("id", "sample", "unit", "paper", "twin", "tol", "ok")
        print_json(
            [{**{k: r.as_dict()[k] for k in keys}, "basis": r.basis if r.predicted else list(r.basis)} for r in rows]
        )
    else:
        table = Table(title=f"Paper numbers reproduced on the twin ({basis_summary(rows)})")
        cells = [
            (
                r.id,
                r.sample,
                r.unit,
                f"{r.paper:g}",
                f"{r.twin:.4g}" if math.isfinite(r.twin) else "n/a",
                f"{r.tol:g}",
                "[green]pass[/]" if r.ok else f"[red]FAIL[/] {r.note}",
                "predicted" if r.predicted else "calibrated: " + ", ".join(r.basis),
            )
            for r in rows
        ]
        # the numbers keep their width in a narrow terminal (an 80-column one squeezed them to nothing);
        # the id and the basis fold onto more lines instead
        for i, col in enumerate(("id", "sample", "unit", "paper", "twin", "tol", "ok", "basis")):
            if col in ("id", "basis"):
                table.add_column(col, overflow="fold", ratio=1)
            else:
                width = max(len(col), *(len(Text.from_markup(c[i]).plain) for c in cells))
                table.add_column(col, justify="right" if col in ("paper", "twin", "tol") else "left", min_width=width)
        for c in cells:
            table.add_row(*c)
        print_table(_console, table)
        n_ok = sum(r.ok for r in rows)
        _console.print(f"{n_ok} of {len(rows)} numbers reproduced within tolerance; {basis_summary(rows)}")
    if not all(r.ok for r in rows):
        raise typer.Exit(code=1)


@twin_app.command("predict")
def twin_predict(
    sample: SampleOption,
    presets: PresetsOption = None,
    doping: Annotated[
        float | None, typer.Option("--doping", help="Doping <n_e> in 1S electrons/dot (default: the sample's).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """What the twin predicts for one sample: thresholds, gain and lifetimes."""
    from gainloop.predict import predict
    from twin.presets import load_presets

    with command_errors():
        result = predict(load_presets(presets), sample, doping)
    if json_out:
        print_json(result)
        return
    table = Table(title=f"Twin prediction for {sample}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    print_table(_console, table)


@twin_app.command("optimum")
def twin_optimum(
    sample: SampleOption = "cas_doped",
    presets: PresetsOption = None,
    json_out: JsonOption = False,
) -> None:
    """The true minimum ASE threshold over stripe length and doping (dense search of the model)."""
    from twin.landscape import find_optimum
    from twin.presets import load_presets

    with command_errors(ValueError):
        p = load_presets(presets)
        opt = find_optimum(p.get(sample), p.setup, sample)
    if json_out:
        print_json(opt.as_dict())
        return
    _console.print(
        f"[bold]{sample}[/]: lowest ASE threshold {opt.threshold_uJ_cm2:.1f} uJ/cm^2 "
        f"at stripe length {opt.stripe_length_um:.0f} um and doping {opt.doping:.2f} electrons/dot"
    )


@twin_app.command("calibrate")
@reads_catalog
def twin_calibrate(
    sample: Annotated[
        str,
        typer.Option(
            "--sample",
            help="Sample id of the stored runs (e.g. cas_doped-film), or several comma-separated: a film and the DFB "
            "device of the same dots (cas_doped-film,cas_doped-dfb) are calibrated together.",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Presets file to write (TOML; any twin command takes it with --presets).")
    ],
    runs: Annotated[
        list[str] | None,
        typer.Option("--runs", help="Calibrate on these runs (uid or its start; repeat, or comma-separated)."),
    ] = None,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="Calibrate on the runs of this campaign (uid or its start).")
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Calibrate on the sample's runs started at or after this time.")
    ] = None,
    params: Annotated[
        str | None,
        typer.Option(
            "--params",
            help="Comma-separated parameters to fit (film.alpha0_per_cm, ...; default: those the runs constrain).",
        ),
    ] = None,
    presets: PresetsOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write an HTML report with PNG figures into this folder.")
    ] = None,
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Fit the twin's parameters to a sample's stored ASE/VSL, pump-probe and DFB lasing runs (MAP, Laplace
    errors), write a presets file and store the calibration as a run."""
    from gainloop.calibrate import now_utc, select_runs, store_calibration, write_presets
    from twin.calibration import CalibrationError, calibrate
    from twin.presets import default_presets_path, load_presets

    uids = [u for item in (runs or []) for u in item.split(",") if u.strip()]
    if sum(bool(x) for x in (uids, campaign, since)) > 1:
        fail(GainloopError("give at most one of --runs, --campaign and --since"))
    if out.exists() and out.is_dir():
        fail(GainloopError(f"--out {out} is a folder; give the path of the presets file to write"))
    if not out.parent.exists():
        fail(GainloopError(f"--out {out}: its folder {out.parent} does not exist"))
    with command_errors(CalibrationError):
        p = load_presets(presets)
    with opened_catalog(**catalog_args, also=(CalibrationError,)) as cat:
        selected = select_runs(cat, p, sample, uids=uids or None, campaign=campaign, since=since)
        names = None if params is None else [n for n in params.split(",") if n.strip()]
        if names is not None:
            from twin.calibration import check_parameter_names

            names = check_parameter_names(p, selected.preset, names)
        result = calibrate(p, selected.runs, names)
        when = now_utc()
        source = str(presets) if presets is not None else f"the shipped presets ({default_presets_path().name})"
        write_presets(result, out, presets_source=source, when=when)
        uid = store_calibration(cat, result, sample=sample, presets_source=source, out_path=str(out))
        page = None
        if report is not None:
            from gainloop.report.calibration import write_calibration_report

            page = write_calibration_report(result, selected.runs, report, title=f"{sample}, {when}, run {uid}")
    if json_out:
        print_json(
            {
                **result.as_dict(),
                "calibration_uid": uid,
                "out": str(out),
                "report": None if page is None else str(page),
                "skipped": selected.skipped,
            }
        )
        return
    table = Table(
        title=f"Twin calibration of {sample} (preset {result.sample}): {len(result.run_uids)} runs, "
        f"{result.n_points} acquisitions, reduced chi2 {result.reduced_chi2:.3f}"
    )
    for col in ("parameter", "preset", "calibrated", "unit"):
        table.add_column(col, justify="left" if col in ("parameter", "unit") else "right")
    for e in result.estimates:
        table.add_row(e.name, f"{e.preset:.5g}", f"{e.value:.5g} +- {e.error:.2g}", e.unit)
    print_table(_console, table)
    k = len(result.estimates)
    if k > 1:
        corr = Table(title="correlation")
        corr.add_column("")
        for e in result.estimates:
            corr.add_column(e.name.split(".")[-1], justify="right")
        for i, e in enumerate(result.estimates):
            corr.add_row(e.name.split(".")[-1], *(f"{result.correlation[i, j]:+.2f}" for j in range(k)))
        print_table(_console, corr)
    for f in result.flags:
        _console.print(f"note: {f}", highlight=False)
    for s in selected.skipped:
        _console.print(f"skipped run {s}", highlight=False)
    _console.print(f"wrote {out}; calibration stored as run {uid}", highlight=False)
    if page is not None:
        _console.print(f"report: {page}", highlight=False)


@twin_app.command("serve")
def twin_serve(
    bench: Annotated[
        Path | None,
        typer.Option("--bench", help="Bench file (TOML) whose PVs to serve (or the config's [bench] file)."),
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="PV prefix (default: the bench file's [bench].prefix).")
    ] = None,
    time_scale: Annotated[
        float | None,
        typer.Option("--time-scale", help="Lab seconds per wall second (default 1 = real time).", show_default=False),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Noise seed (default: the bench file's).")] = None,
    list_pvs: Annotated[bool, typer.Option("--list-pvs", help="Print every PV served at start-up.")] = False,
    port: Annotated[
        int | None, typer.Option("--port", help="CA server port (default: EPICS_CA_SERVER_PORT, else 5064).")
    ] = None,
    interface: Annotated[
        list[str] | None,
        typer.Option("--interface", help="Address to bind (repeatable; default 127.0.0.1 only)."),
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault",
            help="Fault on at start (repeatable): pause, disconnect, stuck_motor, saturated_detector, nan_readback, "
            "inf_readback, out_of_range_readback, missing_readback, string_readback.",
        ),
    ] = None,
    disconnect_s: Annotated[
        float, typer.Option("--disconnect-s", help="Wall seconds the PVs stay away under the disconnect fault.")
    ] = 5.0,
    config: ConfigOption = None,
) -> None:
    """Serve the twin bench as an EPICS IOC (Channel Access): the bench file's PVs on one simulated bench.

    The interfaces, port, prefix, time scale and seed can come from the config file's [ioc]
    table and the bench file from its [bench] table; options on the command line win.
    """
    from devices.config import load_bench
    from sim.ioc import build_ioc, serve

    with command_errors():
        conf = load_config(config)
        bench, ioc_conf = pick(bench, conf.bench.file), conf.ioc
        if bench is None:
            raise GainloopError("no bench file: pass --bench FILE (e.g. examples/twin_bench.toml) or set [bench] file")
        prefix, seed, port = pick(prefix, ioc_conf.prefix), pick(seed, ioc_conf.seed), pick(port, ioc_conf.port)
        time_scale, interface = pick(time_scale, ioc_conf.time_scale), interface or ioc_conf.interfaces
        cfg = load_bench(bench)
        ioc = build_ioc(
            cfg, prefix=prefix, time_scale=time_scale, seed=seed, faults=fault or (), disconnect_s=disconnect_s
        )
        serve(ioc, interfaces=interface, port=port, list_pvs=list_pvs)
