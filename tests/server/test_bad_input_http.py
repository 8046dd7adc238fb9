"""Bad HTTP input: the right status, one JSON error body, and an unchanged registry.

Every case compares the registry's database dump and store listing before and after
(tests/support.py), and never follows redirects, so a 307 shows as a 307.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import ADMIN, READ, Registry, make_client
from tests.support import TASK, movie_user, registry_dump

SMALL_LIMIT = 4096
WRONG = {"Authorization": "Bearer wrong-token-0123456789"}
BASIC = {"Authorization": "Basic YWxpY2U6c2VjcmV0"}
HUGE_TOKEN = {"Authorization": "Bearer " + "x" * 200_000}
JSON = {"content-type": "application/json"}
OVERFLOW = "99999999999999999999999"  # no SQL integer holds it
SERVING_MD = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def _user(user_id: str = "bob", **changes: Any) -> dict[str, Any]:
    body = {"user_id": user_id, "task": TASK, "profile": movie_user(user_id, 4, seed=2)}
    body.update(changes)
    return body


def _nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _chunks(total: int, size: int = 1024) -> Iterator[bytes]:
    """A valid AddUserRequest of `total` bytes (one long description), in pieces of `size`."""
    user = _user("big")
    user["profile"]["profile"][0]["description"] = "@@"
    head, tail = json.dumps(user).encode().split(b"@@")
    body = head + b"x" * max(0, total - len(head) - len(tail)) + tail
    for start in range(0, len(body), size):
        yield body[start : start + size]


# (method, raw path, headers, json body or raw bytes, status, error code)
Case = tuple[str, str, dict[str, str], Any, int, str]

AUTH_CASES: dict[str, Case] = {
    "dotdot-slash-anonymous": ("GET", "/v1/users/..%2f", {}, None, 401, "unauthorized"),
    "dotdot-slash-wrong-token": ("GET", "/v1/users/..%2f", WRONG, None, 401, "unauthorized"),
    "dotdot-slash-basic": ("GET", "/v1/users/..%2f", BASIC, None, 401, "unauthorized"),
    "trailing-slash-user": ("GET", "/v1/users/alice/", {}, None, 401, "unauthorized"),
    "trailing-slash-users": ("GET", "/v1/users/", {}, None, 401, "unauthorized"),
    "trailing-slash-banks": ("GET", "/v1/banks/", {}, None, 401, "unauthorized"),
    "trailing-slash-metrics": ("GET", "/metrics/", {}, None, 401, "unauthorized"),
    "trailing-slash-post": ("POST", "/v1/users/", JSON, _user(), 401, "unauthorized"),
    "trailing-slash-delete": ("DELETE", "/v1/users/alice/", {}, None, 401, "unauthorized"),
    "no-token": ("GET", "/v1/users/alice", {}, None, 401, "unauthorized"),
    "wrong-token-delete": ("DELETE", "/v1/users/alice", WRONG, None, 401, "unauthorized"),
    "read-token-add": ("POST", "/v1/users", READ, _user(), 403, "forbidden"),
    "read-token-delete": ("DELETE", "/v1/users/alice", READ, None, 403, "forbidden"),
    "read-token-fuse": ("POST", "/v1/users/alice/fuse", READ, {}, 403, "forbidden"),
    "token-200k": ("GET", "/v1/users/alice", HUGE_TOKEN, None, 431, "headers_too_large"),
    "token-200k-post": ("POST", "/v1/users", HUGE_TOKEN, _user(), 431, "headers_too_large"),
}

A = "/v1/users"
F = "/v1/users/alice/fuse"
D = "/v1/users/alice/adapt"
B = "/v1/jobs/adapt"
BODY_CASES: dict[str, Case] = {
    "garbled-json": ("POST", A, ADMIN, b"{nope", 422, "validation_error"),
    "nested-100k": ("POST", A, ADMIN, _nested(100_000), 422, "validation_error"),
    "nested-in-profile": (
        "POST",
        A,
        ADMIN,
        json.dumps(_user(profile="@@")).encode().replace(b'"@@"', _nested(5000)),
        422,
        "validation_error",
    ),
    "latin-1": (
        "POST",
        A,
        ADMIN,
        '{"user_id": "b\u00e9b"}'.encode("latin-1"),
        422,
        "validation_error",
    ),
    "integer-5000-digits": (
        "POST",
        A,
        ADMIN,
        b'{"user_id": "bob", "n": ' + b"9" * 5000 + b"}",
        422,
        "validation_error",
    ),
    "empty-body": ("POST", A, ADMIN, b"", 422, "validation_error"),
    "a-list": ("POST", A, ADMIN, [_user()], 422, "validation_error"),
    "no-user-id": ("POST", A, ADMIN, {"task": TASK, "profile": [{}]}, 422, "validation_error"),
    "slash-in-id": ("POST", A, ADMIN, _user("a/b"), 422, "validation_error"),
    "markup-in-id": ("POST", A, ADMIN, _user("x[/y]"), 422, "validation_error"),
    "dotdot-id": ("POST", A, ADMIN, _user(".."), 422, "invalid_input"),
    "bad-task-name": ("POST", A, ADMIN, _user(task="Movie"), 422, "validation_error"),
    "unknown-task": ("POST", A, ADMIN, _user(task="no_such_task"), 422, "invalid_input"),
    "empty-profile": ("POST", A, ADMIN, _user(profile=[]), 422, "invalid_input"),
    "profile-string": ("POST", A, ADMIN, _user(profile="x"), 422, "validation_error"),
    "item-without-tag": (
        "POST",
        A,
        ADMIN,
        _user(profile=[{"id": "1", "description": "d"}]),
        422,
        "invalid_input",
    ),
    "unknown-bank-ref": ("POST", A, ADMIN, _user(bank_ref="9"), 404, "not_found"),
    "add-bank-ref-overflow": ("POST", A, ADMIN, _user(bank_ref=OVERFLOW), 404, "not_found"),
    "bank-ref-too-long": ("POST", A, ADMIN, _user(bank_ref="v" * 65), 422, "validation_error"),
    "extra-field": ("POST", A, ADMIN, _user(admin=True), 422, "validation_error"),
    "duplicate-user": ("POST", A, ADMIN, _user("alice"), 409, "already_exists"),
    "text-plain": (
        "POST",
        A,
        {**ADMIN, "content-type": "text/plain"},
        b"hello",
        422,
        "validation_error",
    ),
    "fuse-top-k-0": ("POST", F, ADMIN, {"top_k": 0}, 422, "validation_error"),
    "fuse-top-k-65": ("POST", F, ADMIN, {"top_k": 65}, 422, "validation_error"),
    "fuse-method": ("POST", F, ADMIN, {"method": "m[/x]"}, 422, "invalid_input"),
    "fuse-weight-rule": ("POST", F, ADMIN, {"weight_rule": "nope"}, 422, "invalid_input"),
    "fuse-temperature-0": ("POST", F, ADMIN, {"temperature": 0}, 422, "validation_error"),
    "fuse-rank-0": ("POST", F, ADMIN, {"rank": 0}, 422, "validation_error"),
    "fuse-bank-ref": ("POST", F, ADMIN, {"bank_ref": "9"}, 404, "not_found"),
    "fuse-bank-ref-overflow": ("POST", F, ADMIN, {"bank_ref": f"v{OVERFLOW}"}, 404, "not_found"),
    "fuse-extra": ("POST", F, ADMIN, {"top_k": 2, "nope": 1}, 422, "validation_error"),
    "fuse-ghost": ("POST", "/v1/users/ghost/fuse", ADMIN, {}, 404, "not_found"),
    "adapt-no-shots": ("POST", D, ADMIN, {}, 422, "validation_error"),
    "adapt-shots-0": ("POST", D, ADMIN, {"shots": 0}, 422, "validation_error"),
    "adapt-dtype": ("POST", D, ADMIN, {"shots": 1, "dtype": "fp8"}, 422, "validation_error"),
    "adapt-lr-0": ("POST", D, ADMIN, {"shots": 1, "lr": 0}, 422, "validation_error"),
    "adapt-rank-65": ("POST", D, ADMIN, {"shots": 1, "rank": 65}, 422, "validation_error"),
    "adapt-ghost": ("POST", "/v1/users/ghost/adapt", ADMIN, {"shots": 1}, 404, "not_found"),
    "bulk-ghost": ("POST", B, ADMIN, {"user_ids": ["ghost"], "shots": 1}, 404, "not_found"),
    "bulk-ghost-and-alice": (
        "POST",
        B,
        ADMIN,
        {"user_ids": ["alice", "ghost"], "shots": 1},
        404,
        "not_found",
    ),
    "bulk-ghost-and-flag": (
        "POST",
        B,
        ADMIN,
        {"user_ids": ["ghost"], "all": True, "shots": 1},
        404,
        "not_found",
    ),
}

QUERY_CASES: dict[str, Case] = {
    "adapter-max-rank-0": ("GET", "/v1/users/alice/adapter?max_rank=0", READ, None, 422,
                           "validation_error"),
    "adapter-dtype": ("GET", "/v1/users/alice/adapter?dtype=fp8", READ, None, 422,
                      "validation_error"),
    "adapter-ghost": ("GET", "/v1/users/ghost/adapter", READ, None, 404, "not_found"),
    "bank-bad-task": ("GET", "/v1/banks/Movie", READ, None, 422, "validation_error"),
    "bank-bad-ref": ("GET", f"/v1/banks/{TASK}?ref=nope", READ, None, 404, "not_found"),
    "bank-long-ref": ("GET", f"/v1/banks/{TASK}?ref={'9' * 65}", READ, None, 422,
                      "validation_error"),
    "bank-ref-overflow": ("GET", f"/v1/banks/{TASK}?ref={OVERFLOW}", READ, None, 404,
                          "not_found"),
    "bank-ref-v-int64": ("GET", f"/v1/banks/{TASK}?ref=v{2**63}", READ, None, 404, "not_found"),
    "bank-ref-int32": ("GET", f"/v1/banks/{TASK}?ref={2**31}", READ, None, 404, "not_found"),
    "bank-ref-superscript": ("GET", f"/v1/banks/{TASK}?ref=%C2%B2", READ, None, 404,
                             "not_found"),
    "users-bad-task": ("GET", "/v1/users?task=BAD", READ, None, 422, "validation_error"),
    "job-not-hex": ("GET", "/v1/jobs/nonexistent", READ, None, 404, "not_found"),
    "job-hex": ("GET", f"/v1/jobs/{'0' * 32}", READ, None, 404, "not_found"),
    "job-long": ("GET", f"/v1/jobs/{'x' * 2000}", READ, None, 404, "not_found"),
    "delete-ghost": ("DELETE", "/v1/users/ghost", ADMIN, None, 404, "not_found"),
    "delete-dotdot": ("DELETE", "/v1/users/%2E%2E", ADMIN, None, 422, "invalid_input"),
    "put-user": ("PUT", "/v1/users/alice", ADMIN, None, 405, "method_not_allowed"),
}  # fmt: skip

ALL_CASES = {**AUTH_CASES, **BODY_CASES, **QUERY_CASES}
assert len(ALL_CASES) == len(AUTH_CASES) + len(BODY_CASES) + len(QUERY_CASES), "a case id repeats"


def send(client: TestClient, method: str, path: str, headers: dict[str, str], body: Any = None,
         ) -> httpx.Response:  # fmt: skip
    """Send `path` as a raw path (httpx would normalize "%2f"), never following redirects."""
    headers = dict(headers)
    if isinstance(body, bytes):
        headers.setdefault("content-type", "application/json")
        content = body
    else:
        content = None if body is None else json.dumps(body).encode()
        if body is not None:
            headers.setdefault("content-type", "application/json")
    request = client.build_request(method, "http://testserver", headers=headers, content=content)
    request.url = request.url.copy_with(raw_path=path.encode())
    return client.send(request, follow_redirects=False)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """Status, and exactly the JSON error shape with a one-line message."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message.strip() and "\n" not in message and "Traceback" not in message


