"""Several `user adapt` processes writing to one SQLite registry at once all succeed."""

from __future__ import annotations

from pathlib import Path

from mta.registry.context import RegistryContext
from tests.support import check_parallel_adapt


def test_parallel_adapt_on_sqlite(bank_registry: RegistryContext, tmp_path: Path):
    check_parallel_adapt(bank_registry, tmp_path)
