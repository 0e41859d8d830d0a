"""``gainloop qserver start``: bluesky-queueserver's RE Manager on gainloop's plans and devices.

Errors (a bad setting, Redis or the catalog away) are printed as one line
``error: ...`` on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from core.errors import GainloopError
from gainloop.cli_common import (
    BenchFileOption,
    ConfigOption,
    DataDirOption,
    HostOption,
    TwinSeedOption,
    bench_file_choice,
    catalog_target,
    command_errors,
    command_group,
    load_config,
    open_catalog,
    pick,
    with_help,
)

__all__ = ["qserver_app"]

qserver_app = command_group("Run gainloop's plans from bluesky-queueserver (a queue in Redis, driven over 0MQ).")

_err = Console(stderr=True, soft_wrap=True)

CatalogOption = Annotated[
    str | None,
    typer.Option("--catalog", help="Tiled server URI, its API key in $TILED_API_KEY (default: the embedded catalog)."),
]
RedisOption = Annotated[
    str | None,
    typer.Option(
        "--redis", help="Redis address: HOST:PORT or HOST:PORT/DB (default 127.0.0.1:6379).", show_default=False
    ),
]
RedisPrefixOption = Annotated[
    str | None,
    typer.Option(
        "--redis-prefix",
        help="Prefix of the manager's Redis keys, one per manager (default gainloop).",
        show_default=False,
    ),
]


def _redis_reachable(addr: str, timeout_s: float = 2.0) -> None:
    """Fail fast with a clear message when nothing listens at the Redis address (HOST:PORT or HOST:PORT/DB)."""
    hostport = addr.split("/", 1)[0]
    host, _, port = hostport.rpartition(":") if hostport.count(":") == 1 else (hostport, "", "6379")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 6379)), timeout=timeout_s):
            return
    except (OSError, ValueError) as exc:
        raise GainloopError(
            f"cannot reach Redis at {addr}: {exc}. The queueserver keeps its queue in Redis: start it "
            "(e.g. redis-server --bind 127.0.0.1) or pass --redis HOST:PORT"
        ) from None


StartDataDirOption = with_help(
    DataDirOption, "Data folder: embedded catalog, write backups (default: $GAINLOOP_DATA_DIR)."
)
StartHostOption = with_help(HostOption, "Interface the 0MQ control and info sockets bind (default 127.0.0.1 only).")


@qserver_app.command("start")
def start(
    twin: Annotated[bool, typer.Option("--twin", help="Drive the in-process twin bench (default).")] = False,
    bench: BenchFileOption = None,
    seed: TwinSeedOption = None,
    catalog: CatalogOption = None,
    data_dir: StartDataDirOption = None,
    host: StartHostOption = None,
    control_port: Annotated[
        int | None,
        typer.Option(
            "--control-port", help="0MQ control port, clients connect here (default 60615).", show_default=False
        ),
    ] = None,
    info_port: Annotated[
        int | None,
        typer.Option("--info-port", help="0MQ port publishing the console output (default 60625).", show_default=False),
    ] = None,
    redis: RedisOption = None,
    redis_prefix: RedisPrefixOption = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", help="Folder of the permissions and plan/device lists (default: <data folder>/qserver)."
        ),
    ] = None,
    print_command: Annotated[
        bool, typer.Option("--print-command", help="Write the files, print the manager's command and exit.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Start the RE Manager; open its environment and submit plans with bluesky-queueserver-api or `qserver`.

    The sockets, Redis and state folder can come from the config file's [qserver] table, the
    devices from [bench] and the catalog from [catalog] (its key from the variable it names).
    """
    import shlex

    from gainloop.catalog import data_dir as resolve_data_dir
    from gainloop.queueserver import (
        ENV_BENCH_FILE,
        ENV_CATALOG_URI,
        ENV_TWIN_SEED,
        ManagerSettings,
        ProfileSettings,
        manager_argv,
        prepare,
    )

    with command_errors(ValueError, OSError):
        conf = load_config(config)
        bench = bench_file_choice(twin, bench, conf.bench.file)
        q = conf.qserver
        host, control_port, info_port = (
            pick(host, q.host),
            pick(control_port, q.control_port),
            pick(info_port, q.info_port),
        )
        redis, redis_prefix, state_dir = (
            pick(redis, q.redis),
            pick(redis_prefix, q.redis_prefix),
            pick(state_dir, q.state_dir),
        )
        seed = pick(seed, conf.bench.twin_seed)
        catalog, data_dir, api_key = catalog_target(conf, catalog, data_dir, None)
        folder = resolve_data_dir(data_dir)
        profile = ProfileSettings(
            catalog_uri=catalog,
            data_dir=str(folder),
            bench_file=str(bench.resolve()) if bench is not None else None,
            twin_seed=seed,
        )
        if bench is not None and not bench.is_file():
            raise GainloopError(f"--bench names no file: {bench}")
        settings = ManagerSettings(
            state_dir=state_dir if state_dir is not None else folder / "qserver",
            host=host,
            control_port=control_port,
            info_port=info_port,
            redis_addr=redis,
            redis_prefix=redis_prefix,
            profile=profile,
        )
        location = f"embedded in {folder / 'catalog'}"
        if not print_command:
            _redis_reachable(redis)
            if catalog is not None:  # the key and the address, checked before the worker needs them
                with open_catalog(catalog, folder, api_key) as checked:
                    location = checked.location  # (the URI without its API key)
        prepare(settings)
        argv = manager_argv(settings)
        if print_command:
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in profile.as_environ().items())
            typer.echo(f"{env} {shlex.join(argv)}")
            return
    _warn_unfinished_item(redis, redis_prefix)
    _err.print(
        f"gainloop qserver: RE Manager at {settings.control_addr} (console {settings.info_addr}), "
        f"Redis {redis} prefix {redis_prefix!r}, devices {bench or 'twin'}, catalog {location}",
        highlight=False,
    )
    # the worker reads its settings from these variables only (the key stays in the environment,
    # as $TILED_API_KEY, never on a command line or in a file)
    env = {k: v for k, v in os.environ.items() if k not in (ENV_CATALOG_URI, ENV_BENCH_FILE, ENV_TWIN_SEED)}
    if api_key is not None:
        env["TILED_API_KEY"] = api_key
    from gainloop.queueserver import supervise_manager

    code = supervise_manager(
        argv,
        {**env, **profile.as_environ()},
        settings.control_addr,
        say=lambda line: _err.print(f"gainloop qserver: {line}", highlight=False),
    )
    raise typer.Exit(code=code)


