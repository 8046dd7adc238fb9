"""Fixtures for the HTTP tests: a registry with a pushed bank, and a TestClient over it.

The registry (SQLite + file store, a movie_tagging bank of four random rank-8 PEFT
adapters for the tiny Llama, a tiny embedder) is built once per session and copied
into each test's tmp_path, so every test can change it freely.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.support import TASK, movie_user, push_folders, write_anchor_bank

READ_TOKEN = "read-token-0123456789"
ADMIN_TOKEN = "admin-token-0123456789"
READ = {"Authorization": f"Bearer {READ_TOKEN}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass(frozen=True)
class Registry:
    """Where one test's registry lives."""

    root: Path
    db_url: str
    store_url: str
    cache_dir: Path
    store_dir: Path


def _registry_at(root: Path) -> Registry:
    from mta.registry.context import RegistryContext

    db_url, store_url, cache_dir = RegistryContext.folder_locations(root)
    return Registry(root, db_url, store_url, cache_dir, store_dir=root / "store")


def populate(
    registry_db_url: str,
    store_url: str,
    cache_dir: Path,
    work: Path,
    shapes: dict[str, tuple[int, int]],
    base_model: Path,
    embedder: Path,
) -> None:
    """Init a registry, push the four-anchor bank, add user 'alice' and fuse her."""
    from mta.registry import service
    from mta.registry.context import RegistryContext

    dirs, profiles = write_anchor_bank(work / "anchors", shapes)
    with RegistryContext.open(registry_db_url, store_url, cache_dir) as ctx:
        service.init_registry(ctx)
        push_folders(ctx, dirs, profiles, base_model, embedder)
        service.add_user(ctx, user_id="alice", task=TASK, profile=movie_user("alice", 6, seed=1))
        service.fuse_user(ctx, "alice")


@pytest.fixture(scope="session")
def registry_template(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_shapes: dict[str, tuple[int, int]],
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
) -> Registry:
    """A registry built once: bank v1 with anchors a1-a4, user alice with a recipe."""
    template = _registry_at(tmp_path_factory.mktemp("server-registry"))
    populate(
        template.db_url,
        template.store_url,
        template.cache_dir,
        template.root,
        tiny_shapes,
        tiny_model_dir,
        tiny_embedder_dir,
    )
    return template


@pytest.fixture
def registry(registry_template: Registry, tmp_path: Path) -> Registry:
    """This test's own copy of the template registry."""
    root = tmp_path / "registry"
    shutil.copytree(registry_template.root, root, ignore=shutil.ignore_patterns("cache"))
    return _registry_at(root)


def make_client(registry: Registry, **overrides: object) -> TestClient:
    """A TestClient (not yet entered) over an app serving `registry` with both tokens."""
    from mta.server.app import create_app
    from mta.server.auth import TokenSet
    from mta.server.settings import ServerSettings

    settings = ServerSettings(
        db_url=registry.db_url,
        store_url=registry.store_url,
        cache_dir=registry.cache_dir,
        tokens=TokenSet(read=(READ_TOKEN,), admin=(ADMIN_TOKEN,)),
    )
    settings = ServerSettings(**{**settings.__dict__, **overrides})
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture
def client(registry: Registry) -> Iterator[TestClient]:
    """A client of a server with a read token and an admin token over this test's registry."""
    with make_client(registry) as test_client:
        yield test_client
