"""`mta init`: create or migrate the registry schema and create the blob store and cache."""

from __future__ import annotations

from typing import Any

from mta.registry.context import RegistryContext
from mta.registry.db import current_revision, upgrade


def init_registry(ctx: RegistryContext) -> dict[str, Any]:
    """Create or migrate the schema to head and create the store; idempotent.

    Returns:
        {"db_url" (password hidden), "store_url", "cache_dir", "revision", "previous_revision",
        "created": whether the database had no registry before}.
    """
    ctx.store.ensure()
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = current_revision(ctx.engine)
    except Exception:  # noqa: BLE001 - e.g. the SQLite folder does not exist yet
        previous = None
    revision = upgrade(ctx.engine)
    ctx.mark_schema_current()
    return {
        "db_url": ctx.engine.url.render_as_string(hide_password=True),
        "store_url": ctx.store_url,
        "cache_dir": str(ctx.cache_dir),
        "revision": revision,
        "previous_revision": previous,
        "created": previous is None,
    }
