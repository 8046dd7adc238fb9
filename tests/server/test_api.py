"""The HTTP API on SQLite + a file store: auth, every route's happy path, errors, caching."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import ADMIN, READ, Registry, make_client
from tests.server.prom import parse_metrics, value
from tests.support import ANCHOR_IDS, TASK, movie_user

# (method, path, json body) of every authenticated route; bodies are valid for the template.
ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/v1/banks", None),
    ("GET", f"/v1/banks/{TASK}", None),
    ("GET", "/v1/users", None),
    ("GET", "/v1/users/alice", None),
    ("GET", "/v1/users/alice/adapter", None),
    ("GET", "/v1/users/alice/adapter-name", None),
    ("GET", "/v1/jobs/" + "0" * 32, None),
    ("GET", "/v1/storage/report", None),
    ("GET", "/metrics", None),
    ("POST", "/v1/users", {"user_id": "bob", "task": TASK, "profile": movie_user("bob", 5, 2)}),
    ("POST", "/v1/users/alice/fuse", {"top_k": 2}),
    ("POST", "/v1/users/alice/adapt", {"shots": 2, "max_steps": 1, "epochs": 1}),
    ("DELETE", "/v1/users/alice", None),
]
WRITES = [r for r in ROUTES if r[0] != "GET"]
READS = [r for r in ROUTES if r[0] == "GET"]


def _error(response: httpx.Response, status: int, code: str) -> str:
    """Assert an error response's status and code; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"].strip()
    return body["error"]["message"]


