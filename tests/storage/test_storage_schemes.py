"""open_store and the scheme registry: URL parsing, unknown schemes, plug-in schemes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mta.storage import (
    STORE_SCHEMES,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    UnknownSchemeError,
    open_store,
    register_scheme,
)


def test_unknown_scheme_lists_registered_schemes() -> None:
    with pytest.raises(UnknownSchemeError) as info:
        open_store("gs://bucket/path")
    message = str(info.value)
    assert "'gs'" in message
    assert "file://" in message
    assert "s3://" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("url", ["", "   "])
def test_empty_url_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        open_store(url)


def test_s3_url_without_bucket_is_rejected() -> None:
    with pytest.raises(ValueError, match="names no bucket"):
        open_store("s3://")


def test_file_url_without_path_is_rejected() -> None:
    with pytest.raises(ValueError, match="names no folder"):
        open_store("file://")


@pytest.mark.parametrize(
    ("url", "bucket", "prefix", "canonical"),
    [
        ("s3://bucket", "bucket", "", "s3://bucket"),
        ("s3://bucket/", "bucket", "", "s3://bucket"),
        ("s3://bucket/team/mta/", "bucket", "team/mta", "s3://bucket/team/mta"),
    ],
)
def test_s3_url_parsing(url: str, bucket: str, prefix: str, canonical: str) -> None:
    store = open_store(url)
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.prefix, store.url) == (bucket, prefix, canonical)


def test_s3_keys_live_under_the_prefix() -> None:
    digest = "ab" + "0" * 62
    assert S3BlobStore("b", "p/q").key_for(digest) == f"p/q/blobs/sha256/ab/{digest}"
    assert S3BlobStore("b").key_for(digest) == f"blobs/sha256/ab/{digest}"


def test_s3_endpoint_comes_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTA_S3_ENDPOINT_URL", "http://minio.local:9000")
    assert open_store("s3://bucket").endpoint_url == "http://minio.local:9000"
    monkeypatch.delenv("MTA_S3_ENDPOINT_URL")
    assert open_store("s3://bucket").endpoint_url is None


def test_register_scheme_plugs_in_a_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mta.storage.schemes.STORE_SCHEMES", dict(STORE_SCHEMES))
    seen: list[str] = []

    def factory(url: str) -> BlobStore:
        seen.append(url)
        return LocalBlobStore(tmp_path / url.removeprefix("mem://"))

    register_scheme("mem", factory)
    store = open_store("mem://scratch")
    assert seen == ["mem://scratch"]
    assert store.get_bytes(store.put_bytes(b"plugged")) == b"plugged"
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("mem", factory)


@pytest.mark.parametrize("name", ["S3X", "", "1abc", "a b", "x://"])
def test_register_scheme_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid store scheme"):
        register_scheme(name, LocalBlobStore.from_url)


def test_builtin_schemes_cannot_be_replaced() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("s3", LocalBlobStore.from_url)


def test_importing_storage_does_not_import_boto3() -> None:
    code = "import sys, mta.storage; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
