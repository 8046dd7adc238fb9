"""Shared option aliases, and the registry context that the global options resolve into.

`--db`, `--store` and `--cache-dir` are options of the root command only
(`mta --db URL user list`): declared once, resolved once by the root callback, and read
by every registry command from the root context. A flag wins over the environment
(`MTA_DB_URL`, `MTA_STORE_URL`, `MTA_CACHE_DIR`), which wins over the defaults under
`.mta/` (`RegistryContext.open`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext

_GLOBAL = "Global options"

# The largest value an integer option takes (`fits_int64`). Seeds reach torch and counts reach
# tensor sizes and SQL INTEGER columns, all signed 64-bit: a larger value (a typo such as
# --seed 99999999999999999999999) would overflow deep inside, so it is refused as a usage
# error (exit 2) before any work. Equal to the registry's MAX_SEED (tests/cli check it); not
# imported from there, which would load the registry's entities for `mta --help`.
MAX_INT = 2**63 - 1


def at_most(limit: int) -> Callable[[int | None], int | None]:
    """A typer callback that refuses a value above `limit` as a usage error (exit 2).

    Used rather than typer's `max=`, which would print the 19-digit range in the help of
    every integer option for a bound that only typos reach.
    """

    def check(value: int | None) -> int | None:
        if value is not None and value > limit:
            raise typer.BadParameter(f"{value} is more than {limit}, the largest value it takes")
        return value

    return check


fits_int64 = at_most(MAX_INT)

# The root options that say where the registry is: parameter name -> (flag, variable).
LOCATION_OPTIONS = {
    "db": ("--db", "MTA_DB_URL"),
    "store": ("--store", "MTA_STORE_URL"),
    "cache_dir": ("--cache-dir", "MTA_CACHE_DIR"),
}

DbUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--db",
        envvar=LOCATION_OPTIONS["db"][1],
        show_envvar=True,
        help="Registry database URL (default: sqlite:///.mta/registry.db).",
        rich_help_panel=_GLOBAL,
    ),
]
StoreUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=LOCATION_OPTIONS["store"][1],
        show_envvar=True,
        help="Blob store URL, file://PATH or s3://BUCKET/PREFIX (default: file://.mta/store).",
        rich_help_panel=_GLOBAL,
    ),
]
# A str, not a Path: typer turns an empty --cache-dir into Path("."), which could not be refused.
CacheDirOpt = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        envvar=LOCATION_OPTIONS["cache_dir"][1],
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


def check_locations(values: dict[str, str | None]) -> None:
    """Refuse an empty `--db`, `--store` or `--cache-dir` (it would fall back to the default).

    Raises:
        typer.BadParameter: a usage error (exit 2) naming the option.
    """
    for key, (flag, variable) in LOCATION_OPTIONS.items():
        value = values.get(key)
        if value is not None and not value.strip():
            raise typer.BadParameter(
                f"must not be empty (leave it out to use {variable} or the default)",
                param_hint=f"'{flag}'",
            )


def locations(ctx: typer.Context) -> dict[str, Any]:
    """The registry location the root options resolved to; None means "use the default"."""
    root = ctx.find_root()
    return {key: root.params.get(key) for key in LOCATION_OPTIONS}


def typed_locations(ctx: typer.Context) -> dict[str, Any]:
    """The root's location options typed on the command line (not from the environment)."""
    root = ctx.find_root()
    typed = {}
    for key in LOCATION_OPTIONS:
        source = root.get_parameter_source(key)
        # Typer vendors its own click, so compare the enum by name rather than by class.
        typed[key] = (
            root.params.get(key) if source is not None and source.name == "COMMANDLINE" else None
        )
    return typed


def check_device(value: str | None) -> str | None:
    """A --device spelled auto, cpu, cuda or cuda:N (or unset), else a usage error."""
    from mta.devices import DeviceError, check_device_spec

    if value is None:
        return None
    try:
        return check_device_spec(value)
    except DeviceError as error:
        raise typer.BadParameter(str(error)) from None


DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        callback=check_device,
        help="Where the model runs: auto (CUDA when present), cpu, cuda or cuda:N "
        "[default: MTA_DEVICE, else auto]. bf16 on CUDA, fp32 on the CPU.",
        show_default=False,
    ),
]


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
