"""AdapterCache: atomic puts, LRU eviction under a byte bound, sharing a root."""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from mta.storage import AdapterCache
from mta.storage.cache import ENTRY_MANIFEST, entry_problem

UNIT = 1000  # bytes of payload per fake adapter folder (plus a small config file)


def make_adapter(root: Path, name: str, size: int = UNIT) -> Path:
    """A folder shaped like a PEFT adapter, with `size` random payload bytes."""
    folder = root / "src" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}', encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(size))
    return folder


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under `folder` (the cache's manifest aside)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ENTRY_MANIFEST
    }


def age(cache: AdapterCache, key: str, seconds_ago: float) -> None:
    """Pretend `key` was last used `seconds_ago`."""
    stamp = time.time() - seconds_ago
    os.utime(cache.path_for(key), (stamp, stamp))


def test_put_copies_folder_and_get_finds_it(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    src = make_adapter(tmp_path, "a")
    (src / "nested").mkdir()
    (src / "nested" / "extra.txt").write_text("deep", encoding="utf-8")
    cached = cache.put("a", src)
    assert cached == tmp_path / "cache" / "a"
    assert folder_bytes(cached) == folder_bytes(src)
    assert cache.get("a") == cached
    assert cache.get("b") is None
    manifest = (cached / ENTRY_MANIFEST).stat().st_size
    assert cache.total_bytes() == sum(len(v) for v in folder_bytes(src).values()) + manifest


@pytest.mark.parametrize("damage", ["flip", "remove", "add", "manifest"])
def test_a_damaged_entry_is_discarded_with_a_warning(tmp_path: Path, caplog, damage) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    cached = cache.put("k", make_adapter(tmp_path, "a"))
    weights = cached / "adapter_model.safetensors"
    if damage == "flip":
        data = bytearray(weights.read_bytes())
        data[10] ^= 0x01
        weights.write_bytes(bytes(data))
    elif damage == "remove":
        weights.unlink()
    elif damage == "add":
        (cached / "extra.bin").write_bytes(b"x")
    else:
        (cached / ENTRY_MANIFEST).write_text("{not json")
    assert entry_problem(cached) is not None
    with caplog.at_level("WARNING", logger="mta.storage.cache"):
        assert cache.get("k") is None
    assert "discarded export-cache entry k" in caplog.text
    assert cache.keys() == []  # rebuilt by the caller on the next put


def test_discard_prefix_removes_entries_and_staging_folders(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    cache.put("u1--a", make_adapter(tmp_path, "a"))
    cache.put("u2--b", make_adapter(tmp_path, "b"))
    with cache.staging("u1--c") as stage:
        (stage / "adapter_model.safetensors").write_bytes(b"half-written")
        crashed = tmp_path / "cache" / ".tmp-u1--c-leftover"
        stage.rename(crashed)  # as a crashed build would leave it
        stage.mkdir()
    assert cache.discard_prefix("u1--") == 1
    assert cache.keys() == ["u2--b"] and not crashed.exists()


def test_put_of_existing_key_keeps_the_first_copy(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    first = folder_bytes(cache.put("k", make_adapter(tmp_path, "one")))
    assert folder_bytes(cache.put("k", make_adapter(tmp_path, "two"))) == first
    assert cache.keys() == ["k"]


def test_least_recently_used_is_evicted_first(tmp_path: Path) -> None:
    # 3.9 units: each entry also holds its ~200-byte content manifest.
    cache = AdapterCache(tmp_path / "cache", max_bytes=int(3.9 * UNIT))
    for key in ("a", "b", "c"):
        cache.put(key, make_adapter(tmp_path, key))
    age(cache, "a", 300)
    age(cache, "b", 200)
    age(cache, "c", 100)
    assert cache.get("a") is not None  # a becomes the most recently used
    cache.put("d", make_adapter(tmp_path, "d"))
    assert cache.get("b") is None
    assert sorted(cache.keys()) == ["a", "c", "d"]
    assert cache.keys()[0] == "c"
    assert cache.total_bytes() <= cache.max_bytes


def test_size_bound_holds_across_many_puts(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=int(2.5 * UNIT))
    for i in range(6):
        key = f"adapter-{i}"
        cache.put(key, make_adapter(tmp_path, key))
        assert cache.total_bytes() <= cache.max_bytes
        assert cache.get(key) is not None
    assert len(cache.keys()) == 2


def test_entry_larger_than_the_bound_is_kept_alone(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=UNIT + 100)
    cache.put("small", make_adapter(tmp_path, "small", size=UNIT // 2))
    big = cache.put("big", make_adapter(tmp_path, "big", size=3 * UNIT))
    assert cache.keys() == ["big"]
    assert big.is_dir()


def test_clear_removes_everything(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    for key in ("a", "b"):
        cache.put(key, make_adapter(tmp_path, key))
    cache.clear()
    assert cache.keys() == []
    assert cache.total_bytes() == 0
    assert cache.get("a") is None


def test_leftovers_of_crashed_processes_are_swept_but_fresh_temps_kept(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    cache.root.mkdir()
    stale, fresh, trash = (cache.root / n for n in (".tmp-x-old", ".tmp-y-new", ".trash-z"))
    for folder in (stale, fresh, trash):
        folder.mkdir()
        (folder / "payload").write_bytes(b"0" * UNIT)
    long_ago = time.time() - 7200
    os.utime(stale, (long_ago, long_ago))
    assert cache.total_bytes() == 0
    cache.put("a", make_adapter(tmp_path, "a"))
    assert not stale.exists()
    assert not trash.exists()
    assert fresh.exists()  # may belong to a put still in progress elsewhere
    assert cache.keys() == ["a"]


def test_caches_sharing_a_root_tolerate_each_others_evictions(tmp_path: Path) -> None:
    one = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    two = AdapterCache(tmp_path / "cache", max_bytes=10 * UNIT)
    one.put("a", make_adapter(tmp_path, "a"))
    assert two.get("a") is not None
    two.clear()
    assert one.get("a") is None
    assert one.put("b", make_adapter(tmp_path, "b")).is_dir()


@pytest.mark.parametrize("key", ["", "../escape", "a/b", ".hidden", "x" * 201, "sp ace", None])
def test_bad_keys_are_rejected(tmp_path: Path, key: object) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=UNIT)
    with pytest.raises(ValueError, match="invalid cache key"):
        cache.get(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True])
def test_bad_bounds_are_rejected(tmp_path: Path, max_bytes: object) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        AdapterCache(tmp_path, max_bytes=max_bytes)  # type: ignore[arg-type]


def test_put_of_a_missing_folder_fails_clearly(tmp_path: Path) -> None:
    cache = AdapterCache(tmp_path / "cache", max_bytes=UNIT)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        cache.put("a", tmp_path / "absent")


def _put_in_child(root: str, src: str) -> str:
    return str(AdapterCache(root, max_bytes=10 * UNIT).put("shared", src))


def test_concurrent_processes_putting_the_same_key(tmp_path: Path) -> None:
    src = make_adapter(tmp_path, "shared")
    root = tmp_path / "cache"
    with ProcessPoolExecutor(3, mp_context=get_context("spawn")) as pool:
        paths = set(pool.map(_put_in_child, [str(root)] * 6, [str(src)] * 6))
    assert paths == {str(root / "shared")}
    assert folder_bytes(root / "shared") == folder_bytes(src)
    assert sorted(p.name for p in root.iterdir()) == ["shared"]
