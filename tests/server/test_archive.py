"""Adapter archives: deterministic tar, ETag rules, the in-memory LRU."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

import pytest

from mta.registry.identity import AdapterIdentity
from mta.server.archive import ArchiveCache, archive_etag, etag_matches, tar_adapter_folder


def _peft_folder(path: Path, payload: bytes) -> Path:
    path.mkdir()
    (path / "adapter_config.json").write_text('{"r": 8}')
    (path / "adapter_model.safetensors").write_bytes(payload)
    (path / "README.md").write_text("not archived")
    return path


def test_tar_is_deterministic_and_holds_only_the_peft_files(tmp_path: Path) -> None:
    first = tar_adapter_folder(_peft_folder(tmp_path / "a", b"\x01" * 1000))
    second = tar_adapter_folder(_peft_folder(tmp_path / "b", b"\x01" * 1000))
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["adapter_config.json", "adapter_model.safetensors"]
        assert all(m.isfile() and m.mtime == 0 and m.mode == 0o644 for m in members)
        assert tar.extractfile("adapter_model.safetensors").read() == b"\x01" * 1000


def test_tar_of_incomplete_folder_raises(tmp_path: Path) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError):
        tar_adapter_folder(folder)


def _identity(stack: str | None, weight: float = 0.5, recipe_id: int = 1) -> AdapterIdentity:
    return AdapterIdentity(
        user_id="u",
        anchors=(("a1" * 32, weight),),
        method="cat",
        params={"top_k": 1},
        stack=stack,
        base_model="m",
        recipe_id=recipe_id,
        stack_id=None,
    )


def test_etag_depends_on_identity_and_options_only() -> None:
    identity = _identity("ab" * 32)
    # Row ids do not fix bytes: another database with the same content gives the same tag.
    assert archive_etag(identity, None) == archive_etag(_identity("ab" * 32, recipe_id=9), None)
    assert archive_etag(identity, None) != archive_etag(identity, 4)
    assert archive_etag(identity, None) != archive_etag(identity, None, "fp16")
    assert archive_etag(identity, None) != archive_etag(_identity("cd" * 32), None)
    assert archive_etag(identity, None) != archive_etag(_identity("ab" * 32, weight=0.6), None)
    assert archive_etag(identity, None) != archive_etag(_identity(None), None)
    tag = archive_etag(identity, None)
    assert tag.startswith('"') and tag.endswith('"') and len(tag) == 66


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ("*", True),
        ('"abd"', False),
        ("abc", False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert etag_matches(header, '"abc"') is matches


def test_lru_evicts_least_recently_used_by_bytes() -> None:
    cache = ArchiveCache(max_bytes=10)
    cache.put("a", b"1234")
    cache.put("b", b"1234")
    assert cache.get("a") == b"1234"  # now b is the least recently used
    cache.put("c", b"1234")
    assert cache.get("b") is None
    assert cache.get("a") == b"1234" and cache.get("c") == b"1234"
    assert cache.total_bytes == 8 and len(cache) == 2


def test_lru_skips_items_larger_than_itself_and_zero_disables() -> None:
    cache = ArchiveCache(max_bytes=3)
    cache.put("big", b"1234")
    assert cache.get("big") is None and cache.total_bytes == 0
    off = ArchiveCache(max_bytes=0)
    off.put("x", b"1")
    assert off.get("x") is None


def test_building_lock_serializes_one_key() -> None:
    cache = ArchiveCache(max_bytes=100)
    builds: list[int] = []
    start = threading.Barrier(4)

    def fetch(i: int) -> None:
        start.wait()
        with cache.building("k"):
            if cache.get("k") is None:
                builds.append(i)
                cache.put("k", b"data")

    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(builds) == 1
    assert cache._building == {}  # lock records are released
