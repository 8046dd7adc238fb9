"""The BlobStore contract, checked on the local store and on the real S3 server."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from multiprocessing import get_context
from pathlib import Path

import pytest

from mta.storage import (
    BlobCorruptedError,
    BlobNotFoundError,
    BlobStore,
    InvalidDigestError,
    StorageError,
    open_store,
)

MISSING = hashlib.sha256(b"never stored").hexdigest()


def test_put_get_round_trip_addresses_by_sha256(store: BlobStore) -> None:
    data = os.urandom(3000)
    digest = store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(digest) == data


def test_empty_blob_round_trips(store: BlobStore) -> None:
    digest = store.put_bytes(b"")
    assert digest == hashlib.sha256(b"").hexdigest()
    assert store.get_bytes(digest) == b""
    assert store.size(digest) == 0


def test_put_is_idempotent(store: BlobStore) -> None:
    first = store.put_bytes(b"same bytes")
    second = store.put_bytes(b"same bytes")
    assert first == second
    assert [info.digest for info in store.iter_blobs()] == [first]


def test_re_putting_a_stored_blob_makes_it_young_again(store: BlobStore, tmp_path: Path) -> None:
    # gc judges orphans by age: a writer about to reference an old orphan must refresh it.
    digest = store.put_bytes(b"old orphan")
    first = store.modified(digest)
    time.sleep(1.1)  # S3's LastModified has one-second resolution
    assert store.put_bytes(b"old orphan") == digest
    second = store.modified(digest)
    assert second > first
    path = tmp_path / "orphan.bin"
    path.write_bytes(b"old orphan")
    time.sleep(1.1)
    assert store.put_file(path) == digest
    assert store.modified(digest) > second
    assert [info.modified for info in store.iter_blobs()] == [store.modified(digest)]
    assert store.get_bytes(digest) == b"old orphan"


def test_put_file_streams_and_matches_put_bytes(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 123)  # more than one read chunk
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    digest = store.put_file(path)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(digest) == data
    assert store.put_bytes(data) == digest


def test_exists_size_delete(store: BlobStore) -> None:
    digest = store.put_bytes(b"12345")
    assert store.exists(digest)
    assert store.size(digest) == 5
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(BlobNotFoundError):
        store.delete(digest)


def test_missing_blob_raises_not_found_everywhere(store: BlobStore) -> None:
    assert not store.exists(MISSING)
    for operation in (store.get_bytes, store.size, store.modified, store.verify, store.delete):
        with pytest.raises(BlobNotFoundError, match=MISSING):
            operation(MISSING)


def test_not_found_is_also_file_not_found(store: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.get_bytes(MISSING)


def test_iter_blobs_lists_digest_size_and_utc_time(store: BlobStore) -> None:
    before = datetime.now(timezone.utc) - timedelta(minutes=5)
    blobs = {store.put_bytes(bytes([i]) * (i + 1)): i + 1 for i in range(5)}
    listed = list(store.iter_blobs())
    assert {info.digest: info.size for info in listed} == blobs
    for info in listed:
        assert info.modified.tzinfo is not None
        assert info.modified.utcoffset() == timedelta(0)
        assert before <= info.modified <= datetime.now(timezone.utc) + timedelta(minutes=5)


def test_iter_blobs_of_empty_store_is_empty(store: BlobStore) -> None:
    assert list(store.iter_blobs()) == []


def test_corrupted_blob_is_never_returned(
    store: BlobStore, overwrite_blob: Callable[[BlobStore, str, bytes], None]
) -> None:
    digest = store.put_bytes(b"the real content")
    overwrite_blob(store, digest, b"the rotten content")
    with pytest.raises(BlobCorruptedError, match=digest):
        store.get_bytes(digest)
    with pytest.raises(BlobCorruptedError, match=digest):
        store.verify(digest)


def test_verify_accepts_intact_blob(store: BlobStore) -> None:
    digest = store.put_bytes(os.urandom(5000))
    store.verify(digest)


BAD_DIGESTS = [
    "../../etc/passwd",
    "A" * 64,
    "0" * 63,
    "0" * 65,
    "g" * 64,
    "0" * 62 + "/x",
    "",
    None,
]


def test_bad_digests_are_rejected(store: BlobStore) -> None:
    operations = (store.get_bytes, store.exists, store.size, store.delete, store.verify)
    for bad in BAD_DIGESTS:
        for operation in operations:
            with pytest.raises(InvalidDigestError, match="64 lowercase hexadecimal"):
                operation(bad)  # type: ignore[arg-type]


def test_invalid_digest_is_a_value_error_and_a_storage_error(store: BlobStore) -> None:
    with pytest.raises(ValueError):
        store.get_bytes("nope")
    with pytest.raises(StorageError):
        store.get_bytes("nope")


def test_ensure_is_repeatable(store: BlobStore) -> None:
    store.ensure()
    store.ensure()
    digest = store.put_bytes(b"after ensure")
    assert store.get_bytes(digest) == b"after ensure"


def test_an_ensured_store_exists(store: BlobStore) -> None:
    store.ensure()
    store.check_exists()


def _put_in_child(url: str, data: bytes) -> str:
    return open_store(url).put_bytes(data)


def test_concurrent_processes_putting_the_same_blob(store_url: str) -> None:
    data = os.urandom(200_000)
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        digests = list(pool.map(_put_in_child, [store_url] * 6, [data] * 6))
    store = open_store(store_url)
    assert set(digests) == {hashlib.sha256(data).hexdigest()}
    assert store.get_bytes(digests[0]) == data
    assert [info.digest for info in store.iter_blobs()] == [digests[0]]
