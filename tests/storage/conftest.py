"""Storage fixtures: every contract test runs on a local folder and on the real S3 server."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.storage import BlobStore, LocalBlobStore, S3BlobStore, open_store


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.integration)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store: a `file://` folder, or a fresh bucket on the moto server."""
    if request.param == "s3":
        return request.getfixturevalue("s3_store_url")
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def store(store_url: str) -> BlobStore:
    """The empty store behind `store_url`, opened through `open_store`."""
    return open_store(store_url)


@pytest.fixture
def overwrite_blob(request: pytest.FixtureRequest) -> Callable[[BlobStore, str, bytes], None]:
    """Replace a stored blob's bytes behind the store's back (to simulate disk or bucket rot)."""

    def overwrite(store: BlobStore, digest: str, data: bytes) -> None:
        if isinstance(store, LocalBlobStore):
            path = store.path_for(digest)
            os.chmod(path, 0o644)
            path.write_bytes(data)
        elif isinstance(store, S3BlobStore):
            client = request.getfixturevalue("s3_client")
            client.put_object(Bucket=store.bucket, Key=store.key_for(digest), Body=data)
        else:
            raise TypeError(f"no way to damage a {type(store).__name__}")

    return overwrite
