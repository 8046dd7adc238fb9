"""The HTTP ETag and the adapter name change exactly when the exported bytes change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mta.registry import service
from mta.registry.context import RegistryContext
from tests.server.conftest import READ, Registry, make_client
from tests.support import TASK, movie_user, push_folders, write_anchor_bank


def test_etag_tracks_the_exported_bytes(
    registry: Registry,
    tmp_path: Path,
    tiny_shapes: dict[str, tuple[int, int]],
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    seen: dict[str, bytes] = {}
    names: dict[str, str] = {}  # ETag -> the adapter name served with it
    with (
        make_client(registry) as client,
        RegistryContext.open(registry.db_url, registry.store_url, registry.cache_dir) as ctx,
    ):

        def fetch() -> tuple[str, bytes]:
            response = client.get("/v1/users/alice/adapter", headers=READ)
            assert response.status_code == 200
            name = client.get("/v1/users/alice/adapter-name", headers=READ).json()["name"]
            assert response.headers["x-mta-adapter-name"] == name
            names.setdefault(response.headers["etag"], name)
            assert names[response.headers["etag"]] == name
            return response.headers["etag"], response.content

        def changed(label: str) -> None:
            previous = set(names.values())
            etag, body = fetch()
            assert etag not in seen and body not in seen.values(), label
            assert names[etag] not in previous, label  # a new adapter is a new name
            for name in previous:  # and every older name is refused, never served
                version = name.rpartition("~")[2]
                old = client.get(f"/v1/users/alice/adapter?version={version}", headers=READ)
                assert old.status_code == 410, label
            seen[etag] = body

        changed("fused")
        # Registry writes that leave alice's adapter alone keep her ETag (and her bytes).
        service.add_user(ctx, user_id="bob", task=TASK, profile=movie_user("bob", 6))
        service.set_alias(ctx, TASK, 1, "prod")
        etag, body = fetch()
        assert seen.get(etag) == body and len(set(names.values())) == 1
        revalidated = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": etag})
        assert revalidated.status_code == 304

        service.adapt_user(ctx, "alice", service.AdaptRequest(shots=2, max_steps=1))
        changed("new stack")
        service.fuse_user(ctx, "alice", service.FuseRequest(top_k=3))
        changed("re-fused")
        dirs, profiles = write_anchor_bank(tmp_path / "v2", tiny_shapes, seed=5)
        push_folders(ctx, dirs, profiles, tiny_model_dir, tiny_embedder_dir)
        service.fuse_user(ctx, "alice", service.FuseRequest(top_k=3, bank_ref="2"))
        changed("new bank version")


def test_a_fetch_reads_the_identity_once_and_serves_exactly_it(
    registry: Registry, monkeypatch: Any
) -> None:
    # The archive is built from the identity the ETag was computed from: a re-adapt that
    # lands between the read and the build changes neither the bytes nor the ETag served.
    import mta.server.adapter_fetch as adapter_fetch

    reads: list[str] = []
    real_read = service.adapter_identity
    real_export = service.export_user

    def counted_read(ctx: Any, user_id: str) -> Any:
        reads.append(user_id)
        return real_read(ctx, user_id)

    def re_adapt_then_export(ctx: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
        service.adapt_user(ctx, identity.user_id, service.AdaptRequest(shots=2, max_steps=1))
        return real_export(ctx, identity, *args, **kwargs)

    monkeypatch.setattr(service, "adapter_identity", counted_read)
    with make_client(registry) as client:
        first = client.get("/v1/users/alice/adapter", headers=READ)
        assert first.status_code == 200 and reads == ["alice"]
        monkeypatch.setattr(adapter_fetch.service, "export_user", re_adapt_then_export)
        raced = client.get("/v1/users/alice/adapter?dtype=fp16", headers=READ)
        monkeypatch.setattr(adapter_fetch.service, "export_user", real_export)
        assert raced.status_code == 200 and len(reads) <= 2  # at most one read per fetch
        # The raced response is the fp16 export of the identity read before the re-adapt:
        # a stack-free adapter, whose ETag a fresh read no longer gives.
        fresh = client.get("/v1/users/alice/adapter?dtype=fp16", headers=READ)
        assert fresh.headers["etag"] != raced.headers["etag"]
        assert fresh.content != raced.content
        again = client.get(
            "/v1/users/alice/adapter?dtype=fp16",
            headers={**READ, "If-None-Match": raced.headers["etag"]},
        )
        assert again.status_code == 200 and again.content == fresh.content
