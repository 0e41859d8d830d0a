"""The ``gainloop`` command line.

``gainloop twin reproduce|predict|optimum`` query the digital twin. Errors in the
user's input (a bad presets file, an unknown sample, a doping outside the model's
range) are printed as one clear message and exit with status 2, never as a
traceback.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from core.errors import GainloopError
from gainloop.cli_catalog import catalog_app
from gainloop.cli_common import (
    ApiKeyOption,
    CatalogOption,
    ConfigOption,
    DataDirOption,
    JsonOption,
)
from gainloop.cli_common import fail as _fail
from gainloop.cli_common import load_config as _load_config
from gainloop.cli_common import open_catalog as _open_catalog
from gainloop.cli_common import pick as _pick
from gainloop.cli_qserver import qserver_app
from gainloop.cli_sweep import sweep

app = typer.Typer(
    help="gainloop: closed-loop optimisation and digital twin for CQD infrared lasers.", no_args_is_help=True
)
twin_app = typer.Typer(help="Query the CQD gain-model digital twin.", no_args_is_help=True)
app.add_typer(twin_app, name="twin")
app.add_typer(catalog_app, name="catalog")
app.command("sweep")(sweep)
app.add_typer(qserver_app, name="qserver")

PresetsOption = Annotated[
    Path | None,
    typer.Option("--presets", help="TOML presets file for your own samples (default: the shipped presets)."),
]
SampleOption = Annotated[str, typer.Option("--sample", help="Sample id in the presets file.")]

_console = Console()
_err = Console(stderr=True)


def _json_default(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def _print_json(obj) -> None:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    sys.stdout.write(json.dumps(clean(obj), default=_json_default) + "\n")


class _Stopped(BaseException):
    """Ctrl+C or SIGTERM while a bench command starts up (imports, connects, opens the catalog):
    a BaseException of its own, so that click does not turn it into "Aborted!", status 1."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def _on_stop_signal(signum, frame) -> None:
    import signal

    from gainloop.running import note_stop_signal

    name = signal.Signals(signum).name
    note_stop_signal(name)  # in case this exception is lost (raised inside a finaliser): no plan starts
    raise _Stopped(name)


def _bench_command(fn):
    """A command that drives the bench (measure, campaign run|resume, demo): Ctrl+C or SIGTERM before
    its plan runs (the plan has its own handling, ``gainloop.running.run_plan``) close the blocks it
    is in (a connected bench is made safe), say so in one line and exit 130 (SIGINT) or 143
    (SIGTERM) at once -- without waiting for threads a half-opened catalog may have started."""
    import functools

    @functools.wraps(fn)
    def command(*args, **kwargs):
        import os
        import signal

        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        saved = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return fn(*args, **kwargs)
        except _Stopped as stop:
            for sig in saved:
                signal.signal(sig, signal.SIG_IGN)
            what = "terminated (SIGTERM)" if stop.signal_name == "SIGTERM" else "interrupted (Ctrl+C)"
            _err.print(f"[bold yellow]{what}[/] before the plan started: nothing was measured", highlight=False)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(143 if stop.signal_name == "SIGTERM" else 130)
        finally:
            for sig, handler in saved.items():
                if signal.getsignal(sig) is _on_stop_signal:
                    signal.signal(sig, handler)

    return command


