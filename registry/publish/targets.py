"""Where `mta publish` writes: a local folder or an S3 prefix of per-user PEFT folders.

Unlike a blob store, a publish target holds plain, human-named keys that serving engines
read: `<root>/<name>/adapter_config.json` and `.../adapter_model.safetensors` for each
`engine_name` (`<user id>~<12 hex>`: none is a prefix of another name or of the manifest's,
so LoRAX, listing `<root>/<name>` as a bare prefix, finds that folder's keys only), and the
manifest `<root>/mta-manifest.json`.

A target URL is read by the storage layer's one scheme registry (`mta.storage.open_store`:
a bare path or `file://` → `LocalBlobStore`, `s3://` → `S3BlobStore`, plus any scheme
added with `register_scheme`); the store names the location (root folder, or bucket,
prefix and client), and `TARGET_BACKENDS` says which target writes to each kind of store.
Nothing here parses URLs. A target writes plain keys beside the store's `blobs/`, never blobs.
"""

from __future__ import annotations

import abc
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from mta.storage import (
    STORE_SCHEMES,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    StorageError,
    UnknownSchemeError,
    open_store,
)
from mta.storage.base import sha256_bytes
from mta.storage.local import fsync_dir
from mta.storage.s3 import error_code, put_checked
from mta.storage.schemes import url_scheme

MANIFEST_NAME = "mta-manifest.json"
# Staging and trash entries start with this; names starting with "." are never published.
STAGING_PREFIX = ".mta-"
# A publisher holds an flock on each staging entry it writes; the kernel drops it when the
# process dies, however it dies. The next round's sweep removes unlocked entries older than
# the grace (which covers the instant between creating an entry and locking it) ...
STAGING_GRACE_SECONDS = 30.0
# ... and, on a filesystem without flock, any entry older than this.
_STALE_STAGING_SECONDS = 3600.0
# Engines check for adapter_config.json before loading, so it is written last and removed first.
CONFIG_FILE = "adapter_config.json"


class PublishTarget(abc.ABC):
    """A root of named adapter folders plus one manifest file."""

    url: str

    @abc.abstractmethod
    def prepare(self) -> None:
        """Check the target is usable (create a local root; an S3 bucket must exist)."""

    @abc.abstractmethod
    def read_manifest(self) -> bytes | None:
        """The manifest's bytes, or None when none was published yet."""

    @abc.abstractmethod
    def write_manifest(self, data: bytes) -> None:
        """Replace the manifest in one step (readers see the old or the new one)."""

    @abc.abstractmethod
    def remove_folder(self, name: str) -> None:
        """Remove a published folder and everything in it; a missing one is not an error."""

    @abc.abstractmethod
    def has_folder(self, name: str) -> bool:
        """Whether the folder looks published (the manifest is trusted where checking costs)."""

    @abc.abstractmethod
    def _stage(self, name: str) -> Path:
        """A fresh, empty local folder to write the folder `name` into."""

    @abc.abstractmethod
    def _commit(self, name: str, staged: Path) -> None:
        """Make the staged files the content of the folder `name`."""

    @contextmanager
    def folder_writer(self, name: str) -> Iterator[Path]:
        """Yield a local folder to fill; on success it replaces the published folder `name`.

        The folder is locked (`lock_staging`) while this process fills it, so a concurrent
        round's sweep leaves it alone, and a killed process's folder is swept at once.
        """
        staged = self._stage(name)
        lock = lock_staging(staged)
        try:
            yield staged
            self._commit(name, staged)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
            if lock is not None:
                os.close(lock)  # after the removal: never seen unlocked while it exists


