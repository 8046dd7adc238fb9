"""The registry an evaluation writes to: a given one, or a private one made for the run."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mta.registry.context import RegistryContext


@contextmanager
def eval_registry(
    db_url: str | None, store_url: str | None, workdir: Path | None
) -> Iterator[tuple[RegistryContext, str]]:
    """The registry the evaluation writes to, and how to describe it.

    With ``db_url``/``store_url`` that registry is used (it must be initialized). Otherwise
    a private one is created under ``workdir`` (kept) or a temporary folder (removed).
    """
    from mta.registry.service import init_registry

    if db_url or store_url:
        ctx = RegistryContext.open(db_url, store_url)
        try:
            yield ctx, ctx.db_url
        finally:
            ctx.close()
        return
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="mta-eval-"))
    root.mkdir(parents=True, exist_ok=True)
    ctx = RegistryContext.in_folder(root)
    try:
        init_registry(ctx)
        yield ctx, (f"private registry kept at {root}" if workdir else "private (discarded)")
    finally:
        ctx.close()
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)
