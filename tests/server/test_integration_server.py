"""The same HTTP flow on a real PostgreSQL database and a real S3-compatible server."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.server.conftest import ADMIN, READ, Registry, make_client, populate
from tests.support import TASK, movie_user


@pytest.mark.integration
def test_http_flow_on_postgres_and_s3(
    tmp_path: Path,
    pg_db_url: str,
    s3_store_url: str,
    tiny_shapes: dict[str, tuple[int, int]],
    tiny_model_dir: Path,
    tiny_embedder_dir: Path,
) -> None:
    populate(
        pg_db_url,
        s3_store_url,
        tmp_path / "cache",
        tmp_path,
        tiny_shapes,
        tiny_model_dir,
        tiny_embedder_dir,
    )
    registry = Registry(tmp_path, pg_db_url, s3_store_url, tmp_path / "cache", tmp_path)
    with make_client(registry) as client:
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        assert client.get(f"/v1/banks/{TASK}", headers=READ).json()["num_anchors"] == 4

        body = {"user_id": "bob", "task": TASK, "profile": movie_user("bob", 5, seed=2)}
        assert client.post("/v1/users", json=body, headers=ADMIN).status_code == 201
        assert client.post("/v1/users", json=body, headers=ADMIN).status_code == 409
        recipe = client.post("/v1/users/bob/fuse", json={"top_k": 2}, headers=ADMIN)
        assert recipe.status_code == 200 and len(recipe.json()["anchors"]) == 2

        adapter = client.get("/v1/users/bob/adapter", headers=READ)
        assert adapter.status_code == 200 and adapter.content
        etag = adapter.headers["etag"]
        again = client.get("/v1/users/bob/adapter", headers={**READ, "If-None-Match": etag})
        assert again.status_code == 304

        job = client.post(
            "/v1/users/bob/adapt",
            json={"shots": 2, "epochs": 1, "batch_size": 1, "max_steps": 1},
            headers=ADMIN,
        ).json()
        for _ in range(6000):
            status = client.get(f"/v1/jobs/{job['id']}", headers=READ).json()
            if status["status"] in ("succeeded", "failed"):
                break
            threading.Event().wait(0.02)
        assert status["status"] == "succeeded", status
        changed = client.get("/v1/users/bob/adapter", headers={**READ, "If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["etag"] != etag

        report = client.get("/v1/storage/report", headers=READ).json()
        assert report["users"] == 2
        deleted = client.delete("/v1/users/bob", headers=ADMIN)
        assert deleted.status_code == 200 and deleted.json()["bytes_freed"] > 0
        assert client.get("/v1/users/bob/adapter", headers=READ).status_code == 404
