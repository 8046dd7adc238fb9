"""Shared option aliases, and the registry context that the global options resolve into.

`--db`, `--store` and `--cache-dir` are options of the root command only
(`mta --db URL user list`): declared once, resolved once by the root callback, and read
by every registry command from the root context. A flag wins over the environment
(`MTA_DB_URL`, `MTA_STORE_URL`, `MTA_CACHE_DIR`), which wins over the defaults under
`.mta/` (`RegistryContext.open`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext

_GLOBAL = "Global options"

DbUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar="MTA_DB_URL",
        show_envvar=True,
        help="Registry database URL (default: sqlite:///.mta/registry.db).",
        rich_help_panel=_GLOBAL,
    ),
]
StoreUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="MTA_STORE_URL",
        show_envvar=True,
        help="Blob store URL, file://PATH or s3://BUCKET/PREFIX (default: file://.mta/store).",
        rich_help_panel=_GLOBAL,
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="MTA_CACHE_DIR",
        show_envvar=True,
        help="Local cache of materialized adapters (default: .mta/cache).",
        rich_help_panel=_GLOBAL,
    ),
]
BaseModelOpt = Annotated[
    str | None,
    typer.Option(
        "--base-model",
        envvar="MTA_BASE_MODEL",
        show_envvar=True,
        help="Base model: 'smollm2' (bundled), a local folder or a hub id.",
    ),
]
EmbedderOpt = Annotated[
    str | None,
    typer.Option(
        "--embedder",
        envvar="MTA_EMBEDDER",
        show_envvar=True,
        help="Sentence-transformers embedder: alias, local folder or hub id.",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON document on stdout instead of tables."),
]


def locations(ctx: typer.Context) -> dict[str, Any]:
    """The registry location the root options resolved to; None means "use the default"."""
    root = ctx.find_root()
    return {key: root.params.get(key) for key in ("db", "store", "cache_dir")}


def typed_locations(ctx: typer.Context) -> dict[str, Any]:
    """The root's location options typed on the command line (not from the environment)."""
    root = ctx.find_root()
    typed = {}
    for key in ("db", "store", "cache_dir"):
        source = root.get_parameter_source(key)
        # Typer vendors its own click, so compare the enum by name rather than by class.
        typed[key] = (
            root.params.get(key) if source is not None and source.name == "COMMANDLINE" else None
        )
    return typed


@contextmanager
def registry_context(ctx: typer.Context) -> Iterator[RegistryContext]:
    """Open the registry the root options point at, and close it when the command ends."""
    from mta.registry.context import RegistryContext

    where = locations(ctx)
    registry = RegistryContext.open(where["db"], where["store"], where["cache_dir"])
    try:
        yield registry
    finally:
        registry.close()