def dump(registry: Registry) -> Any:
    """The registry's database dump and store listing."""
    return registry_dump(registry.db_url, registry.store_url)


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_bad_request_is_refused_and_changes_nothing(
    client: TestClient, registry: Registry, case: str
) -> None:
    method, path, headers, body, status, code = ALL_CASES[case]
    before = dump(registry)
    assert_error(send(client, method, path, headers, body), status, code)
    assert dump(registry) == before


# --- bodies over the limit, with and without a Content-Length --------------------------------


@pytest.fixture
def small_client(registry: Registry) -> Iterator[TestClient]:
    """A client of a server that accepts bodies up to SMALL_LIMIT bytes."""
    with make_client(registry, max_body_bytes=SMALL_LIMIT) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("content", "chunked"),
    [
        (lambda: _chunks(SMALL_LIMIT + 1), True),
        (lambda: _chunks(SMALL_LIMIT * 10, size=100), True),
        (lambda: _chunks(SMALL_LIMIT * 3, size=SMALL_LIMIT * 3), True),
        (lambda: b"".join(_chunks(SMALL_LIMIT + 1)), False),
    ],
    ids=["chunked-just-over", "chunked-small-pieces", "chunked-one-piece", "content-length"],
)
def test_oversized_body_is_413(
    small_client: TestClient, registry: Registry, content: Any, chunked: bool
) -> None:
    before = dump(registry)
    response = small_client.post("/v1/users", content=content(), headers={**ADMIN, **JSON})
    assert response.request.headers.get("transfer-encoding") == ("chunked" if chunked else None)
    assert_error(response, 413, "payload_too_large")
    assert dump(registry) == before
    assert small_client.get("/v1/users/big", headers=READ).status_code == 404


