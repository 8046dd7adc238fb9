"""LocalBlobStore specifics: layout, read-only files, atomic writes, URL forms."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from mta.storage import LocalBlobStore, StorageError, StoreNotFoundError, open_store


@pytest.fixture
def local(tmp_path: Path) -> LocalBlobStore:
    """An empty local store under tmp_path."""
    store = open_store(f"file://{tmp_path / 'store'}")
    assert isinstance(store, LocalBlobStore)
    return store


def test_layout_and_read_only_mode(local: LocalBlobStore) -> None:
    digest = local.put_bytes(b"layout")
    path = local.root / "blobs" / "sha256" / digest[:2] / digest
    assert local.path_for(digest) == path
    assert path.read_bytes() == b"layout"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


def test_writes_leave_no_temp_files(local: LocalBlobStore, tmp_path: Path) -> None:
    source = tmp_path / "f.bin"
    source.write_bytes(b"from a file")
    digests = {local.put_bytes(b"a"), local.put_bytes(b"b"), local.put_file(source)}
    files = [p for p in local.root.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == sorted(digests)


def test_existing_blob_is_not_rewritten_only_touched(local: LocalBlobStore) -> None:
    digest = local.put_bytes(b"keep me")
    os.utime(local.path_for(digest), (1_000_000_000, 1_000_000_000))
    before = local.path_for(digest).stat()
    local.put_bytes(b"keep me")
    after = local.path_for(digest).stat()
    assert after.st_ino == before.st_ino
    assert after.st_mtime_ns > before.st_mtime_ns


def test_truncated_copy_is_replaced_by_the_next_put(local: LocalBlobStore) -> None:
    digest = local.put_bytes(b"0123456789")
    path = local.path_for(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"01234")
    assert local.put_bytes(b"0123456789") == digest
    assert local.get_bytes(digest) == b"0123456789"


def test_iter_blobs_skips_temp_and_foreign_files(local: LocalBlobStore) -> None:
    digest = local.put_bytes(b"real")
    fanout = local.path_for(digest).parent
    (fanout / ".tmp-abc123").write_bytes(b"half written")
    (fanout / "README").write_text("not a blob")
    wrong_dir = hashlib.sha256(b"elsewhere").hexdigest()
    misplaced = local.root / "blobs" / "sha256" / ("00" if wrong_dir[:2] != "00" else "01")
    misplaced.mkdir()
    (misplaced / wrong_dir).write_bytes(b"elsewhere")
    assert [info.digest for info in local.iter_blobs()] == [digest]


def test_url_forms_name_the_same_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "data" / "store"
    stores = [
        open_store("file://data/store"),
        open_store("data/store"),
        open_store(f"file://{absolute}"),
        open_store(str(absolute)),
        open_store(f"FILE://{absolute}"),
    ]
    for store in stores:
        assert isinstance(store, LocalBlobStore)
        assert store.root == absolute
        assert store.url == f"file://{absolute}"
    assert stores[0].url.startswith("file:///")


def test_open_store_does_not_create_until_asked(tmp_path: Path) -> None:
    root = tmp_path / "lazy"
    open_store(f"file://{root}")
    assert not root.exists()
    open_store(f"file://{root}", create=True)
    assert (root / "blobs" / "sha256").is_dir()


def test_put_file_of_missing_path_raises_file_not_found(
    local: LocalBlobStore, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError):
        local.put_file(tmp_path / "absent.bin")


@pytest.mark.parametrize("kind", ["missing", "empty-folder", "a-file", "under-a-file"])
def test_a_store_ensure_never_set_up_does_not_exist(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "store"
    if kind == "empty-folder":
        root.mkdir()
    elif kind in ("a-file", "under-a-file"):
        root.write_text("not a store", encoding="utf-8")
    store = LocalBlobStore(root / "sub" if kind == "under-a-file" else root)
    with pytest.raises(StoreNotFoundError, match="mta init") as raised:
        store.check_exists()
    assert store.url in str(raised.value)
    assert isinstance(raised.value, StorageError)
    assert not root.exists() or kind != "missing"  # checking created nothing


def test_check_exists_passes_once_ensured_and_once_written(tmp_path: Path) -> None:
    ensured, written = LocalBlobStore(tmp_path / "a"), LocalBlobStore(tmp_path / "b")
    ensured.ensure()
    written.put_bytes(b"a first blob creates the blob folder")
    ensured.check_exists()
    written.check_exists()