def _untar(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    """Poll a job until it finishes (bounded: fail rather than hang)."""
    for _ in range(6000):
        job = client.get(f"/v1/jobs/{job_id}", headers=READ).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        threading.Event().wait(0.02)
    pytest.fail(f"job {job_id} never finished")


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_missing_or_bad_token_is_401(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    bad = "Bearer not-a-valid-token-at-all"
    for headers in ({}, {"Authorization": bad}, {"Authorization": "x"}):
        response = client.request(method, path, json=body, headers=headers)
        _error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_read_token_on_write_is_403(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    _error(client.request(method, path, json=body, headers=READ), 403, "forbidden")
    assert client.get("/v1/users/alice", headers=READ).status_code == 200  # nothing changed


@pytest.mark.parametrize(("method", "path", "body"), READS)
def test_read_and_admin_tokens_may_read(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    for headers in (READ, ADMIN):
        response = client.request(method, path, headers=headers)
        assert response.status_code not in (401, 403), response.text


@pytest.mark.parametrize(("method", "path", "body"), WRITES)
def test_admin_token_may_write(
    client: TestClient, method: str, path: str, body: dict | None
) -> None:
    response = client.request(method, path, json=body, headers=ADMIN)
    assert response.status_code in (200, 201, 202), response.text


def test_healthz_needs_no_token_and_checks_the_database(
    client: TestClient, registry: Registry
) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "store": "ok"}}
    Path(registry.db_url.removeprefix("sqlite:///")).unlink()
    broken = client.get("/healthz")
    assert broken.status_code == 503
    assert (
        broken.json()["status"] == "unavailable"
        and "mta init" in broken.json()["checks"]["database"]
    )


def test_insecure_mode_needs_no_token(registry: Registry) -> None:
    with make_client(registry, tokens=None) as open_client:
        assert open_client.get("/v1/users/alice").status_code == 200
        assert open_client.post("/v1/users/alice/fuse", json={}).status_code == 200


# --- banks and users -------------------------------------------------------------------------


def test_banks(client: TestClient) -> None:
    banks = client.get("/v1/banks", headers=READ).json()
    assert [(b["task"], b["version"], b["num_anchors"]) for b in banks] == [(TASK, 1, 4)]
    assert client.get(f"/v1/banks?task={TASK}", headers=READ).json() == banks
    assert client.get("/v1/banks?task=citation", headers=READ).json() == []
    detail = client.get(f"/v1/banks/{TASK}", params={"ref": "1"}, headers=READ).json()
    assert sorted(a["anchor_id"] for a in detail["anchors"]) == list(ANCHOR_IDS)
    assert client.get(f"/v1/banks/{TASK}", headers=READ).json() == detail
    _error(client.get(f"/v1/banks/{TASK}", params={"ref": "7"}, headers=READ), 404, "not_found")
    _error(client.get("/v1/banks/citation", headers=READ), 404, "not_found")
    _error(client.get("/v1/banks/NOT-A-TASK", headers=READ), 422, "validation_error")


def test_add_get_list_delete_user(client: TestClient) -> None:
    body = {"user_id": "bob", "task": TASK, "profile": movie_user("bob", 5, seed=2)}
    created = client.post("/v1/users", json=body, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert created.json()["user_id"] == "bob" and created.json()["profile_items"] == 5
    _error(client.post("/v1/users", json=body, headers=ADMIN), 409, "already_exists")
    bare = {"user_id": "carol", "task": TASK, "profile": movie_user("carol", 4, 3)["profile"]}
    assert client.post("/v1/users", json=bare, headers=ADMIN).status_code == 201

    detail = client.get("/v1/users/bob", headers=READ).json()
    assert detail["recipe"] is None and detail["stack"] is None and detail["bank_version"] == 1
    ids = [u["user_id"] for u in client.get("/v1/users", headers=READ).json()]
    assert ids == ["alice", "bob", "carol"]
    assert [u["user_id"] for u in client.get(f"/v1/users?task={TASK}", headers=READ).json()] == ids

    deleted = client.delete("/v1/users/bob", headers=ADMIN)
    assert deleted.status_code == 200 and deleted.json()["user_id"] == "bob"
    assert deleted.json()["bytes_freed"] > 0
    _error(client.get("/v1/users/bob", headers=READ), 404, "not_found")
    _error(client.delete("/v1/users/bob", headers=ADMIN), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"user_id": "..", "task": TASK, "profile": []}, 422, "invalid_input"),
        ({"user_id": "a/b", "task": TASK, "profile": [{"x": 1}]}, 422, "validation_error"),
        ({"user_id": "x" * 129, "task": TASK, "profile": {}}, 422, "validation_error"),
        ({"user_id": "dave", "task": TASK, "profile": []}, 422, "invalid_input"),
        ({"user_id": "dave", "task": TASK, "profile": [{"bogus": 1}]}, 422, "invalid_input"),
        ({"user_id": "dave", "task": "citation", "profile": [{"x": 1}]}, 422, "invalid_input"),
        ({"user_id": "dave", "task": "no_such_task", "profile": [{"x": 1}]}, 422, "invalid_input"),
        ({"user_id": "dave", "task": TASK}, 422, "validation_error"),
        ({"user_id": "dave", "task": TASK, "profile": "text", "extra": 1}, 422, "validation_error"),
        ({"user_id": 7, "task": TASK, "profile": []}, 422, "validation_error"),
    ],
)
def test_bad_user_bodies_are_4xx(
    client: TestClient, body: dict[str, Any], status: int, code: str
) -> None:
    _error(client.post("/v1/users", json=body, headers=ADMIN), status, code)


def test_bank_of_another_task_is_not_found(client: TestClient) -> None:
    profile = [{"id": "1", "title": "a title", "abstract": "an abstract"}]
    body = {"user_id": "erin", "task": "scholarly_title", "profile": profile}
    _error(client.post("/v1/users", json=body, headers=ADMIN), 404, "not_found")


def test_malformed_json_and_oversized_bodies(registry: Registry) -> None:
    with make_client(registry, max_body_bytes=1000) as small:
        raw = small.post(
            "/v1/users", content=b"{nope", headers={**ADMIN, "content-type": "application/json"}
        )
        _error(raw, 422, "validation_error")
        big = {"user_id": "x", "task": TASK, "profile": [{"description": "w" * 2000}]}
        _error(small.post("/v1/users", json=big, headers=ADMIN), 413, "payload_too_large")


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/v1/users/ghost", 404, "not_found"),
        ("/v1/users/a/b", 404, "not_found"),
        ("/v1/users/a%2Fb", 404, "not_found"),
        ("/v1/users/%2E%2E", 422, "invalid_input"),
        ("/v1/users/%2E/adapter", 422, "invalid_input"),
        ("/v1/users/bad%20id", 422, "validation_error"),
        ("/v1/users/ghost/adapter", 404, "not_found"),
        ("/v1/jobs/nothex", 404, "not_found"),
        ("/v1/jobs/" + "a" * 32, 404, "not_found"),
        ("/v1/nowhere", 404, "not_found"),
    ],
)
def test_bad_paths_get_json_errors(client: TestClient, path: str, status: int, code: str) -> None:
    # Sent as raw paths: httpx would otherwise normalize "%2E%2E" and "%2F" away.
    request = client.build_request("GET", "http://testserver", headers=READ)
    request.url = request.url.copy_with(raw_path=path.encode())
    _error(client.send(request), status, code)


