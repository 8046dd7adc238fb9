"""S3BlobStore specifics on the real moto server: keys, checksums, buckets, error mapping."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from mta.storage import (
    BlobCorruptedError,
    BlobNotFoundError,
    S3BlobStore,
    StorageError,
    open_store,
)

DIGEST = hashlib.sha256(b"x").hexdigest()


@pytest.fixture
def s3_store(s3_store_url: str) -> S3BlobStore:
    """The empty S3 store of this test's fresh bucket."""
    store = open_store(s3_store_url)
    assert isinstance(store, S3BlobStore)
    return store


@pytest.mark.integration
def test_blob_key_and_sha256_checksum_reach_the_server(
    s3_store: S3BlobStore, s3_client: Any
) -> None:
    data = b"checksummed"
    digest = s3_store.put_bytes(data)
    key = f"store/blobs/sha256/{digest[:2]}/{digest}"
    head = s3_client.head_object(Bucket=s3_store.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ContentLength"] == len(data)
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.integration
def test_iter_blobs_skips_foreign_keys(s3_store: S3BlobStore, s3_client: Any) -> None:
    digest = s3_store.put_bytes(b"mine")
    other = hashlib.sha256(b"other").hexdigest()
    for key in (
        "store/blobs/sha256/README",
        f"store/blobs/sha256/zz/{other}",
        f"elsewhere/blobs/sha256/{other[:2]}/{other}",
        f"store/blobs/sha256/{other[:2]}/{other}.partial",
    ):
        s3_client.put_object(Bucket=s3_store.bucket, Key=key, Body=b"junk")
    assert [info.digest for info in s3_store.iter_blobs()] == [digest]


@pytest.mark.integration
def test_missing_bucket_is_a_clear_storage_error(s3_env: str) -> None:
    store = open_store(f"s3://absent-{uuid.uuid4().hex[:12]}/p")
    with pytest.raises(StorageError, match="does not exist") as info:
        store.get_bytes(DIGEST)
    assert not isinstance(info.value, BlobNotFoundError)
    with pytest.raises(StorageError, match="does not exist"):
        store.put_bytes(b"nowhere to go")


@pytest.mark.integration
def test_create_makes_the_bucket(s3_env: str, s3_client: Any) -> None:
    bucket = f"created-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{bucket}/prefix", create=True)
    try:
        store.ensure()  # a second call finds it
        digest = store.put_bytes(b"in a new bucket")
        assert store.get_bytes(digest) == b"in a new bucket"
    finally:
        for info in store.iter_blobs():
            store.delete(info.digest)
        s3_client.delete_bucket(Bucket=bucket)


def _client_error(code: str, status: int) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"server says {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "GetObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "status", "expected", "text"),
    [
        ("NoSuchKey", 404, BlobNotFoundError, "not found"),
        ("404", 404, BlobNotFoundError, "not found"),
        ("AccessDenied", 403, StorageError, "access denied"),
        ("NoSuchBucket", 404, StorageError, "does not exist"),
        ("BadDigest", 400, BlobCorruptedError, "failed its checksum"),
        ("SlowDown", 503, StorageError, "S3 error SlowDown"),
    ],
)
def test_boto_errors_map_to_storage_errors(
    code: str, status: int, expected: type[Exception], text: str
) -> None:
    store = S3BlobStore("bucket", "p", endpoint_url="http://s3.example")
    with pytest.raises(expected, match=text) as info:
        store._raise(_client_error(code, status), "reading", DIGEST)
    assert "s3://bucket/p" in str(info.value)
    if code == "NoSuchBucket":
        assert not isinstance(info.value, BlobNotFoundError)


def test_connection_failures_map_to_storage_error() -> None:
    store = S3BlobStore("bucket", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError, match="127.0.0.1:9"):
        store._raise(EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "listing")
