"""Cached adapter identities are served only while nobody has written to the registry."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fastapi.testclient import TestClient

from mta.server.archive import IdentityCache
from tests.server.conftest import ADMIN, READ, Registry


def _write(db: Path) -> None:
    """Commit from another connection, as another thread or process would."""
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE IF NOT EXISTS _probe (x)")
        other.execute("INSERT INTO _probe VALUES (1)")


def test_a_commit_elsewhere_drops_every_entry(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    _write(db)
    cache = IdentityCache(db)
    version, identity = cache.get("alice")
    assert identity is None
    cache.put("alice", version, "identity-a")  # type: ignore[arg-type]
    assert cache.get("alice") == (version, "identity-a")
    _write(db)
    newer, identity = cache.get("alice")
    assert identity is None and newer != version
    cache.put("bob", version, "read-before-the-write")  # type: ignore[arg-type]
    assert cache.get("bob")[1] is None  # stored under a version that has moved on
    cache.close()


def test_a_write_outside_the_server_changes_the_etag(
    client: TestClient, registry: Registry
) -> None:
    from mta.registry import service
    from mta.registry.context import RegistryContext

    etag = client.get("/v1/users/alice/adapter", headers=READ).headers["etag"]
    assert client.get("/v1/users/alice/adapter", headers=READ).headers["etag"] == etag
    # Its own engine and connections, as `mta user fuse` in another process would have.
    with RegistryContext.open(registry.db_url, registry.store_url, registry.cache_dir) as ctx:
        service.fuse_user(ctx, "alice", service.FuseRequest(top_k=1))
    fetched = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": etag})
    assert fetched.status_code == 200 and fetched.headers["etag"] != etag
    client.delete("/v1/users/alice", headers=ADMIN)
    assert client.get("/v1/users/alice/adapter", headers=READ).status_code == 404


def test_an_unreadable_version_serves_and_keeps_nothing(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    _write(db)
    cache = IdentityCache(db)
    version, _ = cache.get("alice")
    cache.put("alice", version, "identity-a")  # type: ignore[arg-type]
    cache.close()  # every later pragma fails, as a busy database would
    assert cache.get("alice") == (None, None)
    cache.put("alice", None, "identity-b")  # type: ignore[arg-type]
    assert cache.get("alice") == (None, None)
