"""DELETE over HTTP leaves nothing of the user: not on disk, not in memory, not after races."""

from __future__ import annotations

import threading

from mta.registry.users.delete import user_cache_prefix
from tests.server.conftest import ADMIN, READ, Registry, make_client


def _user_cache_entries(registry: Registry, user_id: str) -> list[str]:
    folder = registry.cache_dir / "adapters"
    if not folder.exists():
        return []
    return [p.name for p in folder.iterdir() if user_cache_prefix(user_id) in p.name]


def test_delete_drops_the_users_archives_from_memory(registry: Registry) -> None:
    with make_client(registry) as client:
        assert client.get("/v1/users/alice/adapter", headers=READ).status_code == 200
        state = client.app.state.mta
        assert len(state.archives) == 1 and _user_cache_entries(registry, "alice")
        assert client.delete("/v1/users/alice", headers=ADMIN).status_code == 200
        assert len(state.archives) == 0 and state.archives.total_bytes == 0
        assert not _user_cache_entries(registry, "alice")
        gone = client.get("/v1/users/alice/adapter", headers=READ)
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"


def test_a_fetch_that_races_the_delete_caches_nothing(registry: Registry, monkeypatch) -> None:
    from mta.registry import service

    real_export = service.export_user
    with make_client(registry) as client:
        state = client.app.state.mta

        def export_then_deleted(ctx, identity, *args, **kwargs):
            export = real_export(ctx, identity, *args, **kwargs)
            # The whole DELETE completes between the export and the archive's caching.
            deleted = client.delete(f"/v1/users/{identity.user_id}", headers=ADMIN)
            assert deleted.status_code == 200
            return export

        monkeypatch.setattr(service, "export_user", export_then_deleted)
        response = client.get("/v1/users/alice/adapter", headers=READ)
        assert response.status_code == 404
        assert len(state.archives) == 0
        assert not _user_cache_entries(registry, "alice")


def test_concurrent_fetches_during_a_delete_leave_nothing(registry: Registry) -> None:
    with make_client(registry) as client:
        state = client.app.state.mta
        statuses: list[int] = []
        stop = threading.Event()

        def fetch() -> None:
            while not stop.is_set():
                statuses.append(client.get("/v1/users/alice/adapter", headers=READ).status_code)

        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for thread in threads:
            thread.start()
        deleted = client.delete("/v1/users/alice", headers=ADMIN)
        after = [client.get("/v1/users/alice/adapter", headers=READ).status_code for _ in range(3)]
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        assert deleted.status_code == 200
        assert after == [404, 404, 404]
        assert set(statuses) <= {200, 404}  # never a 500 while the user disappears
        assert len(state.archives) == 0
        assert not _user_cache_entries(registry, "alice")


def test_delete_erases_the_id_from_the_sqlite_files_while_the_server_runs(
    registry: Registry,
) -> None:
    from pathlib import Path

    from mta.registry import service
    from mta.registry.context import RegistryContext
    from tests.support import TASK, movie_user

    secret = "zq7-http-erase-4711"
    with RegistryContext.open(registry.db_url, registry.store_url, registry.cache_dir) as ctx:
        service.add_user(ctx, user_id=secret, task=TASK, profile=movie_user(secret, 6))
        service.fuse_user(ctx, secret)
    db = Path(registry.db_url.removeprefix("sqlite:///"))
    files = (db, db.with_name(db.name + "-wal"))

    def holding() -> list[str]:
        return [f.name for f in files if f.exists() and secret.encode() in f.read_bytes()]

    with make_client(registry) as client:
        assert client.get(f"/v1/users/{secret}/adapter", headers=READ).status_code == 200
        assert holding()  # the check can see the id
        assert client.delete(f"/v1/users/{secret}", headers=ADMIN).status_code == 200
        assert holding() == []  # with the server still holding its connections
        assert client.get(f"/v1/users/{secret}", headers=READ).status_code == 404
