"""`POST /v1/jobs/adapt`: a selection becomes one job with progress and the bulk summary."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import ADMIN, READ
from tests.support import TASK, movie_user

TRAIN = {"shots": 2, "max_steps": 1}


def _wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    """Poll a job until it finishes (bounded: fail rather than hang)."""
    for _ in range(6000):
        job = client.get(f"/v1/jobs/{job_id}", headers=READ).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        threading.Event().wait(0.02)
    pytest.fail(f"job {job_id} never finished")


def _error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def _submit(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs/adapt", json=body, headers=ADMIN)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    return job


def test_bulk_job_adapts_the_selection_then_skips_it(client: TestClient) -> None:
    bob = {"user_id": "bob", "task": TASK, "profile": movie_user("bob", 5, 2)}
    assert client.post("/v1/users", json=bob, headers=ADMIN).status_code == 201
    job = _submit(client, {"all": True, "bank": TASK, **TRAIN})
    assert (job["kind"], job["user_id"], job["params"]["users"]) == ("bulk_adapt", "*", 2)
    finished = _wait_job(client, job["id"])
    assert finished["status"] == "succeeded", finished
    assert finished["progress"] == {"stage": "adapt", "done": 2, "total": 2}
    result = finished["result"]
    assert result["done"] == ["alice", "bob"] and result["failed"] == []
    assert set(result["phase_means"]) == {"fuse", "train", "commit"}
    assert [u["status"] for u in result["users"]] == ["adapted", "adapted"]
    assert client.get("/v1/users/bob", headers=READ).json()["stack"] is not None

    again = _wait_job(
        client, _submit(client, {"missing": True, "user_ids": ["bob"], **TRAIN})["id"]
    )
    assert again["result"]["skipped"] == ["bob"] and again["result"]["done"] == []


def test_a_failing_user_is_in_the_summary_and_the_job_goes_on(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mta.server.routes_bulk as routes_bulk

    bob = {"user_id": "bob", "task": TASK, "profile": movie_user("bob", 5, 2)}
    assert client.post("/v1/users", json=bob, headers=ADMIN).status_code == 201
    release = threading.Event()
    real_run_local = routes_bulk.run_local

    def held(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return real_run_local(*args, **kwargs)

    monkeypatch.setattr(routes_bulk, "run_local", held)
    job = _submit(client, {"user_ids": ["bob", "alice"], "force": True, **TRAIN})
    # Known when submitted, deleted before the job reaches them: bob fails, alice is adapted.
    assert client.delete("/v1/users/bob", headers=ADMIN).status_code == 200
    release.set()
    finished = _wait_job(client, job["id"])
    assert finished["status"] == "succeeded"
    assert finished["result"]["done"] == ["alice"]
    assert finished["result"]["failed"] == [
        {"user_id": "bob", "reason": "no user 'bob'; add one with `mta user add`"}
    ]


def test_named_unknown_users_are_a_404_and_flags_still_select(client: TestClient) -> None:
    ghost = {"user_ids": ["ghost", "alice"], "force": True, **TRAIN}
    response = client.post("/v1/jobs/adapt", json=ghost, headers=ADMIN)
    _error(response, 404, "not_found")
    assert response.json()["error"]["message"] == "no user 'ghost'; nothing was queued"
    job = _submit(client, {"missing": True, "bank": TASK, **TRAIN})
    assert job["params"]["users"] == 1
    assert _wait_job(client, job["id"])["result"]["done"] == ["alice"]


def test_bulk_job_needs_admin_and_a_valid_selection(client: TestClient) -> None:
    _error(client.post("/v1/jobs/adapt", json={"all": True, **TRAIN}), 401, "unauthorized")
    _error(
        client.post("/v1/jobs/adapt", json={"all": True, **TRAIN}, headers=READ), 403, "forbidden"
    )
    _error(client.post("/v1/jobs/adapt", json=TRAIN, headers=ADMIN), 422, "invalid_input")
    bad_id = {"user_ids": ["a b"], **TRAIN}
    _error(client.post("/v1/jobs/adapt", json=bad_id, headers=ADMIN), 422, "validation_error")
    extra = {"all": True, "everyone": True, **TRAIN}
    _error(client.post("/v1/jobs/adapt", json=extra, headers=ADMIN), 422, "validation_error")
    _error(
        client.post("/v1/jobs/adapt", json={"all": True}, headers=ADMIN), 422, "validation_error"
    )


def test_one_bulk_job_at_a_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    import mta.server.routes_bulk as routes_bulk

    release = threading.Event()
    real_run_local = routes_bulk.run_local

    def held(*args: Any, **kwargs: Any) -> Any:
        release.wait(60)
        return real_run_local(*args, **kwargs)

    monkeypatch.setattr(routes_bulk, "run_local", held)
    first = _submit(client, {"all": True, **TRAIN})
    _error(
        client.post("/v1/jobs/adapt", json={"all": True, **TRAIN}, headers=ADMIN),
        409,
        "job_in_progress",
    )
    release.set()
    assert _wait_job(client, first["id"])["status"] == "succeeded"
    assert _wait_job(client, _submit(client, {"all": True, **TRAIN})["id"])["status"] == "succeeded"