def lock_staging(path: Path) -> int | None:
    """Hold an exclusive flock on a staging entry; the descriptor, None without flock."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_staging(folder: Path, prefix: str = STAGING_PREFIX) -> list[str]:
    """Remove staging entries under `folder` that no live process holds; their names.

    An entry is a leftover when no process holds its flock (a killed publisher's lock died
    with it) and it is older than `STAGING_GRACE_SECONDS`; where flock is unavailable, when
    it is older than an hour. Removal happens while holding the lock, so a publisher never
    loses an entry it is writing.
    """
    import fcntl

    removed = []
    now = time.time()
    for entry in folder.glob(f"{prefix}*"):
        try:
            age = now - entry.lstat().st_mtime
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not ours to open
        try:
            grace = STAGING_GRACE_SECONDS
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live process is writing it
            except OSError:
                grace = _STALE_STAGING_SECONDS  # no flock on this filesystem: age alone
            if age < grace:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
        finally:
            os.close(fd)
    return removed


def _rmtree_gone_ok(path: Path) -> None:
    """rmtree that accepts a concurrent sweep removing the same files."""

    def onerror(_func: Any, _path: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            raise exc_info[1]

    shutil.rmtree(path, onerror=onerror)


def _fsync_files(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


class FolderTarget(PublishTarget):
    """Named folders under a local root, each swapped in by rename.

    A folder is written aside as `<root>/.mta-stage-*`, fsynced, then renamed into place; a
    reader never sees a half-written one. A new adapter gets a new name, so this is a plain
    rename; a name written again (same bytes: a folder deleted by hand, a round that died
    before its manifest) is first renamed to `.mta-old-*`, as rename cannot replace a
    non-empty folder, and is absent for the microseconds between the two renames.
    """

    def __init__(self, location: LocalBlobStore) -> None:
        """Publish under the store's root folder (created by `prepare`)."""
        self.root = location.root
        self.url = location.url

    def prepare(self) -> None:
        """Create the root and sweep staging entries a killed publisher left behind."""
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"publish target {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        sweep_staging(self.root)

    def read_manifest(self) -> bytes | None:
        """The manifest file's bytes, or None."""
        try:
            return (self.root / MANIFEST_NAME).read_bytes()
        except FileNotFoundError:
            return None

    def write_manifest(self, data: bytes) -> None:
        """Temp file, fsync, rename over the manifest."""
        tmp = self.root / f"{STAGING_PREFIX}manifest-{uuid.uuid4().hex}"
        with open(tmp, "wb") as handle:
            lock = lock_staging(tmp)  # a concurrent sweep must not take it mid-write
            try:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
                os.replace(tmp, self.root / MANIFEST_NAME)
            finally:
                if lock is not None:
                    os.close(lock)
        fsync_dir(self.root)

    def remove_folder(self, name: str) -> None:
        """Rename the folder aside (readers stop finding it at once), then delete it."""
        folder = self.root / name
        if not folder.exists():
            return
        trash = self.root / f"{STAGING_PREFIX}old-{uuid.uuid4().hex}"
        os.rename(folder, trash)
        _rmtree_gone_ok(trash)  # a concurrent round may sweep it (it holds no lock)

    def has_folder(self, name: str) -> bool:
        """Whether the folder's adapter_config.json exists (a stat, cheap)."""
        return (self.root / name / CONFIG_FILE).is_file()

    def _stage(self, name: str) -> Path:
        # Inside the root, so the final rename stays on one filesystem.
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}stage-", dir=self.root))

    def _commit(self, name: str, staged: Path) -> None:
        _fsync_files(staged)
        staged.chmod(0o755)  # mkdtemp makes it 0700; engines may run as another user
        final = self.root / name
        trash = None
        if final.exists():
            trash = self.root / f"{STAGING_PREFIX}old-{uuid.uuid4().hex}"
            os.rename(final, trash)
        os.rename(staged, final)
        fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


