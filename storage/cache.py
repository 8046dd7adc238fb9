"""AdapterCache: a size-bounded LRU folder of materialized PEFT adapter folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

log = logging.getLogger("mta.storage.cache")

TEMP_PREFIX = ".tmp-"
# Inside each entry: the sha256 of every file, written before the entry is renamed into place.
ENTRY_MANIFEST = ".mta-entry.json"
TRASH_PREFIX = ".trash-"
STALE_TEMP_SECONDS = 3600

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def _validate_key(key: object) -> str:
    # Keys become folder names: a strict alphabet rules out traversal and hidden entries.
    if not isinstance(key, str) or _KEY_RE.fullmatch(key) is None:
        raise ValueError(
            f"invalid cache key {key!r}: use 1-200 characters of A-Z a-z 0-9 . _ - "
            "starting with a letter or digit (e.g. a sha256 digest)"
        )
    return key


def _tree_size(path: str | Path) -> int:
    """Bytes of the regular files under `path`; files vanishing meanwhile count as 0."""
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _file_digests(path: Path) -> dict[str, str]:
    """sha256 of each regular file under `path` (the manifest excluded), by relative path."""
    digests = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.name != ENTRY_MANIFEST):
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digests[file.relative_to(path).as_posix()] = digest.hexdigest()
    return digests


def entry_problem(path: Path) -> str | None:
    """Why a cache entry cannot be trusted (one line), or None when its files match."""
    try:
        manifest = json.loads((path / ENTRY_MANIFEST).read_text())
        expected = manifest["files"]
        actual = _file_digests(path)
    except FileNotFoundError:
        return "no content manifest"
    except (ValueError, KeyError, TypeError):
        return "unreadable content manifest"
    if actual != expected:
        changed = sorted(
            set(actual) ^ set(expected)
            | {name for name in set(actual) & set(expected) if actual[name] != expected[name]}
        )
        return f"content differs from its manifest: {', '.join(changed)}"
    return None


def entry_sources(path: Path) -> list[str] | None:
    """The blob digests an entry records it was derived from; None when it records none.

    Entries written before sources were recorded (or with an unreadable manifest) answer
    None: nothing can say what they were built from.
    """
    try:
        sources = json.loads((path / ENTRY_MANIFEST).read_text()).get("sources")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(sources, list) or not all(isinstance(d, str) for d in sources):
        return None
    return sources


def _fsync_tree(path: Path) -> None:
    # A cache entry must never appear with half-written files after a crash.
    for folder, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class AdapterCache:
    """Folders `<root>/<key>/` kept under `max_bytes`, evicting the least recently used.

    `put` copies into a temp folder, records each file's sha256 in `ENTRY_MANIFEST` and
    renames the folder into place, so a key's folder is either absent or complete, and
    several processes may share one root. `get` verifies the files against the manifest
    (a bad entry is discarded with a warning, and the caller rebuilds it) and refreshes the
    folder's mtime, which is the recency used for eviction. A folder evicted by another
    process while in use can vanish: callers load it right after `get`/`put`.
    """

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        """Use `root` (created on first put) and keep its entries under `max_bytes` bytes."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"cache max_bytes must be a positive integer, got {max_bytes!r}")
        self.root = Path(root).expanduser().absolute()
        self.max_bytes = max_bytes

    def path_for(self, key: str) -> Path:
        """Folder of `key` (whether or not it is cached)."""
        return self.root / _validate_key(key)

    def get(self, key: str, *, verify: bool = True) -> Path | None:
        """Folder cached under `key`, marked as most recently used; None when absent or bad."""
        path = self.path_for(key)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        if not path.is_dir():
            return None
        problem = entry_problem(path) if verify else None
        if problem is not None:
            log.warning(
                "Warning: discarded export-cache entry %s (%s); rebuilding it", key, problem
            )
            self.discard(key)
            return None
        return path

    def discard(self, key: str) -> None:
        """Remove one entry if present."""
        self._remove(_validate_key(key))

    def discard_prefix(self, prefix: str) -> int:
        """Remove every entry, temp and staging folder whose key starts with `prefix`."""
        removed = 0
        for name in self.names():
            if name.startswith(prefix):
                self._remove(name)
                removed += 1
            elif name.startswith(TEMP_PREFIX + prefix):
                shutil.rmtree(self.root / name, ignore_errors=True)
        return removed

    def discard_derived_from(self, digests: Iterable[str], *, unrecorded: bool = False) -> int:
        """Remove every entry whose manifest names one of these blobs among its sources.

        Args:
            digests: blobs being erased; a copy derived from one must not outlive it.
            unrecorded: also remove entries that record no sources (written before sources
                were recorded): nothing can say they were not derived from these blobs.
        """
        doomed = set(digests)
        removed = 0
        for key in self.keys():  # noqa: SIM118 - AdapterCache is not a dict
            sources = entry_sources(self.root / key)
            if (sources is None and unrecorded) or doomed.intersection(sources or ()):
                self._remove(key)
                removed += 1
        return removed

    def names(self) -> list[str]:
        """Every name under the root: entries, and temp, staging and trash folders."""
        try:
            return [entry.name for entry in os.scandir(self.root)]
        except FileNotFoundError:
            return []

    @contextlib.contextmanager
    def staging(self, key: str) -> Iterator[Path]:
        """A scratch folder for building `key`, inside the cache and named after the key.

        Being named after the key, a folder a crashed build leaves behind is found and
        removed by `discard_prefix` (a user's deletion), not only by the hourly sweep.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{TEMP_PREFIX}{_validate_key(key)}-"))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def put(self, key: str, src_dir: str | Path, *, sources: Collection[str] = ()) -> Path:
        """Copy `src_dir` into the cache as `key`, then evict old entries down to `max_bytes`.

        Args:
            key: cache key, e.g. a content digest; an existing entry is kept, not replaced.
            src_dir: folder to copy (e.g. a PEFT adapter folder).
            sources: digests of the blobs the folder was derived from, recorded in the
                manifest (`entry_sources`), so that erasing one of them finds its derived
                copies (`discard_derived_from`).

        Returns:
            The cached folder. It is never evicted by this call, even if alone it
            exceeds `max_bytes`.
        """
        final = self.path_for(key)
        source = Path(src_dir)
        if not source.is_dir():
            raise NotADirectoryError(f"cannot cache {source}: not a folder")
        if self.get(key) is None:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{TEMP_PREFIX}{key}-"))
            try:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
                manifest = {"files": _file_digests(tmp), "sources": sorted(set(sources))}
                (tmp / ENTRY_MANIFEST).write_text(json.dumps(manifest, sort_keys=True))
                _fsync_tree(tmp)
                os.chmod(tmp, 0o755)  # mkdtemp's 0o700 would hide entries from other users
                try:
                    os.rename(tmp, final)
                except OSError:
                    # Another process renamed its complete copy into place first.
                    if not final.is_dir():
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.utime(final)
        self._evict(keep=key)
        return final

    def total_bytes(self) -> int:
        """Bytes held by the cached folders."""
        return sum(size for _, _, size in self._entries())

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        return [name for _, name, _ in sorted(self._entries())]

    def clear(self) -> None:
        """Remove every cached folder."""
        for _, name, _ in self._entries():
            self._remove(name)
        self._sweep(max_age=STALE_TEMP_SECONDS)

    def _entries(self) -> list[tuple[int, str, int]]:
        """(mtime_ns, key, bytes) of each complete entry."""
        entries = []
        try:
            scan = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in scan:
            if entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
                mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            entries.append((mtime, entry.name, _tree_size(entry.path)))
        return entries

    def _evict(self, keep: str) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        for _, name, size in entries:
            if total <= self.max_bytes:
                break
            if name != keep:
                self._remove(name)
                total -= size
        self._sweep(max_age=STALE_TEMP_SECONDS)

    def _remove(self, name: str) -> None:
        # Renaming first makes the entry vanish atomically; the slow delete happens aside.
        trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(self.root / name, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep(self, max_age: float) -> None:
        """Delete trash and temp folders left by crashed processes."""
        now = time.time()
        try:
            scan = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for entry in scan:
            if entry.name.startswith(TRASH_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat(follow_symlinks=False).st_mtime >= max_age:
                        shutil.rmtree(entry.path, ignore_errors=True)
