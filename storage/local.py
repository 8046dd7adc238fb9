"""LocalBlobStore: blobs as read-only files under a folder, written temp → fsync → rename."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from .base import (
    BLOB_PREFIX,
    CHUNK_SIZE,
    BlobInfo,
    BlobStore,
    blob_key,
    check_digest,
    is_digest,
    sha256_bytes,
    sha256_file,
)
from .errors import BlobNotFoundError, StorageError, StoreNotFoundError

FILE_MODE = 0o444
TEMP_PREFIX = ".tmp-"


def local_root_from_url(url: str) -> Path:
    """Folder named by `file:///abs`, `file://relative/path` or a bare path, made absolute."""
    path = url[len("file://") :] if url.startswith("file://") else url
    if not path:
        raise ValueError(f"store URL {url!r} names no folder")
    return Path(path).expanduser().absolute()


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries: a rename is durable only once the entry reaches the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore(BlobStore):
    """Blobs in `<root>/blobs/sha256/ab/<digest>`, each a read-only file."""

    def __init__(self, root: str | Path) -> None:
        """Use `root` as the store folder; nothing is created until the first write."""
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root.as_posix()}"

    @classmethod
    def from_url(cls, url: str) -> LocalBlobStore:
        """Open the store named by a `file://` URL or a bare path."""
        return cls(local_root_from_url(url))

    def path_for(self, digest: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        return self.root / blob_key(digest)

    def ensure(self) -> None:
        """Create the root and blob folders."""
        (self.root / BLOB_PREFIX).mkdir(parents=True, exist_ok=True)

    def check_exists(self) -> None:
        """The root must be a folder holding the blob folder that `ensure` creates."""
        hint = "check the store URL (--store / MTA_STORE_URL) or run `mta init`"
        if not self.root.exists():
            raise StoreNotFoundError(f"store {self.url} does not exist; {hint}")
        if not self.root.is_dir():
            raise StoreNotFoundError(f"store {self.url} is not a folder; {hint}")
        if not (self.root / BLOB_PREFIX).is_dir():
            raise StoreNotFoundError(
                f"store {self.url} is not a blob store (it has no {BLOB_PREFIX} folder); {hint}"
            )

    def put_bytes(self, data: bytes) -> str:
        """Store `data` atomically and return its digest; an intact existing copy is kept."""
        digest = sha256_bytes(data)
        if not self._already_stored(digest, len(data)):
            self._write(digest, [data])
        return digest

    def put_file(self, path: str | Path) -> str:
        """Store a file's content atomically and return its digest, reading it in chunks."""
        source = Path(path)
        digest = sha256_file(source)
        if self._already_stored(digest, source.stat().st_size):
            return digest
        with open(source, "rb") as handle:
            written = self._write(digest, iter(lambda: handle.read(CHUNK_SIZE), b""))
        if written != digest:
            raise StorageError(f"{source} changed while it was being stored; try again")
        return digest

    def get_bytes(self, digest: str) -> bytes:
        """Read a blob and check its digest."""
        path = self.path_for(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._not_found(digest) from None
        check_digest(digest, sha256_bytes(data), self.url)
        return data

    def exists(self, digest: str) -> bool:
        """Tell whether the blob file is present."""
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        """Size of the blob file in bytes."""
        try:
            return self.path_for(digest).stat().st_size
        except FileNotFoundError:
            raise self._not_found(digest) from None

    def modified(self, digest: str) -> datetime:
        """Modification time of the blob file."""
        try:
            mtime = self.path_for(digest).stat().st_mtime
        except FileNotFoundError:
            raise self._not_found(digest) from None
        return datetime.fromtimestamp(mtime, tz=timezone.utc)

    def delete(self, digest: str) -> None:
        """Remove the blob file (read-only files can be unlinked: only the folder's mode counts)."""
        path = self.path_for(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            raise self._not_found(digest) from None
        fsync_dir(path.parent)

    def check_deletable(self, digests: Iterable[str]) -> None:
        """Create and remove a probe file in each blob's folder (catches read-only mounts)."""
        folders = {self.path_for(d).parent for d in digests}
        for folder in sorted(f for f in folders if f.is_dir()):
            probe = folder / f".probe-{uuid.uuid4().hex}"
            try:
                probe.touch()
                probe.unlink()
            except OSError as error:
                raise StorageError(
                    f"store {self.url} is not writable ({error.strerror or error}); "
                    "nothing was changed"
                ) from None

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Yield stored blobs in digest order, skipping temp files and anything misplaced."""
        top = self.root / BLOB_PREFIX
        if not top.is_dir():
            return
        for fanout in sorted(os.scandir(top), key=lambda entry: entry.name):
            if not fanout.is_dir() or len(fanout.name) != 2:
                continue
            for entry in sorted(os.scandir(fanout.path), key=lambda entry: entry.name):
                if not is_digest(entry.name) or not entry.name.startswith(fanout.name):
                    continue
                try:
                    stat = entry.stat()
                except FileNotFoundError:  # deleted by a concurrent gc
                    continue
                modified = datetime.fromtimestamp(stat.st_mtime, tz=timezone.utc)
                yield BlobInfo(digest=entry.name, size=stat.st_size, modified=modified)

    def verify(self, digest: str) -> None:
        """Re-hash the blob file in chunks."""
        path = self.path_for(digest)
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise self._not_found(digest) from None
        check_digest(digest, actual, self.url)

    def _already_stored(self, digest: str, size: int) -> bool:
        # A size mismatch means a damaged copy: let the new write replace it.
        path = self.path_for(digest)
        try:
            if path.stat().st_size != size:
                return False
            # Re-putting makes the blob young again, so a gc that listed it as an old orphan
            # re-checks, sees the new mtime and keeps it for the writer about to reference it.
            os.utime(path)
        except (FileNotFoundError, PermissionError):
            # Not ours to touch (another user's blob): rewriting it also makes it young.
            return False
        return True

    def _write(self, digest: str, chunks: Iterable[bytes]) -> str:
        """Write chunks to a temp file beside the final path, then rename; return their hash."""
        final = self.path_for(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=TEMP_PREFIX)
        hasher = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as handle:
                for chunk in chunks:
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
                os.fchmod(handle.fileno(), FILE_MODE)
            if hasher.hexdigest() == digest:
                # Concurrent writers of the same blob race harmlessly: the bytes are equal.
                os.replace(tmp_name, final)
                fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        return hasher.hexdigest()

    def _not_found(self, digest: str) -> BlobNotFoundError:
        return BlobNotFoundError(f"blob {digest} not found in {self.url}")