class S3Target(PublishTarget):
    """Folders as key prefixes `<prefix>/<name>/` in a bucket, plus `<prefix>/mta-manifest.json`.

    S3 has no rename: a folder's files are uploaded with adapter_config.json last (an engine
    that finds the config finds the weights), keys the new folder lacks are then deleted, and
    the manifest is uploaded after every folder. While a folder is replaced an engine may read
    the new weights with the old config for the length of one upload. The manifest is
    trusted: a folder deleted behind the publisher's back is not noticed.
    """

    def __init__(self, location: S3BlobStore) -> None:
        """Publish under the store's bucket and prefix; no request is made until the first use."""
        self.location = location
        self.bucket = location.bucket
        self.prefix = location.prefix
        self.endpoint_url = location.endpoint_url
        self.url = location.url

    @property
    def client(self) -> Any:
        """The store's boto3 client (boto3 is imported on first use)."""
        return self.location.client

    def key(self, *parts: str) -> str:
        """Object key of a path below the prefix."""
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def prepare(self) -> None:
        """HEAD the bucket: publishing never creates one (a typo should not make a bucket).

        Also sweeps the local staging folders (in the temp folder) of killed publishers.
        """
        sweep_staging(Path(tempfile.gettempdir()), f"{STAGING_PREFIX}stage-")
        self._call("checking bucket", self.client.head_bucket, Bucket=self.bucket)

    def read_manifest(self) -> bytes | None:
        """GET the manifest, None on NoSuchKey."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(MANIFEST_NAME))
            return response["Body"].read()
        except Exception as exc:
            if error_code(exc) in {"NoSuchKey", "404", "NotFound"}:
                return None
            self._raise(exc, "reading the manifest of")

    def write_manifest(self, data: bytes) -> None:
        """One PUT (S3 replaces an object atomically)."""
        self._put(self.key(MANIFEST_NAME), data)

    def remove_folder(self, name: str) -> None:
        """Delete the folder's config first, then its other keys."""
        keys = self._keys_under(name)
        config = self.key(name, CONFIG_FILE)
        for key in sorted(keys, key=lambda k: k != config):
            self._call("deleting", self.client.delete_object, Bucket=self.bucket, Key=key)

    def has_folder(self, name: str) -> bool:
        """Trust the manifest: a HEAD per unchanged user would cost a request each round."""
        return True

    def _stage(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}stage-"))

    def _commit(self, name: str, staged: Path) -> None:
        files = sorted(
            (p for p in staged.iterdir() if p.is_file()), key=lambda p: p.name == CONFIG_FILE
        )
        old = self._keys_under(name)
        for path in files:
            self._put(self.key(name, path.name), path.read_bytes())
        for key in sorted(old - {self.key(name, p.name) for p in files}):
            self._call("deleting", self.client.delete_object, Bucket=self.bucket, Key=key)

    def _keys_under(self, name: str) -> set[str]:
        folder = self.key(name) + "/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder
        )
        try:
            return {obj["Key"] for page in pages for obj in page.get("Contents", [])}
        except Exception as exc:
            self._raise(exc, "listing")

    def _put(self, key: str, data: bytes) -> None:
        try:
            put_checked(self.client, self.bucket, key, data, sha256_bytes(data))
        except Exception as exc:
            self._raise(exc, "writing")

    def _call(self, action: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as exc:
            self._raise(exc, action)

    def _raise(self, exc: Exception, action: str) -> NoReturn:
        """Re-raise a boto error as a StorageError that names the target."""
        from botocore.exceptions import BotoCoreError, ClientError

        where = self.endpoint_url or "AWS S3"
        if isinstance(exc, ClientError):
            code = error_code(exc)
            if code in {"NoSuchBucket", "404", "NotFound"}:
                raise StorageError(
                    f"bucket {self.bucket!r} of publish target {self.url} does not exist "
                    f"at {where}; create it first"
                ) from exc
            message = exc.response.get("Error", {}).get("Message") or code
            raise StorageError(f"S3 error {code} {action} {self.url}: {message}") from exc
        if isinstance(exc, BotoCoreError):
            raise StorageError(f"S3 failure {action} {self.url} at {where}: {exc}") from exc
        raise exc


# The store backend each target writes through. The URL schemes are not listed here: they
# are storage's (`STORE_SCHEMES`); a scheme registered there publishes when its store is one
# of these backends.
TARGET_BACKENDS: dict[type[BlobStore], Callable[[Any], PublishTarget]] = {
    LocalBlobStore: FolderTarget,
    S3BlobStore: S3Target,
}


def open_target(url: str) -> PublishTarget:
    """The publish target a URL names: a bare path, `file://PATH` or `s3://BUCKET[/PREFIX]`.

    Raises:
        UnknownSchemeError: the URL's scheme is not registered with the storage layer, or its
            store has no publish target (the message lists the known schemes).
        ValueError: the URL is empty or names no folder / bucket.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("publish target is empty; use a folder, file://PATH or s3://BUCKET/PREFIX")
    known = ", ".join(f"{name}://" for name in sorted(STORE_SCHEMES))
    try:
        location = open_store(url)
    except UnknownSchemeError:
        scheme = url_scheme(url)
        raise UnknownSchemeError(
            f"unknown publish scheme {scheme!r} in {url!r}; known: {known}"
        ) from None
    for backend, target in TARGET_BACKENDS.items():
        if isinstance(location, backend):
            return target(location)
    raise UnknownSchemeError(
        f"{url_scheme(url)}:// stores ({type(location).__name__}) cannot be publish targets; "
        f"known: {known}"
    )
