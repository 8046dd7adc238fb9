"""Fixtures for registry tests: a SQLite + local-store registry in tmp_path and a pushed bank."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.entities import BankVersion
from tests.support import ANCHOR_IDS, open_registry, push_folders, write_anchor_bank


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryContext]:
    """An initialized, empty registry (SQLite in tmp_path + local blob store)."""
    ctx = open_registry(tmp_path / "reg")
    yield ctx
    ctx.close()


@pytest.fixture
def push_bank_fn(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
    tiny_shapes: dict[str, tuple[int, int]],
) -> Callable[..., BankVersion]:
    """`push(ctx, seed=0, ids=ANCHOR_IDS)`: push random rank-8 PEFT anchors as a new version."""

    def push(ctx: RegistryContext, seed: int = 0, ids: tuple[str, ...] = ANCHOR_IDS) -> BankVersion:
        root = tmp_path / f"anchors-{seed}"
        folders, profiles = write_anchor_bank(root, tiny_shapes, ids, items=8, seed=seed)
        return push_folders(ctx, folders, profiles, tiny_model_dir, tiny_embedder_dir)

    return push


@pytest.fixture
def bank_registry(
    registry: RegistryContext, push_bank_fn: Callable[..., BankVersion]
) -> RegistryContext:
    """A registry holding one pushed movie-tagging bank (v1, four rank-8 anchors)."""
    push_bank_fn(registry)
    return registry
