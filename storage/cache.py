"""AdapterCache: a size-bounded LRU folder of materialized PEFT adapter folders."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

TEMP_PREFIX = ".tmp-"
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

    `put` copies into a temp folder and renames it into place, so a key's folder is either
    absent or complete, and several processes may share one root. `get` refreshes the
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

    def get(self, key: str) -> Path | None:
        """Folder cached under `key`, marked as most recently used; None when absent."""
        path = self.path_for(key)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path if path.is_dir() else None

    def put(self, key: str, src_dir: str | Path) -> Path:
        """Copy `src_dir` into the cache as `key`, then evict old entries down to `max_bytes`.

        Args:
            key: cache key, e.g. a content digest; an existing entry is kept, not replaced.
            src_dir: folder to copy (e.g. a PEFT adapter folder).

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
