"""The HTTP ETag changes exactly when the exported adapter bytes change, and not otherwise."""

from __future__ import annotations

from pathlib import Path

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
    with (
        make_client(registry) as client,
        RegistryContext.open(registry.db_url, registry.store_url, registry.cache_dir) as ctx,
    ):

        def fetch() -> tuple[str, bytes]:
            response = client.get("/v1/users/alice/adapter", headers=READ)
            assert response.status_code == 200
            return response.headers["etag"], response.content

        def changed(label: str) -> None:
            etag, body = fetch()
            assert etag not in seen and body not in seen.values(), label
            seen[etag] = body

        changed("fused")
        # Registry writes that leave alice's adapter alone keep her ETag (and her bytes).
        service.add_user(ctx, user_id="bob", task=TASK, profile=movie_user("bob", 6))
        service.set_alias(ctx, TASK, 1, "prod")
        etag, body = fetch()
        assert seen.get(etag) == body
        revalidated = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": etag})
        assert revalidated.status_code == 304

        service.adapt_user(ctx, "alice", shots=2, max_steps=1)
        changed("new stack")
        service.fuse_user(ctx, "alice", top_k=3)
        changed("re-fused")
        dirs, profiles = write_anchor_bank(tmp_path / "v2", tiny_shapes, seed=5)
        push_folders(ctx, dirs, profiles, tiny_model_dir, tiny_embedder_dir)
        service.fuse_user(ctx, "alice", top_k=3, bank_ref="2")
        changed("new bank version")
