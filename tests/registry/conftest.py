"""Fixtures for registry tests: a SQLite + local-store registry in tmp_path and a pushed bank."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mta.registry.context import RegistryContext
from mta.registry.entities import BankVersion
from mta.tiny import make_tiny_embedder
from tests.registry.registry_env import (
    movie_user,
    push_folders,
    write_anchor_adapters,
    write_users,
)

ANCHOR_IDS = ("a1", "a2", "a3", "a4")


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 64-d sentence-transformers folder (fast stand-in for MiniLM)."""
    return make_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"), dim=64)


def open_registry(
    root: Path, db_url: str | None = None, store_url: str | None = None
) -> RegistryContext:
    """Open and initialize a registry under `root` (SQLite + local store unless given)."""
    from mta.registry.service import init_registry

    ctx = RegistryContext.open(
        db_url or f"sqlite:///{root}/registry.db",
        store_url or f"file://{root}/store",
        root / "cache",
    )
    init_registry(ctx)
    return ctx


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
        folders = write_anchor_adapters(root, tiny_shapes, ids, seed=seed)
        profiles = write_users(root / "profiles.json", [movie_user(i, 8) for i in ids])
        return push_folders(ctx, folders, profiles, tiny_model_dir, tiny_embedder_dir)

    return push


@pytest.fixture
def bank_registry(
    registry: RegistryContext, push_bank_fn: Callable[..., BankVersion]
) -> RegistryContext:
    """A registry holding one pushed movie-tagging bank (v1, four rank-8 anchors)."""
    push_bank_fn(registry)
    return registry
