"""Property-based checks of the OpenAPI contract with schemathesis: no 500s, documented answers.

Every operation gets a bounded number of generated requests (valid and invalid
bodies, paths and query strings) sent with the admin token; each response must not
be a server error and must match the status codes, content types and JSON schemas
the spec declares.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import ADMIN, Registry, make_client

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(registry: Registry) -> schemathesis.schemas.BaseSchema:
    """The app's OpenAPI schema, loaded through ASGI from a server over a fresh registry."""
    client = make_client(registry)
    # Adapt jobs are queued on a background thread: one worker, so they never pile up.
    return schemathesis.openapi.from_asgi("/openapi.json", client.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi_spec(case: schemathesis.Case) -> None:
    case.call_and_validate(headers=ADMIN, checks=CHECKS)


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
