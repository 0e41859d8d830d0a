"""What every ``gainloop`` command shares: the config file, the catalog options, one-line errors.

Every command takes ``--config FILE`` (else ``$GAINLOOP_CONFIG``); an option given on the
command line wins over the file, the file over the built-in default. The catalog of a
command is ``--catalog`` / ``--data-dir`` / ``--api-key``, else the file's ``[catalog]``
table (its key from the environment variable the table names), else the embedded one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

__all__ = [
    "ApiKeyOption",
    "CatalogOption",
    "ConfigOption",
    "DataDirOption",
    "JsonOption",
    "catalog_target",
    "fail",
    "load_config",
    "open_catalog",
    "pick",
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


def fail(exc: Exception) -> None:
    """One line ``error: ...`` on stderr, exit status 2 (never a traceback)."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(code=2)


def load_config(config: Path | None):
    """The config file's ``GainloopConfig`` (defaults everywhere without a file; ``ConfigError`` if bad)."""
    from gainloop.config import load_config as load

    return load(config)


def pick(given, from_config):
    """The command line's value if given (not None), else the config file's."""
    return given if given is not None else from_config


def catalog_target(conf, catalog: str | None, data_dir: Path | None, api_key: str | None):
    """``(uri, data_dir, api_key)`` of the options, else of ``conf``'s ``[catalog]`` table."""
    return (
        pick(catalog, conf.catalog.uri),
        pick(data_dir, conf.catalog.data_dir),
        pick(api_key, os.environ.get(conf.catalog.api_key_env)),
    )


def open_catalog(catalog: str | None, data_dir: Path | None, api_key: str | None, conf=None, **options):
    """The ``Catalog`` of the options / the config (see the module doc); ``options`` go to ``Catalog``.

    On first use of an embedded catalog, says on stderr where its folder is.
    """
    from gainloop.catalog import Catalog
    from gainloop.catalog import data_dir as resolve_data_dir
    from gainloop.running import signals_deferred

    if conf is not None:
        catalog, data_dir, api_key = catalog_target(conf, catalog, data_dir, api_key)
    folder_is_new = catalog is None and not (resolve_data_dir(data_dir) / "catalog").exists()
    with signals_deferred():  # a catalog is opened whole (or not at all) when Ctrl+C comes meanwhile
        cat = Catalog(catalog, data_dir_path=data_dir, api_key=api_key, **options)
    if folder_is_new:
        err_console.print(f"gainloop catalog: {cat.location}", highlight=False)
    return cat
