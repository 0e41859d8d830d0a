"""What every ``gainloop`` command shares: the config file, the catalog, the bench options, one-line errors.

Every command takes ``--config FILE`` (else ``$GAINLOOP_CONFIG``); an option given on the
command line wins over the file, the file over the built-in default. The catalog of a
command is ``--catalog`` / ``--data-dir`` / ``--api-key``, else the file's [catalog]
table (its key from the environment variable the table names), else the embedded one.

Errors: inside ``command_errors()`` (or ``opened_catalog(...)``, which opens the catalog
inside it) a ``GainloopError`` is one line ``error: ...`` on stderr and exit status 2, never a
traceback; a plan or campaign stopped by Ctrl+C or SIGTERM (``gainloop.running.PlanInterrupted``)
is one line ``interrupted: ...`` and exit status 130 (143 for SIGTERM).

Help texts are plain text (``rich_markup_mode=None`` on every Typer app: ``command_group``),
so that a config table such as [sweep] shows as written.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console
from rich.markup import escape

from core.errors import GainloopError
from gainloop.running import PlanInterrupted

__all__ = [
    "ApiKeyOption",
    "BenchFileOption",
    "BudgetHoursOption",
    "CatalogOption",
    "ConfigOption",
    "DataDirOption",
    "HostOption",
    "JsonOption",
    "MaxTrialsOption",
    "OptimiserSeedOption",
    "SampleOption",
    "TargetOption",
    "TwinOption",
    "TwinSeedOption",
    "bench_command",
    "bench_file_choice",
    "bluesky_prints_to_stderr",
    "catalog_target",
    "check_budget_hours",
    "command_errors",
    "command_group",
    "fail",
    "interrupted",
    "load_config",
    "number",
    "open_catalog",
    "opened_catalog",
    "pick",
    "print_json",
    "print_table",
    "process_ends_with_command",
    "reads_catalog",
    "with_error",
    "with_help",
]

err_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="GAINLOOP_CONFIG",
        help="gainloop config file (TOML; default: $GAINLOOP_CONFIG); command-line options win.",
    ),
]
CatalogOption = Annotated[
    str | None, typer.Option("--catalog", help="Tiled server URI (default: the embedded catalog in the data folder).")
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option("--api-key", help="API key of the Tiled server (default: $TILED_API_KEY).", show_default=False),
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data folder of the embedded catalog (default: $GAINLOOP_DATA_DIR).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")]
HostOption = Annotated[
    str | None, typer.Option("--host", help="Interface to bind (default 127.0.0.1 only).", show_default=False)
]
SampleOption = Annotated[str, typer.Option("--sample", help="Sample id in the presets file.")]
TwinOption = Annotated[bool, typer.Option("--twin", help="Use the in-process twin bench (default).")]
BenchFileOption = Annotated[Path | None, typer.Option("--bench", help="Bench file of a real bench (EPICS).")]
TwinSeedOption = Annotated[int | None, typer.Option("--seed", help="Twin seed (default: the bench file's).")]
# the budgets and the goal of a campaign (``with_help``: as a command that runs many, or continues one, tells them)
MaxTrialsOption = Annotated[int | None, typer.Option("--max-trials", help="Trial budget.")]
BudgetHoursOption = Annotated[
    float | None, typer.Option("--budget-hours", help="Lab-time budget, hours (default: 24).")
]
TargetOption = Annotated[
    float | None, typer.Option("--target", help="Stop once a threshold at or below this is measured, uJ/cm^2.")
]
OptimiserSeedOption = Annotated[int | None, typer.Option("--seed", help="Optimiser seed (and the twin's noise seed).")]


def with_help(option, help: str):
    """The ``Annotated`` option type ``option`` (one of this module's) with the help text ``help``:
    the same option (name, type, settings), told as one command uses it."""
    kind, info = get_args(option)
    told = copy.copy(info)
    told.help = help
    return Annotated[kind, told]


#: The options that say which catalog a command reads, by parameter name (as ``opened_catalog`` takes them).
_CATALOG_OPTIONS = {
    "catalog": CatalogOption,
    "api_key": ApiKeyOption,
    "data_dir": DataDirOption,
    "config": ConfigOption,
}


def reads_catalog(fn):
    """A command that reads the catalog: ``fn``'s own arguments and options, then ``--catalog``,
    ``--api-key``, ``--data-dir`` and ``--config``, then ``fn``'s ``--json`` if it has one.

    ``fn`` takes the four as ``**catalog_args`` and opens the catalog with ``opened_catalog(**catalog_args)``.
    """
    own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    at = next((i for i, p in enumerate(own) if p.name == "json_out"), len(own))
    added = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=option)
        for name, option in _CATALOG_OPTIONS.items()
    ]

    @functools.wraps(fn)
    def command(**kwargs):
        return fn(**kwargs)

    command.__signature__ = inspect.Signature([*own[:at], *added, *own[at:]], return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return command


def command_group(help: str) -> typer.Typer:
    """A Typer app for a group of commands: no arguments show its help; help texts are plain text."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)


def fail(exc: Exception) -> None:
    """One line ``error: ...`` on stderr, exit status 2 (never a traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(code=2)


def interrupted(exc: PlanInterrupted) -> None:
    """A plan or campaign stopped by Ctrl+C or SIGTERM: one line, exit status 130 (SIGINT) or 143 (SIGTERM).

    ``run_plan(..., exit_on_interrupt=True)`` has left both signals ignored, so that no traceback
    from closing the catalog or the interpreter's shutdown follows the line.
    """
    Console(stderr=True).print(f"[bold yellow]interrupted:[/] {escape(str(exc))}", soft_wrap=True)
    raise typer.Exit(code=exc.exit_code)


@contextlib.contextmanager
def command_errors(*also: type[Exception]) -> Iterator[None]:
    """The block's errors as a command ends on them: ``PlanInterrupted`` -> ``interrupted`` (exit 130/143);
    ``GainloopError`` and the exception types ``also`` -> ``fail`` (one line, exit 2)."""
    try:
        yield
    except typer.Exit:
        raise  # the block has ended the command itself
    except PlanInterrupted as exc:
        interrupted(exc)
    except (GainloopError, *also) as exc:
        fail(exc)


def load_config(config: Path | None):
    """The config file's ``GainloopConfig`` (defaults everywhere without a file; ``ConfigError`` if bad)."""
    from gainloop.config import load_config as load

    return load(config)


def pick(given, from_config):
    """The command line's value if given (not None), else the config file's."""
    return given if given is not None else from_config


def bench_file_choice(twin: bool, bench: Path | None, configured: Path | None) -> Path | None:
    """The bench file of ``--twin`` / ``--bench FILE``, else the config's ``configured`` (None: the twin).

    ``GainloopError`` if both options are given."""
    if twin and bench is not None:
        raise GainloopError("choose one of --twin and --bench FILE")
    if twin:
        return None
    return pick(bench, configured)


def check_budget_hours(hours: float | None) -> None:
    """``GainloopError`` unless ``--budget-hours`` is left out or a finite positive number of hours."""
    if hours is not None and not (math.isfinite(hours) and hours > 0):
        raise GainloopError(f"--budget-hours must be a positive number of hours, got {hours!r}")


def catalog_target(conf, catalog: str | None, data_dir: Path | None, api_key: str | None):
    """``(uri, data_dir, api_key)`` of the options, else of ``conf``'s [catalog] table."""
    return (
        pick(catalog, conf.catalog.uri),
        pick(data_dir, conf.catalog.data_dir),
        pick(api_key, os.environ.get(conf.catalog.api_key_env)),
    )


def open_catalog(
    catalog: str | None, data_dir: Path | None, api_key: str | None, conf=None, *, announce: bool = True, **options
):
    """The ``Catalog`` of the options / the config (see the module doc); ``options`` go to ``Catalog``.

    On first use of an embedded catalog, says on stderr where its folder is (unless not ``announce``).
    """
    from gainloop.catalog import Catalog
    from gainloop.catalog import data_dir as resolve_data_dir
    from gainloop.running import signals_deferred

    if conf is not None:
        catalog, data_dir, api_key = catalog_target(conf, catalog, data_dir, api_key)
    folder_is_new = catalog is None and not (resolve_data_dir(data_dir) / "catalog").exists()
    with signals_deferred():  # a catalog is opened whole (or not at all) when Ctrl+C comes meanwhile
        cat = Catalog(catalog, data_dir_path=data_dir, api_key=api_key, **options)
    if folder_is_new and announce:
        err_console.print(f"gainloop catalog: {cat.location}", highlight=False)
    return cat


@contextlib.contextmanager
def opened_catalog(
    catalog: str | None,
    data_dir: Path | None,
    api_key: str | None,
    config: Path | None = None,
    *,
    conf=None,
    also: tuple[type[Exception], ...] = (),
    **options,
):
    """The command's catalog (``open_catalog`` of the options, ``conf`` or else the ``config`` file),
    open for the block and closed after it; errors of loading the config, of opening the catalog and
    of the block end the command as ``command_errors(*also)`` says."""
    with command_errors(*also):
        if conf is None:
            conf = load_config(config)
        with open_catalog(catalog, data_dir, api_key, conf, **options) as cat:
            yield cat


def print_table(console, table) -> None:
    """Print a rich table whole: into a file or a pipe (no terminal) at its natural width, never squeezed to
    the 80 columns rich assumes there (its number columns shrank to nothing); in a terminal, to its width."""
    from rich.measure import Measurement

    if console.is_terminal:
        console.print(table)
        return
    natural = Measurement.get(console, console.options.update_width(100_000), table).maximum
    before = console.width
    console.width = max(before, natural)
    try:
        console.print(table)
    finally:
        console.width = before


def print_json(obj) -> None:
    """``obj`` as one line of JSON on stdout; a float that is not finite is written as null."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    def refuse(value):
        raise TypeError(f"not JSON serialisable: {value!r}")

    sys.stdout.write(json.dumps(clean(obj), default=refuse) + "\n")


def number(value) -> str:
    """A float to 4 significant digits (``nan``, ``inf`` as such); anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def with_error(value, err) -> str:
    """``93.9 +- 4.9``: the value rounded where its error's second significant digit is."""
    try:
        v, e = float(value), float(err)
    except (TypeError, ValueError):
        return f"{value} +- {err}"
    if not (math.isfinite(v) and math.isfinite(e) and e > 0):
        return f"{number(v)} +- {number(e)}"
    decimals = max(0, 1 - math.floor(math.log10(e)))
    if decimals > 6:
        return f"{v:.3g} +- {e:.2g}"
    return f"{v:.{decimals}f} +- {e:.{decimals}f}"


def bluesky_prints_to_stderr(json_out: bool):
    """In --json mode, what bluesky prints while a plan runs (pause and abort notices) goes to stderr.

    The RunEngine's own log (a traceback for an abort or a failed plan) is silenced: the CLI
    says what happened in one line.
    """
    logging.getLogger("bluesky").setLevel(logging.CRITICAL)
    return contextlib.redirect_stdout(sys.stderr) if json_out else contextlib.nullcontext()


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


def bench_command(fn):
    """A command that drives the bench (measure, campaign run|resume, demo): Ctrl+C or SIGTERM before
    its plan runs (the plan has its own handling, ``gainloop.running.run_plan``) close the blocks it
    is in (a connected bench is made safe), say so in one line and exit 130 (SIGINT) or 143
    (SIGTERM) at once -- without waiting for threads a half-opened catalog may have started."""

    @functools.wraps(fn)
    def command(*args, **kwargs):
        import signal

        if threading.current_thread() is not threading.main_thread():
            return fn(*args, **kwargs)
        if _process_ends_with_command:
            _dispatcher_exits_quickly()
        saved = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return fn(*args, **kwargs)
        except _Stopped as stop:
            for sig in saved:
                signal.signal(sig, signal.SIG_IGN)
            what = "terminated (SIGTERM)" if stop.signal_name == "SIGTERM" else "interrupted (Ctrl+C)"
            Console(stderr=True).print(
                f"[bold yellow]{what}[/] before the plan started: nothing was measured", highlight=False
            )
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(143 if stop.signal_name == "SIGTERM" else 130)
        finally:
            for sig, handler in saved.items():
                # the gainloop process ends with the command: keep the signals ignored where the
                # plan's end left them so (``run_plan(..., exit_on_interrupt=True)``); a command
                # called from Python (a test's CliRunner, a notebook) gives its caller back the
                # handlers it found -- an ignored SIGTERM would be inherited by every process the
                # caller starts afterwards, which could then not be stopped with it
                if not _process_ends_with_command or signal.getsignal(sig) is _on_stop_signal:
                    signal.signal(sig, handler)

    return command


def _dispatcher_exits_quickly() -> None:
    """ophyd's event dispatcher runs a debug-monitor thread that sleeps 1 s between looks at its callback
    queues, and ophyd's exit handler joins it: every bench command ended up to 1 s after its last line. In the
    ``gainloop`` process it looks 10 times a second instead (a few queue sizes read: no measurable CPU), so
    the process ends within 0.1 s of its command."""
    import ophyd

    dispatcher = ophyd.cl.get_dispatcher()
    if dispatcher is not None and hasattr(dispatcher, "debug_monitor_interval"):
        dispatcher.debug_monitor_interval = 0.1


#: True in the ``gainloop`` console script (``cli.main``): the process exits when its command ends.
_process_ends_with_command = False


def process_ends_with_command() -> None:
    """Say that this process is the ``gainloop`` command itself and exits when the command ends
    (``cli.main``): a bench command then leaves Ctrl+C and SIGTERM ignored after its plan, so that
    no traceback of the interpreter's shutdown follows its last line."""
    global _process_ends_with_command
    _process_ends_with_command = True


#: The exit status ``end_without_teardown`` ends the process with (set by ``cli.main`` when its command ends).
_exit_status = 1


def set_exit_status(status: int) -> None:
    global _exit_status
    _exit_status = int(status)


def end_without_teardown() -> None:
    """Registered by ``cli.main`` before anything else (``atexit``), so that it runs last: after the command
    has returned, the interpreter has waited for its non-daemon threads and every other exit handler has run
    (ophyd's dispatcher, libca's context, thread pools, child processes), it flushes the log handlers and the
    standard streams and ends the process with the command's status (``os._exit``). What it skips is the
    interpreter's teardown of the module graph (torch, tiled's server, dask: about 1 s of CPU on every
    command), which does nothing a user needs."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(_exit_status)
