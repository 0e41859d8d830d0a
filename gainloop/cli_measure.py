"""``gainloop measure``, ``replay`` and ``plans``: one measurement plan on the bench, a stored run again.

``measure`` runs one plan of ``plans.registry`` on the bench (``--twin``, ``--bench FILE`` or
the config's [bench] file) into the catalog and prints its uid and result; ``replay``
re-derives a stored run's result from its stored data; ``plans`` lists the plans.
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated

import typer
from rich.console import Console

from core.errors import GainloopError
from gainloop.cli_common import (
    BenchFileOption,
    JsonOption,
    TwinOption,
    TwinSeedOption,
    bench_command,
    bench_file_choice,
    bluesky_prints_to_stderr,
    command_errors,
    fail,
    load_config,
    number,
    opened_catalog,
    print_json,
    reads_catalog,
    with_error,
)

__all__ = ["list_plans", "measure", "replay_cmd"]

_console = Console()
_err = Console(stderr=True)

#: Short names of plans on the command line (``gainloop measure absorption --film ID``).
PLAN_ALIASES = {"absorption": "absorption_spectrum"}
#: The sample to measure: ``--sample`` or, the same, ``--film``.
MeasureSampleOption = Annotated[
    str, typer.Option("--sample", "--film", help="Sample id of the bench's library (a film: --film).")
]


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
    """``given``, if the plan takes every one of them as a keyword argument; else ``GainloopError``."""
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
            _console.print(f"{key}: {with_error(value, out[twin_key])}")
        else:
            _console.print(f"{key}: {number(value)}")


@bench_command
@reads_catalog
def measure(
    plan: Annotated[str, typer.Argument(help="Plan name (see `gainloop plans`; `absorption`: absorption_spectrum).")],
    sample: MeasureSampleOption,
    twin: TwinOption = False,
    bench: BenchFileOption = None,
    seed: TwinSeedOption = None,
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
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Run one measurement plan, store every document in the catalog, print the uid and the result.

    Ctrl+C or SIGTERM stop it cleanly: the run is closed (exit_status "abort") with the pump
    shutter closed and the fluence parked, and the command exits 130 (143 for SIGTERM).

    `gainloop measure absorption --film ID` measures a film's doping from the 1S bleach of its
    white-light absorption (prints doping_e_per_dot +- its error and the run's uid); a film whose
    absorption cannot be read is an error with the reason (no_light, saturated, ...).
    """
    from bluesky import RunEngine

    from gainloop.running import open_bench, run_plan
    from gainloop.twin_history import restore_film_doses
    from plans.registry import plan_spec

    with command_errors(ValueError, TypeError):
        plan = PLAN_ALIASES.get(plan, plan)
        try:
            spec = plan_spec(plan)
        except KeyError as exc:
            raise GainloopError(str(exc.args[0])) from None
        conf = load_config(catalog_args["config"])
        bench_file = bench_file_choice(twin, bench, conf.bench.file)  # the config's bench unless --twin or --bench
        given = _parse_plan_args(plan_arg or [])
        if stripe_length_um is not None:
            given["stripe_length_um"] = stripe_length_um
        if fluence_uJ_cm2 is not None:
            given["fluence_uJ_cm2"] = fluence_uJ_cm2
        if plan == "vsl_scan":
            given.setdefault("fluence_uJ_cm2", 2200.0)
            given.setdefault("stripe_lengths_um", [float(x) for x in range(10, 41, 2)])
        kwargs = _plan_kwargs(spec, given)
        seed = seed if seed is not None else conf.bench.twin_seed
        with open_bench(bench_file, seed=seed) as devices:
            devices.config.library_entry(sample)
            if plan == "pump_probe" and "excitons_per_uJ_cm2" not in kwargs:
                kappa = devices.excitons_per_uJ_cm2(sample)  # the twin's own film, or the bench file's entry
                if kappa is not None:
                    kwargs["excitons_per_uJ_cm2"] = kappa
            gen = spec.start(devices, sample, **kwargs)  # a bad argument is refused here: nothing stored or sent
            with opened_catalog(**catalog_args, conf=conf) as cat, bluesky_prints_to_stderr(json_out):
                if restore_film_doses(devices, cat):  # on the twin: its films continue their photo-damage
                    gen.close()  # checked before the dose was known: its start document would record none
                    gen = spec.start(devices, sample, **kwargs)
                RE = RunEngine({}, call_returns_result=True)
                RE.subscribe(cat.writer())
                for cb in _live_callbacks(json_out):
                    RE.subscribe(cb)
                result = run_plan(RE, gen, devices, what=f"{plan} on {sample}", exit_on_interrupt=True)
                if result.exit_status != "success":
                    fail(
                        GainloopError(
                            f"run {_short(result.run_start_uids)} ended {result.exit_status}: {result.reason}"
                        )
                    )
                out = {**result.plan_result, "plan": plan, "sample": sample, "catalog": str(cat.location)}
    if json_out:
        print_json(out)
    else:
        _print_result(out)


@reads_catalog
def replay_cmd(
    uid: Annotated[str, typer.Argument(help="uid of the stored run (or its first characters, e.g. the 8 shown live).")],
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Re-analyse a stored run from its stored data and re-stream its documents through the live callbacks."""
    from gainloop.replay import replay

    with opened_catalog(**catalog_args) as cat:
        rr = replay(cat, cat.resolve_uid(uid), _live_callbacks(json_out))
        start = rr.start  # (the run is read once)
        out = {**rr.result, "plan": start["plan_name"], "sample": start["sample_id"], "catalog": str(cat.location)}
    if not rr.matches:
        _err.print(f"[bold red]error:[/] the re-derived result differs from the run's stored analysis {rr.stored}")
    if json_out:
        print_json(out)
    else:
        _print_result(out)
        _console.print(f"replayed {rr.n_documents} documents ({rr.n_events} events)")
    if not rr.matches:
        raise typer.Exit(code=1)


def list_plans() -> None:
    """The measurement plans and what they return."""
    from plans.registry import PLANS

    for spec in PLANS.values():
        _console.print(f"[bold]{spec.name}[/]: {spec.description}")