def test_chunked_body_at_the_limit_is_accepted(small_client: TestClient) -> None:
    body = b"".join(_chunks(SMALL_LIMIT))
    response = small_client.post("/v1/users", content=iter([body]), headers={**ADMIN, **JSON})
    assert response.status_code == 201, response.text


def test_chunked_17_mib_is_413_at_the_default_limit(client: TestClient, registry: Registry) -> None:
    before = dump(registry)
    response = client.post(
        "/v1/users", content=_chunks(17 * 1024**2, size=1024**2), headers={**ADMIN, **JSON}
    )
    assert_error(response, 413, "payload_too_large")
    assert dump(registry) == before


# --- a row whose blob is missing: 500 integrity, or 404 when the user was just deleted --------


def _remove_anchor_blobs(client: TestClient, registry: Registry) -> None:
    bank = client.get(f"/v1/banks/{TASK}", headers=READ).json()
    for anchor in bank["anchors"]:
        digest = anchor["adapter_blob"]
        path = registry.store_dir / "blobs" / "sha256" / digest[:2] / digest
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        path.unlink()


def test_missing_blob_is_a_500_integrity_error(client: TestClient, registry: Registry) -> None:
    _remove_anchor_blobs(client, registry)
    before = dump(registry)
    assert_error(client.get("/v1/users/alice/adapter", headers=READ), 500, "integrity_error")
    assert dump(registry) == before