def test_wrong_method_is_405_json(client: TestClient) -> None:
    _error(client.put("/v1/users/alice", headers=ADMIN), 405, "method_not_allowed")


# --- fuse and the adapter archive ------------------------------------------------------------


def test_fuse_stores_a_recipe(client: TestClient) -> None:
    recipe = client.post(
        "/v1/users/alice/fuse", json={"top_k": 3, "weight_rule": "softmax"}, headers=ADMIN
    )
    assert recipe.status_code == 200, recipe.text
    data = recipe.json()
    assert len(data["anchors"]) == 3 and data["weight_rule"] == "softmax"
    assert abs(sum(a["weight"] for a in data["anchors"]) - 1) < 1e-6
    assert client.post("/v1/users/alice/fuse", headers=ADMIN).status_code == 200  # no body
    _error(
        client.post("/v1/users/alice/fuse", json={"method": "nope"}, headers=ADMIN),
        422,
        "invalid_input",
    )
    _error(
        client.post("/v1/users/alice/fuse", json={"top_k": 0}, headers=ADMIN),
        422,
        "validation_error",
    )
    _error(client.post("/v1/users/ghost/fuse", json={}, headers=ADMIN), 404, "not_found")


def test_adapter_archive_matches_the_service_export(
    client: TestClient, registry: Registry, tmp_path: Path
) -> None:
    from mta.peft_io import load_peft_adapter
    from mta.registry import service
    from mta.registry.context import RegistryContext

    response = client.get("/v1/users/alice/adapter", headers=READ)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-tar"
    etag = response.headers["etag"]
    assert etag.startswith('"') and len(etag) == 66
    files = _untar(response.content)
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]

    with RegistryContext.open(registry.db_url, registry.store_url, tmp_path / "c") as ctx:
        export = service.export_user(
            ctx, service.adapter_identity(ctx, "alice"), tmp_path / "direct"
        )
    for name, data in files.items():
        assert data == (export.path / name).read_bytes()
    folder = tmp_path / "fetched"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    assert load_peft_adapter(folder).ranks() == load_peft_adapter(export.path).ranks()


