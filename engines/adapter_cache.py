"""A bounded local folder cache of verified adapters, keyed by their versioned names.

``resolve("alice~3f2a9c01b7de")`` returns ``<root>/<options tag>/alice~3f2a9c01b7de/``, a
PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``, files 0644, folders
0755) holding exactly the bytes the server built for that version, or None when the name
is not current any more (410), the user has no adapter (404) or the name is not one of
ours. A kept folder is re-hashed and revalidated (``If-None-Match``: a 304 sends no body);
a new one is written aside under ``.tmp/`` and renamed into place, so a reader sees a
whole folder or none. Past ``max_bytes`` the least recently resolved folders are removed
(never the one just resolved, nor one being resolved). Concurrent resolves of one name in
a process make one request: the first does the work, the others wait for its answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import Future
from pathlib import Path

from .archive_check import ARCHIVE_FILES
from .client import AdapterClient, Fetched
from .names import AdapterName

META_NAME = ".mta-resolver.json"  # in each folder: name, etag, each file's sha256
TMP_DIR = ".tmp"  # never a name: names always end in ~<12 hex>
FILE_MODE = 0o644
FOLDER_MODE = 0o755
STALE_TMP_SECONDS = 3600.0


class AdapterCache:
    """Versioned adapter names -> verified local PEFT folders, bounded in bytes."""

    def __init__(self, root: Path | str, client: AdapterClient, *, max_bytes: int) -> None:
        self.client = client
        self.max_bytes = max_bytes
        self.root = Path(root) / client.options.tag
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Path | None]] = {}

    def resolve(self, name: str) -> Path | None:
        """The local folder of adapter ``name``, fetched or revalidated now.

        Returns:
            The folder, or None: the name is stale (410), the user has no adapter (404; a
            kept folder of the name is removed), or ``name`` is not ``<user id>~<version>``.

        Raises:
            ArchiveError: the server sent an archive that is not the named version's.
            ResolverError: the server is unreachable or failed.
        """
        parsed = AdapterName.parse(name)
        if parsed is None:
            return None
        with self._lock:
            future = self._inflight.get(name)
            leader = future is None
            if future is None:
                future = self._inflight[name] = Future()
        if not leader:
            return future.result()
        try:
            folder = self._resolve(parsed)
        except BaseException as error:
            future.set_exception(error)
            raise
        else:
            future.set_result(folder)
            return folder
        finally:
            with self._lock:
                del self._inflight[name]

    def total_bytes(self) -> int:
        """Bytes of every kept folder."""
        return sum(size for _, _, size in self._entries())

    def _resolve(self, name: AdapterName) -> Path | None:
        folder = self.root / str(name)
        fetched = self.client.fetch(name, self._kept_etag(folder))
        if fetched.status == "not_modified":
            try:
                os.utime(folder)  # most recently used
                return folder
            except FileNotFoundError:  # evicted by another process since it was hashed
                fetched = self.client.fetch(name, None)
        if fetched.status == "fresh":
            self._install(folder, name, fetched)
            self._evict(keep=folder)
            return folder
        if fetched.status == "not_found":  # the user is gone: so are their bytes here
            self._remove(folder)
        return None  # a stale version's folder is left to eviction: an engine may still read it

    def _kept_etag(self, folder: Path) -> str | None:
        """The ETag of a kept folder whose files still hash as recorded, else None."""
        try:
            meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
            for file_name in ARCHIVE_FILES:
                data = (folder / file_name).read_bytes()
                if hashlib.sha256(data).hexdigest() != meta["files"][file_name]:
                    return None
            return str(meta["etag"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _install(self, folder: Path, name: AdapterName, fetched: Fetched) -> None:
        """Write the archive's files aside, then rename the folder into place."""
        staging = self._staging_dir()
        tmp = staging / f"{name}.{uuid.uuid4().hex[:12]}"
        _make_dir(tmp)
        try:
            for file_name, data in fetched.files.items():
                _write_file(tmp / file_name, data)
            meta = {
                "name": str(name),
                "etag": fetched.etag,
                "sha256": fetched.sha256,
                "files": {n: hashlib.sha256(d).hexdigest() for n, d in fetched.files.items()},
            }
            _write_file(tmp / META_NAME, json.dumps(meta, sort_keys=True).encode())
            aside = None
            if folder.exists():  # a damaged copy, or one another process just wrote
                aside = staging / f"{name}.old.{uuid.uuid4().hex[:12]}"
                os.replace(folder, aside)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.is_dir():
                    raise  # not another process's copy of the same bytes: a real failure
            if aside is not None:
                shutil.rmtree(aside, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _staging_dir(self) -> Path:
        """``<root>/.tmp``, created (with the cache folders above it) when missing."""
        staging = self.root / TMP_DIR
        if not staging.is_dir():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            for path in (self.root, staging):
                _make_dir(path, exist_ok=True)
        return staging

    def _entries(self) -> list[tuple[float, Path, int]]:
        """(last use, folder, bytes) of every kept folder."""
        found = []
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return []
        for path in children:
            if AdapterName.parse(path.name) is None or not path.is_dir():
                continue
            try:
                size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
                found.append((path.stat().st_mtime, path, size))
            except FileNotFoundError:
                continue  # removed meanwhile (another process evicted it)
        return found

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used folders until the cache fits ``max_bytes``."""
        with self._lock:
            busy = {self.root / name for name in self._inflight} | {keep}
        entries = sorted(self._entries())
        total = sum(size for _, _, size in entries)
        for _, path, size in entries:
            if total <= self.max_bytes:
                break
            if path not in busy:
                self._remove(path)
                total -= size
        self._sweep_staging()

    def _remove(self, folder: Path) -> None:
        """Remove a folder: renamed aside first, so nobody sees it half deleted."""
        if not folder.exists():
            return
        aside = self._staging_dir() / f"{folder.name}.gone.{uuid.uuid4().hex[:12]}"
        try:
            os.replace(folder, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _sweep_staging(self) -> None:
        """Remove what a crashed writer left under ``.tmp/`` (older than an hour)."""
        cutoff = time.time() - STALE_TMP_SECONDS
        for path in (self.root / TMP_DIR).glob("*"):
            try:
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                continue


def _make_dir(path: Path, *, exist_ok: bool = False) -> None:
    path.mkdir(mode=FOLDER_MODE, exist_ok=exist_ok)
    os.chmod(path, FOLDER_MODE)  # mkdir's mode is masked by the umask


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, FILE_MODE)
