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

from core.errors import GainloopError
from gainloop.cli_common import (
    ConfigOption,
    JsonOption,
    SampleOption,
    command_errors,
    command_group,
    load_config,
    pick,
    print_json,
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
        for col in ("id", "sample", "unit", "paper", "twin", "tol", "ok", "basis"):
            table.add_column(col, justify="right" if col in ("paper", "twin", "tol") else "left", no_wrap=col != "ok")
        for r in rows:
            table.add_row(
                r.id,
                r.sample,
                r.unit,
                f"{r.paper:g}",
                f"{r.twin:.4g}" if math.isfinite(r.twin) else "n/a",
                f"{r.tol:g}",
                "[green]pass[/]" if r.ok else f"[red]FAIL[/] {r.note}",
                "predicted" if r.predicted else "calibrated: " + ", ".join(r.basis),
            )
        _console.print(table)
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
    _console.print(table)


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