@twin_app.command("reproduce")
def twin_reproduce(
    presets: PresetsOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the simulated measurements' noise.")] = 0,
    json_out: JsonOption = False,
) -> None:
    """Re-measure every number of the paper on the twin: paper value, twin value, tolerance, pass."""
    from gainloop.reproduce import reproduce
    from twin.presets import load_presets

    try:
        rows = reproduce(load_presets(presets), seed=seed)
    except GainloopError as exc:
        _fail(exc)
    if json_out:
        _print_json([{k: r.as_dict()[k] for k in ("id", "sample", "unit", "paper", "twin", "tol", "ok")} for r in rows])
    else:
        table = Table(title="Paper numbers reproduced on the twin")
        for col in ("id", "sample", "unit", "paper", "twin", "tol", "ok"):
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
            )
        _console.print(table)
        n_ok = sum(r.ok for r in rows)
        _console.print(f"{n_ok} of {len(rows)} numbers reproduced within tolerance")
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

    try:
        result = predict(load_presets(presets), sample, doping)
    except GainloopError as exc:
        _fail(exc)
    if json_out:
        _print_json(result)
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

    try:
        p = load_presets(presets)
        opt = find_optimum(p.get(sample), p.setup, sample)
    except (GainloopError, ValueError) as exc:
        _fail(exc)
    if json_out:
        _print_json(opt.as_dict())
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

    The interfaces, port, prefix, time scale and seed can come from the config file's ``[ioc]``
    table and the bench file from its ``[bench]`` table; options on the command line win.
    """
    from devices.config import load_bench
    from sim.ioc import build_ioc, serve

    try:
        conf = _load_config(config)
        bench, ioc_conf = _pick(bench, conf.bench.file), conf.ioc
        if bench is None:
            raise GainloopError("no bench file: pass --bench FILE (e.g. examples/twin_bench.toml) or set [bench] file")
        prefix, seed, port = _pick(prefix, ioc_conf.prefix), _pick(seed, ioc_conf.seed), _pick(port, ioc_conf.port)
        time_scale, interface = _pick(time_scale, ioc_conf.time_scale), interface or ioc_conf.interfaces
        cfg = load_bench(bench)
        ioc = build_ioc(
            cfg, prefix=prefix, time_scale=time_scale, seed=seed, faults=fault or (), disconnect_s=disconnect_s
        )
        serve(ioc, interfaces=interface, port=port, list_pvs=list_pvs)
    except GainloopError as exc:
        _fail(exc)


def _parse_plan_args(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are JSON (numbers, lists, strings), else taken as strings."""
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise GainloopError(f"--arg takes key=value (e.g. --arg stripe_length_um=800), got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out[key.strip()] = value
    return out


def _plan_kwargs(spec, given: dict) -> dict:
    import inspect

    params = inspect.signature(spec.plan).parameters
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "md"]
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise GainloopError(
            f"plan {spec.name} has no argument {', '.join(unknown)}; its arguments: {', '.join(allowed)}"
        )
    return given


def _live_callbacks(json_out: bool) -> list:
    """The callbacks that show a run as it happens (none in --json mode: stdout is the JSON)."""
    if json_out:
        return []
    from bluesky.callbacks.best_effort import BestEffortCallback

    bec = BestEffortCallback()
    bec.disable_plots()
    bec.disable_baseline()
    return [bec]


