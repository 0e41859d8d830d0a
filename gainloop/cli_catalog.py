"""``gainloop catalog ...``: the catalog at scale (a Tiled server on PostgreSQL).

Errors (PostgreSQL away, a bad URI, the port taken, a bad API key) are printed as
one line ``error: ...`` on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from gainloop.cli_common import (
    ApiKeyOption,
    CatalogOption,
    ConfigOption,
    DataDirOption,
    HostOption,
    JsonOption,
    command_errors,
    command_group,
    load_config,
    opened_catalog,
    pick,
    with_help,
)

__all__ = ["catalog_app"]

catalog_app = command_group("Serve the catalog at scale: a Tiled server on PostgreSQL.")


@catalog_app.command("serve")
def serve(
    postgres: Annotated[
        str | None,
        typer.Option(
            "--postgres",
            help="PostgreSQL URI of the catalog database, created if new (default: $GAINLOOP_POSTGRES_URI, "
            "else postgresql://postgres@127.0.0.1:5432/gainloop). Prefer the environment variable for a password.",
        ),
    ] = None,
    host: HostOption = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port to bind (0 picks a free one; default 8000).", show_default=False)
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder for array files (default: <gainloop data folder>/server/<database>)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Single-user API key, letters and digits (default: $GAINLOOP_TILED_API_KEY, else "
            "$TILED_SINGLE_USER_API_KEY, else a random key printed once at start-up).",
            show_default=False,
        ),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            help="Server processes on the one port (default 1; one process serves on one core). More than one "
            "needs --redis.",
            show_default=False,
        ),
    ] = None,
    redis: Annotated[
        str | None,
        typer.Option(
            "--redis",
            help="Redis URI of the streaming cache the processes share (live subscribers, e.g. gainloop watch), "
            "a database of its own per catalog, e.g. redis://127.0.0.1:6379/1 (default: $GAINLOOP_REDIS_URI, "
            "else in memory, one process only).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Start a Tiled server for gainloop's runs on PostgreSQL; every request needs the API key.

    Each option can come from the config file's [server] table (the key from the environment
    variable its api_key_env names, default $GAINLOOP_TILED_API_KEY).
    """
    from gainloop.catalog_server import ENV_API_KEYS, ServerSettings
    from gainloop.catalog_server import serve as run_server

    try:
        with command_errors():
            server = load_config(config).server
            settings = ServerSettings.resolve(
                pick(postgres, server.postgres_uri),
                host=pick(host, server.host),
                port=pick(port, server.port),
                data_dir=pick(data_dir, server.data_dir),
                api_key=api_key,
                api_key_envs=tuple(dict.fromkeys((server.api_key_env, *ENV_API_KEYS))),
                processes=pick(processes, server.processes),
                redis=pick(redis, server.redis_uri),
            )
            run_server(settings)
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles Ctrl-C itself
        raise typer.Exit(code=0) from None


BackupDataDirOption = with_help(DataDirOption, "Data folder whose spool/ to drain (default: $GAINLOOP_DATA_DIR).")


@catalog_app.command("upload-backup")
def upload_backup(
    catalog: CatalogOption = None,
    data_dir: BackupDataDirOption = None,
    api_key: ApiKeyOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Drain the spool now: write the runs waiting in it (the catalog was away, or their process ended
    before its drain) into the catalog; one line per run.

    Runs already complete in the catalog are skipped, partly written ones are rewritten whole,
    runs whose process died mid-run are written as they are (without a stop document), and
    files done leave the spool: running it again changes nothing. Runs a running process is
    still writing are not touched. Exit status 1 if a run failed (its file stays for another try).
    """
    import json

    from gainloop.backup import upload_backup as run_upload

    with opened_catalog(catalog, data_dir, api_key, config, drain_at_open=False) as cat:
        reports = run_upload(cat)
        backup_dir = cat.backup_dir
    counts = {a: sum(r.action == a for r in reports) for a in ("uploaded", "replaced", "skipped", "left", "failed")}
    if json_out:
        print(json.dumps({"backup_dir": str(backup_dir), "counts": counts, "runs": [r.as_dict() for r in reports]}))
    else:
        out = Console(soft_wrap=True, highlight=False)
        for r in reports:
            what = f"run {r.uid}" if r.uid else "file"
            detail = f": {r.detail}" if r.detail else ""
            out.print(f"{escape(r.action)} {what} ({r.n_documents} documents, {escape(r.file)}){escape(detail)}")
        summary = ", ".join(f"{n} {a}" for a, n in counts.items() if n) or "nothing to upload"
        out.print(f"spool {escape(str(backup_dir))}: {summary}")
    if counts["failed"]:
        raise typer.Exit(code=1)
