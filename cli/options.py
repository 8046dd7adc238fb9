"""Shared option aliases, and the registry context that the global options resolve into.

`--db`, `--store` and `--cache-dir` are accepted both on the root command
(`mta --db URL user list`) and on each registry command (`mta user list --db URL`).
A flag typed on the command wins over one typed on the root, which wins over the
environment (`MTA_DB_URL`, `MTA_STORE_URL`, `MTA_CACHE_DIR`), which wins over the
defaults under `.mta/`.
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

_KEYS = ("db", "store", "cache_dir")


def _typed_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether the user typed the option `name` on this context's command line."""
    # Typer vendors its own click, so compare the enum by name rather than by class.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def resolve_locations(
    ctx: typer.Context, db: str | None, store: str | None, cache_dir: Path | None
) -> dict[str, Any]:
    """Merge a command's --db/--store/--cache-dir with the root's (the command's win).

    Args:
        ctx: the command's context; its parents hold the root options.
        db: the command's --db value (may come from the environment).
        store: the command's --store value.
        cache_dir: the command's --cache-dir value.

    Returns:
        {"db": ..., "store": ..., "cache_dir": ...}; None means "use the default".
    """
    values: dict[str, Any] = {"db": db, "store": store, "cache_dir": cache_dir}
    root = ctx.find_root()
    for key in _KEYS:
        if key in ctx.params and _typed_on_command_line(ctx, key):
            continue
        root_value = root.params.get(key) if root is not ctx else None
        # The root's value counts when typed there, or when the command has none at all.
        if root_value is not None and (_typed_on_command_line(root, key) or values[key] is None):
            values[key] = root_value
    return values


@contextmanager
def registry_context(
    ctx: typer.Context,
    db: str | None = None,
    store: str | None = None,
    cache_dir: Path | None = None,
) -> Iterator[RegistryContext]:
    """Open the registry the options point at, and close it when the command ends."""
    from mta.registry.context import RegistryContext

    where = resolve_locations(ctx, db, store, cache_dir)
    registry = RegistryContext.open(where["db"], where["store"], where["cache_dir"])
    try:
        yield registry
    finally:
        registry.close()