@app.command("measure")
@_bench_command
def measure(
    plan: Annotated[str, typer.Argument(help="Plan name (see `gainloop plans`).")],
    sample: SampleOption,
    twin: Annotated[bool, typer.Option("--twin", help="Use the in-process twin bench (default).")] = False,
    bench: Annotated[Path | None, typer.Option("--bench", help="Bench file of a real bench (EPICS).")] = None,
    catalog: CatalogOption = None,
    api_key: ApiKeyOption = None,
    data_dir: DataDirOption = None,
    seed: Annotated[int | None, typer.Option(help="Twin seed (default: the bench file's).")] = None,
    stripe_length_um: Annotated[
        float | None, typer.Option("--stripe-length", help="Stripe length, um (plans that take one).")
    ] = None,
    fluence_uJ_cm2: Annotated[
        float | None, typer.Option("--fluence", help="Pump fluence, uJ/cm^2 (plans that take one).")
    ] = None,
    plan_arg: Annotated[
        list[str] | None,
        typer.Option("--arg", "-a", help="Plan argument key=value, repeatable (e.g. -a exposure_s=1)."),
    ] = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run one measurement plan, store every document in the catalog, print the uid and the result.

    Ctrl+C or SIGTERM stop it cleanly: the run is closed (exit_status "abort") with the pump
    shutter closed and the fluence parked, and the command exits 130 (143 for SIGTERM).
    """
    from bluesky import RunEngine

    from gainloop.running import PlanInterrupted, open_bench, run_plan
    from plans.registry import plan_spec

    try:
        spec = plan_spec(plan)
    except KeyError as exc:
        _fail(GainloopError(str(exc.args[0])))
    if twin and bench is not None:
        _fail(GainloopError("choose one of --twin and --bench FILE"))
    try:
        given = _parse_plan_args(plan_arg or [])
        if stripe_length_um is not None:
            given["stripe_length_um"] = stripe_length_um
        if fluence_uJ_cm2 is not None:
            given["fluence_uJ_cm2"] = fluence_uJ_cm2
        if plan == "vsl_scan":
            given.setdefault("fluence_uJ_cm2", 2200.0)
            given.setdefault("stripe_lengths_um", [float(x) for x in range(10, 41, 2)])
        kwargs = _plan_kwargs(spec, given)
        conf = _load_config(config)  # the bench of the config file unless --twin or --bench
        bench = bench if (twin or bench is not None) else conf.bench.file
        seed = seed if seed is not None else conf.bench.twin_seed
        with open_bench(bench, seed=seed) as devices:
            devices.config.library_entry(sample)
            if plan == "pump_probe" and "excitons_per_uJ_cm2" not in kwargs and devices.engine is not None:
                kwargs["excitons_per_uJ_cm2"] = devices.engine.excitons_per_uJ_cm2(sample)  # the twin's own film
            gen = spec.start(devices, sample, **kwargs)  # a bad argument is refused here: nothing stored or sent
            with _open_catalog(catalog, data_dir, api_key, conf) as cat, _bluesky_prints_to_stderr(json_out):
                RE = RunEngine({}, call_returns_result=True)
                RE.subscribe(cat.writer())
                for cb in _live_callbacks(json_out):
                    RE.subscribe(cb)
                result = run_plan(RE, gen, devices, what=f"{plan} on {sample}", exit_on_interrupt=True)
                if result.exit_status != "success":
                    _fail(
                        GainloopError(
                            f"run {_short(result.run_start_uids)} ended {result.exit_status}: {result.reason}"
                        )
                    )
                out = {**result.plan_result, "plan": plan, "sample": sample, "catalog": str(cat.location)}
    except PlanInterrupted as exc:
        _interrupted(exc)
    except (GainloopError, ValueError, TypeError) as exc:
        _fail(exc)
    if json_out:
        _print_json(out)
    else:
        _print_result(out)


def _short(uids) -> str:
    """Run uids as the live table shows them (their first 8 characters)."""
    return ", ".join(str(u)[:8] for u in uids) or "(none)"


def _print_result(out: dict) -> None:
    """A plan's result, one ``key: value`` a line, numbers with sensible precision (a value with its
    ``_err`` twin as ``value +- err`` to the error's second significant digit)."""
    errors = {k for k in out if "_err" in k and k.replace("_err", "", 1) in out}
    for key, value in out.items():
        if key in errors:
            continue
        twin_key = next((e for e in errors if e.replace("_err", "", 1) == key), None)
        if twin_key is not None:
            _console.print(f"{key}: {_with_error(value, out[twin_key])}")
        else:
            _console.print(f"{key}: {_number(value)}")


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _with_error(value, err) -> str:
    """``93.9 +- 4.9``: the value rounded where its error's second significant digit is."""
    try:
        v, e = float(value), float(err)
    except (TypeError, ValueError):
        return f"{value} +- {err}"
    if not (math.isfinite(v) and math.isfinite(e) and e > 0):
        return f"{_number(v)} +- {_number(e)}"
    decimals = max(0, 1 - math.floor(math.log10(e)))
    if decimals > 6:
        return f"{v:.3g} +- {e:.2g}"
    return f"{v:.{decimals}f} +- {e:.{decimals}f}"


@app.command("replay")
def replay_cmd(
    uid: Annotated[str, typer.Argument(help="uid of the stored run (or its first characters, e.g. the 8 shown live).")],
    catalog: CatalogOption = None,
    api_key: ApiKeyOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Re-analyse a stored run from its stored data and re-stream its documents through the live callbacks."""
    from gainloop.replay import replay

    try:
        with _open_catalog(catalog, data_dir, api_key, _load_config(config)) as cat:
            rr = replay(cat, cat.resolve_uid(uid), _live_callbacks(json_out))
            start = rr.start  # (the run is read once)
            out = {**rr.result, "plan": start["plan_name"], "sample": start["sample_id"], "catalog": str(cat.location)}
    except GainloopError as exc:
        _fail(exc)
    if not rr.matches:
        _err.print(f"[bold red]error:[/] the re-derived result differs from the run's stored analysis {rr.stored}")
    if json_out:
        _print_json(out)
    else:
        _print_result(out)
        _console.print(f"replayed {rr.n_documents} documents ({rr.n_events} events)")
    if not rr.matches:
        raise typer.Exit(code=1)


@app.command("plans")
def list_plans() -> None:
    """The measurement plans and what they return."""
    from plans.registry import PLANS

    for spec in PLANS.values():
        _console.print(f"[bold]{spec.name}[/]: {spec.description}")


campaign_app = typer.Typer(help="Closed-loop campaigns that minimise the lasing threshold.", no_args_is_help=True)
app.add_typer(campaign_app, name="campaign")


def _campaign_progress(json_out: bool, budget_h: float | None, max_trials: int | None):
    """A rich progress line on stderr (nothing in --json mode): trials (of the trial budget), lab hours of
    the lab-time budget, failures, the best threshold so far and an estimate of the wall time left."""
    if json_out:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]campaign[/]"),
        BarColumn(),
        TextColumn("trial {task.fields[trials]}"),
        TextColumn("{task.fields[lab]} lab h"),
        TextColumn("failed {task.fields[failures]}"),
        TextColumn("best {task.fields[best]}"),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=_err,
    )
    # the bar follows whichever budget is nearer to being spent
    budgets = [b for b in (budget_h, max_trials) if b is not None]

    def fields(summary: dict | None) -> dict:
        trials = summary["trials"] if summary else 0
        lab = summary["lab_hours"] if summary else 0.0
        best = (summary or {}).get("best")
        return {
            "trials": f"{trials}/{max_trials}" if max_trials is not None else f"{trials}",
            "lab": f"{lab:.1f}/{budget_h:g}" if budget_h is not None else f"{lab:.1f}",
            "failures": summary["failures"] if summary else 0,
            "best": (
                f"{_with_error(best['threshold_uJ_cm2'], best.get('threshold_err_uJ_cm2'))} uJ/cm^2" if best else "-"
            ),
        }

    task = progress.add_task("campaign", total=1.0 if budgets else None, **fields(None))

    def update(summary: dict) -> None:
        shares = []
        if budget_h is not None:
            shares.append(summary["lab_hours"] / budget_h)
        if max_trials is not None:
            shares.append(summary["trials"] / max_trials)
        progress.update(task, completed=min(max(shares, default=0.0), 1.0), **fields(summary))

    return progress, update


def _print_campaign(summary: dict, json_out: bool) -> None:
    keys = ("campaign_uid", "best", "lab_hours", "trials", "failures", "stopped_by", "material", "lab_clock")
    keys += ("failed_trials",)
    out = {k: summary.get(k) for k in keys if k in summary}
    if json_out:
        _print_json(out)
        return
    best = out.get("best")
    _console.print(
        f"campaign {out['campaign_uid']}: {out['trials']} trials, {out['failures']} failed, "
        f"{out['lab_hours']:.2f} lab hours" + (f", stopped by {out['stopped_by']}" if out.get("stopped_by") else "")
    )
    if best:
        _console.print(
            f"best: threshold {_with_error(best['threshold_uJ_cm2'], best['threshold_err_uJ_cm2'])} uJ/cm^2 at stripe "
            f"{best['stripe_length_um']:.0f} um, doping {best['doping']:.2f} electrons/dot "
            f"(trial {best['trial_index']})"
        )
    if out.get("lab_clock"):
        _console.print(f"lab time read from {out['lab_clock']}")
    for failed in out.get("failed_trials") or ():
        _console.print(f"trial {failed['trial_index']} {failed['status']}: {failed['reason']}")


def _bluesky_prints_to_stderr(json_out: bool):
    """In --json mode, what bluesky prints while a plan runs (pause and abort notices) goes to stderr.

    The RunEngine's own log (a traceback for an abort or a failed plan) is silenced: the CLI
    says what happened in one line.
    """
    import contextlib

    logging.getLogger("bluesky").setLevel(logging.CRITICAL)
    return contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()


def _interrupted(exc) -> None:
    """A plan or campaign stopped by Ctrl+C or SIGTERM: one line, exit status 130 (SIGINT) or 143 (SIGTERM).

    ``run_plan(..., exit_on_interrupt=True)`` has left both signals ignored, so that no traceback
    from closing the catalog or the interpreter's shutdown follows the line.
    """
    _err.print(f"[bold yellow]interrupted:[/] {exc}", soft_wrap=True)
    raise typer.Exit(code=getattr(exc, "exit_code", 130))


def _run_campaign_cli(
    config: Path | None,
    overrides: dict,
    bench: Path | None,
    catalog: str | None,
    api_key: str | None,
    data_dir: Path | None,
    json_out: bool,
    *,
    report_dir: Path | None = None,
) -> dict:
    """Config file + command-line options -> a campaign in the catalog (with a progress bar)."""
    from gainloop.campaign import CampaignInterrupted, run_campaign

    try:
        conf = _load_config(config)
        strategy = overrides.get("strategy")
        if strategy is not None and strategy not in ("nested", "joint", "random", "grid"):
            raise GainloopError(f"unknown strategy {strategy!r}; allowed: nested, joint, random, grid")
        budget = overrides.get("budget_lab_h")
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise GainloopError(f"--budget-hours must be a positive number of hours, got {budget!r}")
        cfg = conf.campaign_config(bench_file=str(bench) if bench is not None else None, **overrides)
        progress, update = _campaign_progress(json_out, cfg.budget_lab_h, cfg.max_trials)
        with _open_catalog(catalog, data_dir, api_key, conf) as cat:
            if progress is not None:
                progress.start()
            try:
                with _bluesky_prints_to_stderr(json_out):
                    summary = run_campaign(cat, cfg, progress=update, exit_on_interrupt=True)
            finally:
                if progress is not None:
                    progress.stop()
            if report_dir is not None:
                from gainloop.report import write_report

                uid = summary["campaign_uid"]
                summary["report"] = str(write_report(cat, uid, report_dir / uid))
    except CampaignInterrupted as exc:
        _interrupted(exc)
    except (GainloopError, ValueError) as exc:
        _fail(exc)
    return summary


@campaign_app.command("run")
@_bench_command
def campaign_run(
    config: ConfigOption = None,
    twin: Annotated[bool, typer.Option("--twin", help="Use the in-process twin bench (default).")] = False,
    bench: Annotated[Path | None, typer.Option("--bench", help="Bench file of a real bench (EPICS).")] = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="nested, joint, random or grid (default: nested).")
    ] = None,
    budget_hours: Annotated[
        float | None, typer.Option("--budget-hours", help="Lab-time budget, hours (default: 24).")
    ] = None,
    max_trials: Annotated[int | None, typer.Option("--max-trials", help="Trial budget.")] = None,
    target: Annotated[
        float | None, typer.Option("--target", help="Stop once a threshold at or below this is measured, uJ/cm^2.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Optimiser seed (and the twin's noise seed).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Proposals per round (q).")] = None,
    material: Annotated[
        str | None,
        typer.Option(
            "--material",
            help="The material to optimise: only films of it are measured (default: the bench file's "
            "[stage] new_film_material, the material new films are made of).",
        ),
    ] = None,
    catalog: CatalogOption = None,
    api_key: ApiKeyOption = None,
    data_dir: DataDirOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run a closed-loop campaign: suggest, measure, analyse, ingest, until a budget or the target.

    Ctrl+C or SIGTERM end it cleanly (its runs closed, the shutter closed); it prints the
    `gainloop campaign resume` command that continues it.
    """
    if twin and bench is not None:
        _fail(GainloopError("choose one of --twin and --bench FILE"))
    overrides = {
        "strategy": strategy,
        "budget_lab_h": budget_hours,
        "max_trials": max_trials,
        "target_threshold_uJ_cm2": target,
        "seed": seed,
        "batch_size": batch_size,
        "material": material,
    }
    summary = _run_campaign_cli(config, overrides, bench, catalog, api_key, data_dir, json_out)
    _print_campaign(summary, json_out)


@app.command("demo")
@_bench_command
def demo(
    config: ConfigOption = None,
    max_trials: Annotated[
        int, typer.Option("--max-trials", help="Most trials the demo campaign may take to reach its goal.")
    ] = 40,
    seed: Annotated[int | None, typer.Option("--seed", help="Optimiser and twin seed.")] = None,
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for reports (default: reports/ in the data folder).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """The main job: a campaign on the twin, into the embedded catalog, until it has measured a threshold
    within 5 % of the twin's true optimum; its best conditions beside that optimum, and its report."""
    from gainloop.catalog import data_dir as resolve_data_dir
    from gainloop.demo import GOAL_FRACTION, judge, twin_goal

    try:
        folder = resolve_data_dir(data_dir)
        if _load_config(config).bench.file is not None:
            raise GainloopError(
                "the demo runs on the twin (its optimum is the yardstick); the config names a bench file: "
                "run `gainloop campaign run --config FILE` on a bench"
            )
        goal = twin_goal()
    except GainloopError as exc:
        _fail(exc)
    overrides = {
        "max_trials": max_trials,
        "seed": seed,
        "budget_lab_h": 48.0,
        "target_threshold_uJ_cm2": goal.target_uJ_cm2,
    }
    reports = out if out is not None else folder / "reports"
    summary = _run_campaign_cli(config, overrides, None, None, None, folder, json_out, report_dir=reports)
    verdict = judge(summary.get("best"), goal)
    if json_out:
        keys = ("campaign_uid", "best", "lab_hours", "trials", "failures", "report")
        _print_json({**{k: summary.get(k) for k in keys}, **verdict})
        return
    _print_campaign(summary, json_out)
    opt = verdict["optimum"]
    _console.print(
        f"the twin's true optimum: {opt['threshold_uJ_cm2']:.1f} uJ/cm^2 at stripe {opt['stripe_length_um']:.0f} um, "
        f"doping {opt['doping']:.2f} electrons/dot"
    )
    if verdict["within_fraction"] is None:
        _console.print("[bold red]no threshold was measured[/]: the goal was not reached")
    else:
        true = verdict["true_threshold_uJ_cm2"]
        where = f" (the twin's own threshold there: {true:.1f} uJ/cm^2)" if true is not None else ""
        how = "[bold green]goal reached[/]" if verdict["reached"] else "[bold red]goal not reached[/]"
        _console.print(
            f"{how}: the best measured threshold is {verdict['within_fraction']:+.1%} from the optimum{where}, "
            f"goal within {GOAL_FRACTION:.0%}; {summary['lab_hours']:.1f} lab hours, {summary['trials']} trials"
        )
    _console.print(f"report: {summary['report']}")


@campaign_app.command("resume")
@_bench_command
def campaign_resume(
    campaign_uid: Annotated[
        str, typer.Argument(help="uid of the campaign to continue (or an unambiguous start of it).")
    ],
    budget_hours: Annotated[
        float | None, typer.Option("--budget-hours", help="New total lab-time budget, hours (default: as stored).")
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option("--max-trials", help="New total trial budget (default: as stored).")
    ] = None,
    catalog: CatalogOption = None,
    api_key: ApiKeyOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Rebuild a campaign's state from the catalog alone and continue it."""
    from gainloop.campaign import CampaignInterrupted, run_campaign

    try:
        with (
            _open_catalog(catalog, data_dir, api_key, _load_config(config)) as cat,
            _bluesky_prints_to_stderr(json_out),
        ):
            summary = run_campaign(
                cat,
                resume_uid=_campaign_uid(cat, campaign_uid),
                budgets={"budget_lab_h": budget_hours, "max_trials": max_trials},
                exit_on_interrupt=True,
            )
    except CampaignInterrupted as exc:
        _interrupted(exc)
    except (GainloopError, ValueError) as exc:
        _fail(exc)
    _print_campaign(summary, json_out)


def _campaign_uid(cat, given: str) -> str:
    """The campaign uid ``given`` names (whole, or an unambiguous prefix of it)."""
    return cat.resolve_uid(given, key="campaign_uid", what="campaign", where={"plan_name": "campaign"})


@campaign_app.command("status")
def campaign_status_cmd(
    campaign_uid: Annotated[str, typer.Argument(help="uid of the campaign (or an unambiguous start of it).")],
    catalog: CatalogOption = None,
    api_key: ApiKeyOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Best conditions so far, lab time used, trials, failures."""
    from gainloop.campaign import campaign_status

    try:
        with _open_catalog(catalog, data_dir, api_key, _load_config(config)) as cat:
            status = campaign_status(cat, _campaign_uid(cat, campaign_uid))
    except GainloopError as exc:
        _fail(exc)
    _print_campaign(status, json_out)


@app.command("report")
def report_cmd(
    campaign_uid: Annotated[str, typer.Argument(help="uid of the campaign (or an unambiguous start of it).")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write index.html and its PNG figures into.")],
    catalog: CatalogOption = None,
    api_key: ApiKeyOption = None,
    data_dir: DataDirOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write a campaign's report: an HTML page with PNG figures; print the path of its index.html."""
    from gainloop.report import build_report

    try:
        with _open_catalog(catalog, data_dir, api_key, _load_config(config)) as cat:
            report = build_report(cat, _campaign_uid(cat, campaign_uid), out)
    except GainloopError as exc:
        _fail(exc)
    if json_out:
        _print_json({"report": str(report.index), "figures": [str(p) for p in report.figures]})
    else:
        sys.stdout.write(f"{report.index}\n")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