def _warn_unfinished_item(redis: str, redis_prefix: str) -> None:
    """Say so when the last manager of this prefix died in the middle of an item (its outcome is lost)."""
    from gainloop.queueserver import read_queue_state

    try:
        running = read_queue_state(redis, redis_prefix).running
    except GainloopError:
        return  # the manager reports Redis problems itself
    if running.get("item_uid"):
        _err.print(
            f"gainloop qserver: item {running['item_uid']} ({running.get('name', '?')}) was running when the last "
            "manager stopped; the queueserver will record it as 'unknown': it counts as a success only once "
            "`gainloop qserver reconcile` finds its runs stopped with success in the catalog",
            highlight=False,
        )


@qserver_app.command("reconcile")
def reconcile_command(
    catalog: CatalogOption = None,
    data_dir: DataDirOption = None,
    redis: RedisOption = None,
    redis_prefix: RedisPrefixOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcomes as one JSON line.")] = False,
    config: ConfigOption = None,
) -> None:
    """The outcome of every item in the queue's history; items the queueserver lost track of
    ('unknown') are checked against their runs' stop documents in the catalog.

    Exit status 0 when every item is accounted for (success, failed or stopped), 1 when an item is
    still 'interrupted' or 'unknown' (it did not run to its end: resume or submit it again).
    """
    import json

    from gainloop.queueserver import read_queue_state, reconcile

    with command_errors(ValueError, OSError):
        conf = load_config(config)
        state = read_queue_state(pick(redis, conf.qserver.redis), pick(redis_prefix, conf.qserver.redis_prefix))
        with open_catalog(catalog, data_dir, None, conf, announce=False) as cat:
            outcomes = reconcile(state.history, cat)
    unresolved = [o for o in outcomes if o.outcome in ("interrupted", "unknown")]
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "items": [o.as_dict() for o in outcomes],
                    "queued": len(state.queue),
                    "running": state.running.get("item_uid"),
                    "successes": sum(o.counted_as_success for o in outcomes),
                    "unresolved": len(unresolved),
                }
            )
        )
    else:
        for o in outcomes:
            typer.echo(f"{o.item_uid}  {o.name:<18} queue: {o.queue_exit_status:<9} -> {o.outcome:<11} {o.detail}")
        typer.echo(
            f"{sum(o.counted_as_success for o in outcomes)} of {len(outcomes)} items succeeded; "
            f"{len(unresolved)} unresolved; {len(state.queue)} queued"
        )
    if unresolved:
        raise typer.Exit(code=1)
