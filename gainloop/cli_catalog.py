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

from gainloop.errors import GainloopError

__all__ = ["catalog_app"]

catalog_app = typer.Typer(help="Serve the catalog at scale: a Tiled server on PostgreSQL.", no_args_is_help=True)

_err = Console(stderr=True, soft_wrap=True)


def _fail(exc: Exception) -> None:
    _err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(code=2)


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
    host: Annotated[str, typer.Option("--host", help="Interface to bind (default 127.0.0.1 only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to bind (0 picks a free one).")] = 8000,
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
) -> None:
    """Start a Tiled server for gainloop's runs on PostgreSQL; every request needs the API key."""
    from gainloop.catalog_server import ServerSettings
    from gainloop.catalog_server import serve as run_server

    try:
        settings = ServerSettings.resolve(postgres, host=host, port=port, data_dir=data_dir, api_key=api_key)
        run_server(settings)
    except GainloopError as exc:
        _fail(exc)
    except KeyboardInterrupt:  # pragma: no cover - uvicorn handles Ctrl-C itself
        raise typer.Exit(code=0) from None


@catalog_app.command("upload-backup")
def upload_backup(
    catalog: Annotated[
        str | None,
        typer.Option("--catalog", help="Tiled server URI (default: the embedded catalog in the data folder)."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data folder whose backup/ to upload (default: $GAINLOOP_DATA_DIR)."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="API key of the Tiled server (default: $TILED_API_KEY).", show_default=False),
    ] = None,
    include_incomplete: Annotated[
        bool,
        typer.Option("--include-incomplete", help="Also write runs with no stop document in the backup, as they are."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON only.")] = False,
) -> None:
    """Write the runs kept in the backup (catalog away during a run) into the catalog; one line per run.

    Runs already complete in the catalog are skipped, partly written ones are rewritten
    whole, and files done move to backup/uploaded/: running it again changes nothing.
    Exit status 1 if a run failed to upload (its file stays for another try).
    """
    import json

    from gainloop.backup import upload_backup as run_upload
    from gainloop.catalog import Catalog

    try:
        with Catalog(catalog, data_dir_path=data_dir, api_key=api_key, warn_pending_backup=False) as cat:
            reports = run_upload(cat, include_incomplete=include_incomplete)
            backup_dir = cat.backup_dir
    except GainloopError as exc:
        _fail(exc)
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
        out.print(f"backup {escape(str(backup_dir))}: {summary}")
    if counts["failed"]:
        raise typer.Exit(code=1)