def test_etag_revalidation_and_cache_counters(client: TestClient) -> None:
    first = client.get("/v1/users/alice/adapter", headers=READ)
    etag = first.headers["etag"]
    again = client.get("/v1/users/alice/adapter", headers=READ)
    assert again.content == first.content and again.headers["etag"] == etag
    revalidated = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": etag})
    assert revalidated.status_code == 304 and revalidated.content == b""
    assert revalidated.headers["etag"] == etag
    weak = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": f"W/{etag}"})
    assert weak.status_code == 304
    stale = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": '"other"'})
    assert stale.status_code == 200

    compressed = client.get("/v1/users/alice/adapter?max_rank=2", headers=READ)
    assert compressed.status_code == 200 and compressed.headers["etag"] != etag
    config = json.loads(_untar(compressed.content)["adapter_config.json"])
    assert max([config["r"], *config.get("rank_pattern", {}).values()]) <= 2
    half = client.get("/v1/users/alice/adapter?dtype=fp16", headers=READ)
    assert half.headers["etag"] not in (etag, compressed.headers["etag"])
    assert len(half.content) < len(first.content)
    _error(client.get("/v1/users/alice/adapter?max_rank=0", headers=READ), 422, "validation_error")

    # A new recipe changes what would be exported, so the old ETag no longer matches.
    client.post("/v1/users/alice/fuse", json={"top_k": 1}, headers=ADMIN)
    changed = client.get("/v1/users/alice/adapter", headers={**READ, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["etag"] != etag

    samples = parse_metrics(client.get("/metrics", headers=READ).text)
    assert value(samples, "mta_adapter_cache_total", result="miss") == 4  # plain, r2, fp16, new
    assert value(samples, "mta_adapter_cache_total", result="hit") == 2  # again, stale
    assert value(samples, "mta_adapter_cache_total", result="not_modified") == 2
    served = len(first.content) * 3 + len(compressed.content) + len(half.content)
    served += len(changed.content)
    assert value(samples, "mta_adapter_bytes_served_total") == served


def test_adapter_name_pins_the_bytes_a_versioned_fetch_returns(client: TestClient) -> None:
    import base64
    import hashlib

    info = client.get("/v1/users/alice/adapter-name", headers=READ)
    assert info.status_code == 200, info.text
    data = info.json()
    version = data["version"]
    assert len(version) == 12 and int(version, 16) >= 0 and data["name"] == f"alice~{version}"
    fetched = client.get(f"/v1/users/alice/adapter?version={version}", headers=READ)
    assert fetched.status_code == 200 and fetched.headers["x-mta-adapter-name"] == data["name"]
    assert fetched.headers["etag"] == data["etag"] and len(fetched.content) == data["bytes"]
    sha = hashlib.sha256(fetched.content).digest()
    assert fetched.headers["repr-digest"] == f"sha-256=:{base64.b64encode(sha).decode()}:"
    assert sha.hex() == data["sha256"] and data["dtype"] == "fp32" and data["max_rank"] is None
    config = json.loads(_untar(fetched.content)["adapter_config.json"])
    assert data["rank"] == max([config["r"], *config.get("rank_pattern", {}).values()])
    plain = client.get("/v1/users/alice/adapter", headers=READ)  # no version: as before
    assert plain.content == fetched.content and plain.headers["x-mta-adapter-name"] == data["name"]
    revalidated = client.get(
        f"/v1/users/alice/adapter?version={version}",
        headers={**READ, "If-None-Match": data["etag"]},
    )
    assert revalidated.status_code == 304
    assert revalidated.headers["x-mta-adapter-name"] == data["name"]

    # The name is the adapter's, the options the fetch's: fp16 keeps the name, not the ETag.
    half = client.get("/v1/users/alice/adapter-name?dtype=fp16&max_rank=2", headers=READ).json()
    assert half["name"] == data["name"] and half["etag"] != data["etag"] and half["rank"] <= 2
    half_fetch = client.get(
        f"/v1/users/alice/adapter?dtype=fp16&max_rank=2&version={version}", headers=READ
    )
    assert half_fetch.headers["etag"] == half["etag"] and len(half_fetch.content) == half["bytes"]

    other = "0" * 12 if version != "0" * 12 else "1" * 12
    gone = client.get(f"/v1/users/alice/adapter?version={other}", headers=READ)
    message = _error(gone, 410, "stale_version")
    assert "\n" not in message and data["name"] in message
    assert gone.headers["x-mta-adapter-name"] == data["name"] and "etag" not in gone.headers
    stale_304 = client.get(
        f"/v1/users/alice/adapter?version={other}", headers={**READ, "If-None-Match": "*"}
    )
    assert stale_304.status_code == 410  # never a 304 for a version that is not current
    for bad in ("ABCDEF012345", "abc", "0" * 13, "g" * 12):
        response = client.get(f"/v1/users/alice/adapter?version={bad}", headers=READ)
        _error(response, 422, "validation_error")
    _error(client.get("/v1/users/ghost/adapter-name", headers=READ), 404, "not_found")
    _error(client.get("/v1/users/ghost/adapter?version=" + version, headers=READ), 404, "not_found")


def test_user_without_recipe_has_no_adapter(client: TestClient) -> None:
    body = {"user_id": "bob", "task": TASK, "profile": movie_user("bob", 5, seed=2)}
    client.post("/v1/users", json=body, headers=ADMIN)
    _error(client.get("/v1/users/bob/adapter", headers=READ), 404, "not_found")
    star = client.get("/v1/users/bob/adapter", headers={**READ, "If-None-Match": "*"})
    _error(star, 404, "not_found")


def test_missing_or_corrupt_blob_is_an_integrity_error(
    client: TestClient, registry: Registry
) -> None:
    bank = client.get(f"/v1/banks/{TASK}", headers=READ).json()
    digest = bank["anchors"][0]["adapter_blob"]
    blob = registry.store_dir / "blobs" / "sha256" / digest[:2] / digest
    blob.chmod(0o644)
    blob.write_bytes(b"not the adapter")
    recipe = client.post("/v1/users/alice/fuse", json={"top_k": 4}, headers=ADMIN).json()
    assert digest in [a["adapter_blob"] for a in bank["anchors"]] and len(recipe["anchors"]) == 4
    message = _error(client.get("/v1/users/alice/adapter", headers=READ), 500, "integrity_error")
    assert digest in message
    blob.unlink()
    _error(client.get("/v1/users/alice/adapter", headers=READ), 500, "integrity_error")


# --- jobs, storage, metrics ------------------------------------------------------------------


def test_adapt_job_lifecycle(client: TestClient) -> None:
    before = client.get("/v1/users/alice/adapter", headers=READ).headers["etag"]
    body = {"shots": 3, "rank": 1, "epochs": 1, "batch_size": 1, "max_steps": 2, "dtype": "fp32"}
    accepted = client.post("/v1/users/alice/adapt", json=body, headers=ADMIN)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["status"] in ("queued", "running") and job["params"]["shots"] == 3
    assert accepted.headers["location"] == f"/v1/jobs/{job['id']}"

    done = _wait_job(client, job["id"])
    assert done["status"] == "succeeded", done
    assert done["result"]["rank"] == 1 and done["result"]["train_config"]["steps"] == 2
    assert done["progress"] == {"stage": "train", "done": 2, "total": 2}
    user = client.get("/v1/users/alice", headers=READ).json()
    assert user["stack"]["stack_id"] == done["result"]["stack_id"]

    after = client.get("/v1/users/alice/adapter", headers=READ)
    assert after.headers["etag"] != before
    config = json.loads(_untar(after.content)["adapter_config.json"])
    ranks = [config["r"], *config.get("rank_pattern", {}).values()]
    assert max(ranks) == 2 * 8 + 1  # two fused rank-8 anchors + the rank-1 stack

    _error(client.post("/v1/users/ghost/adapt", json=body, headers=ADMIN), 404, "not_found")
    _error(
        client.post("/v1/users/alice/adapt", json={"shots": 0}, headers=ADMIN),
        422,
        "validation_error",
    )


def test_failed_job_reports_the_error(client: TestClient, registry: Registry) -> None:
    recipe = client.get("/v1/users/alice", headers=READ).json()["recipe"]
    bank = client.get(f"/v1/banks/{TASK}", headers=READ).json()
    used = {a["anchor_id"] for a in recipe["anchors"]}
    digest = next(a["adapter_blob"] for a in bank["anchors"] if a["anchor_id"] in used)
    blob = registry.store_dir / "blobs" / "sha256" / digest[:2] / digest
    blob.chmod(0o644)
    blob.write_bytes(b"garbage")
    body = {"shots": 2, "epochs": 1, "max_steps": 1}
    job = client.post("/v1/users/alice/adapt", json=body, headers=ADMIN).json()
    done = _wait_job(client, job["id"])
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"]["code"] == "integrity_error" and digest in done["error"]["message"]
    assert client.get("/v1/users/alice", headers=READ).json()["stack"] is None


def test_storage_report(client: TestClient) -> None:
    report = client.get("/v1/storage/report", headers=READ)
    assert report.status_code == 200
    assert report.json()["users"] == 1 and report.json()["total_bytes"] > 0


def test_metrics_count_requests_by_route_template(client: TestClient) -> None:
    for _ in range(3):
        client.get("/v1/users/alice", headers=READ)
    client.get("/v1/users/ghost", headers=READ)
    client.get("/v1/users/alice")
    client.get("/definitely/not/a/route", headers=READ)
    response = client.get("/metrics", headers=READ)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = parse_metrics(response.text)
    route = {"route": "/v1/users/{user_id}", "method": "GET"}
    assert value(samples, "mta_http_requests_total", **route, status="200") == 3
    assert value(samples, "mta_http_requests_total", **route, status="404") == 1
    assert value(samples, "mta_http_requests_total", **route, status="401") == 1
    assert value(samples, "mta_http_request_duration_seconds_count", **route) == 5
    unmatched = {"route": "unmatched", "method": "GET", "status": "404"}
    assert value(samples, "mta_http_requests_total", **unmatched) == 1
    assert value(samples, "mta_jobs", status="queued") == 0
