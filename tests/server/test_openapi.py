"""Property-based checks of the OpenAPI contract with schemathesis: no 500s, documented answers.

Every operation gets a bounded number of generated requests (valid and invalid
bodies, paths and query strings) sent with the admin token; each response must not
be a server error and must match the status codes, content types and JSON schemas
the spec declares.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from mta.server.app import create_app
from mta.server.settings import ServerSettings
from tests.server.conftest import ADMIN, Registry, make_client

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _spec() -> dict:
    """The OpenAPI document; it does not depend on the registry, which is never opened here."""
    root = Path(tempfile.gettempdir()) / "mta-openapi-spec-only"
    settings = ServerSettings(db_url=f"sqlite:///{root / 'none.db'}", store_url=f"file://{root}")
    return create_app(settings).openapi()


# Loaded at import so pytest can parametrize by operation (schemathesis' lazy fixture
# loader does not run under pytest 9); each case is sent to a per-test app below.
schema = schemathesis.openapi.from_dict(_spec())


@pytest.fixture
def api_app(registry: Registry) -> Iterator[Any]:
    """An app over this test's registry (one adapt worker, so jobs never pile up)."""
    with make_client(registry) as client:
        yield client.app


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_spec(case: schemathesis.Case, api_app: Any) -> None:
    case.call_and_validate(app=api_app, headers=ADMIN, checks=CHECKS)


def test_spec_declares_bearer_auth_and_error_bodies(registry: Registry) -> None:
    spec = make_client(registry).app.openapi()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/healthz":
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (method, path, status)