def test_blob_gone_with_its_deleted_user_is_404(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mta.registry import service
    from mta.storage import BlobNotFoundError

    def export_while_deleted(ctx: Any, identity: Any, *args: Any, **kwargs: Any) -> Any:
        # The race: the user is deleted (rows, then blobs) while their export reads blobs.
        service.delete_user(ctx, identity.user_id)
        raise BlobNotFoundError(f"blob {'0' * 64} not found")

    monkeypatch.setattr(service, "export_user", export_while_deleted)
    assert_error(client.get("/v1/users/alice/adapter", headers=READ), 404, "not_found")


# --- unknown users named in a bulk job: one 404 naming them, nothing queued -------------------


def test_bulk_job_naming_unknown_users_queues_nothing(
    client: TestClient, registry: Registry
) -> None:
    before = dump(registry)
    ghosts = [f"ghost{n}" for n in range(7)]
    response = client.post(B, json={"user_ids": ["alice", *ghosts], "shots": 1}, headers=ADMIN)
    assert_error(response, 404, "not_found")
    message = response.json()["error"]["message"]
    assert "'ghost0'" in message and "'alice'" not in message and "2 more" in message, message
    assert sum(client.app.state.mta.jobs.counts().values()) == 0
    assert dump(registry) == before


# --- oversized headers over a real socket: a 431 body, not a reset connection ---------------


@pytest.fixture
def live_url(registry: Registry) -> Iterator[str]:
    """The base URL of a uvicorn server configured as `mta serve` configures it."""
    import uvicorn

    from mta.server.listener import uvicorn_config

    app = make_client(registry).app
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    host, port = listening.getsockname()
    server = uvicorn.Server(uvicorn_config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    try:
        for _ in range(1200):  # bounded wait for startup
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.05)
        assert server.started, "uvicorn never started"
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        listening.close()


def test_oversized_authorization_is_431_over_a_real_socket(
    live_url: str, registry: Registry
) -> None:
    before = dump(registry)
    with httpx.Client(base_url=live_url, timeout=30) as http:
        assert_error(http.get("/v1/users/alice", headers=HUGE_TOKEN), 431, "headers_too_large")
        # The connection stays usable, and a normal request still gets its answer.
        assert http.get("/v1/users/alice", headers=READ).status_code == 200
        overflow = http.get(f"/v1/banks/{TASK}?ref={OVERFLOW}", headers=READ)
        assert_error(overflow, 404, "not_found")
        assert http.get("/v1/users/alice", headers=READ).status_code == 200
    assert dump(registry) == before


# --- the documented error table and the routes' OpenAPI responses agree -----------------------

# Statuses any path can answer before a route runs; the table documents them, no route lists them.
ANY_PATH = {405, 431}


def _documented_errors() -> set[tuple[int, str]]:
    """(status, code) of each row of docs/serving.md's error table."""
    text = SERVING_MD.read_text()
    table = text[text.index("### Errors") :].split("\n\n")[2]
    pairs = set()
    for row in table.splitlines()[2:]:
        status_cell, code_cell = row.split("|")[1:3]
        statuses = [int(s) for s in re.findall(r"\d{3}", status_cell)]
        codes = re.findall(r"`([a-z_]+)`", code_cell)
        if len(statuses) > 1:  # "401 / 403 | `unauthorized` / `forbidden`"
            assert len(codes) == len(statuses), row
            pairs.update(zip(statuses, codes, strict=True))
        else:
            pairs.update((statuses[0], code) for code in codes)
    return pairs


def test_documented_error_table_matches_the_openapi_responses(client: TestClient) -> None:
    from mta.server.errors import error_mappings

    documented = _documented_errors()
    statuses = {status for status, _ in documented}
    declared: set[int] = set()
    for path, operations in client.app.openapi()["paths"].items():
        for method, operation in operations.items():
            errors = {int(s) for s in operation["responses"] if int(s) >= 400}
            assert errors <= statuses, (method, path, sorted(errors - statuses))
            declared |= errors
    assert not declared & ANY_PATH, sorted(declared & ANY_PATH)
    assert statuses == declared | ANY_PATH, sorted(statuses ^ (declared | ANY_PATH))
    mapped = {(m.status, m.code) for m in error_mappings()}
    assert mapped <= documented, sorted(mapped - documented)
