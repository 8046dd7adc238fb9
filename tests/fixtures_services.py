"""Fixtures for the real PostgreSQL and S3-compatible servers that .ci/run starts.

Start the servers locally with `eval "$(.ci/services.sh start)"`, which exports
MTA_TEST_PG_URL and MTA_TEST_S3_ENDPOINT; `.ci/services.sh stop` stops them. Without
those variables the fixtures skip, except under CI=true, where they fail so that CI can
never pass by skipping the integration tests. Mark tests that use them
`@pytest.mark.integration`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

PG_URL_ENV = "MTA_TEST_PG_URL"
S3_ENDPOINT_ENV = "MTA_TEST_S3_ENDPOINT"


def _required_env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
        pytest.fail(f"{name} is not set but CI=true: .ci/run must start .ci/services.sh first")
    pytest.skip(f"{name} is not set; set by .ci/run (.ci/services.sh)")


@pytest.fixture(scope="session")
def pg_url() -> str:
    """SQLAlchemy URL (`postgresql+psycopg://mta:mta@127.0.0.1:PORT/mta_test`) of the server.

    Its user may create databases. Tests should not write to this shared database: use
    `pg_db_url`. Skips when MTA_TEST_PG_URL is unset (fails under CI=true).
    """
    return _required_env(PG_URL_ENV)


@pytest.fixture
def pg_db_url(pg_url: str) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty database created for this test and dropped after it.

    Dispose of any engine you create before the test ends; leftover connections are
    terminated by the drop (`DROP DATABASE ... WITH (FORCE)`).
    """
    import psycopg
    from sqlalchemy.engine import make_url

    server = make_url(pg_url)
    name = f"mta_t_{uuid.uuid4().hex[:16]}"
    admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """URL of the S3-compatible server (moto_server), e.g. `http://127.0.0.1:55000`.

    Skips when MTA_TEST_S3_ENDPOINT is unset (fails under CI=true).
    """
    return _required_env(S3_ENDPOINT_ENV)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point boto3 and the stores at the test server: MTA_S3_ENDPOINT_URL and dummy credentials.

    Returns the endpoint URL. Child processes started by the test inherit the variables.
    """
    monkeypatch.setenv("MTA_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    return s3_endpoint


@pytest.fixture(scope="session")
def _s3_admin_client(s3_endpoint: str) -> Any:
    # Created once: building a boto3 client costs a quarter second.
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


@pytest.fixture
def s3_client(s3_env: str, _s3_admin_client: Any) -> Any:
    """A boto3 S3 client for the test server, to inspect or damage objects behind a store."""
    return _s3_admin_client


@pytest.fixture
def s3_store_url(s3_client: Any) -> Iterator[str]:
    """`s3://<fresh bucket>/store` on the test server, with the env set as in `s3_env`.

    The bucket exists (empty) and is emptied and deleted after the test; blobs live under
    the `store/` key prefix. Pass the URL to `open_store` or set it as MTA_STORE_URL.
    """
    bucket = f"mta-test-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}/store"
    finally:
        pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            for obj in page.get("Contents", []):
                s3_client.delete_object(Bucket=bucket, Key=obj["Key"])
        s3_client.delete_bucket(Bucket=bucket)
