"""The blob-store contract: sha256 content addressing shared by every backend."""

from __future__ import annotations

import abc
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .errors import BlobCorruptedError, InvalidDigestError

ALGORITHM = "sha256"
BLOB_PREFIX = f"blobs/{ALGORITHM}"
CHUNK_SIZE = 1 << 20

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def validate_digest(digest: object) -> str:
    """Return `digest` if it is 64 lowercase hex characters, else raise InvalidDigestError."""
    # Digests become file paths and object keys: this check is what rules out traversal.
    if not isinstance(digest, str) or _DIGEST_RE.fullmatch(digest) is None:
        raise InvalidDigestError(
            f"invalid sha256 digest {digest!r}: expected 64 lowercase hexadecimal characters"
        )
    return digest


def is_digest(name: str) -> bool:
    """Tell whether `name` looks like a sha256 hex digest (for listing stored blobs)."""
    return _DIGEST_RE.fullmatch(name) is not None


def blob_key(digest: str) -> str:
    """Relative location of a blob: `blobs/sha256/ab/<digest>`."""
    validate_digest(digest)
    return f"{BLOB_PREFIX}/{digest[:2]}/{digest}"


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks so large files never sit in memory."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_SIZE):
            hasher.update(chunk)
    return hasher.hexdigest()


def check_digest(expected: str, actual: str, where: str) -> None:
    """Raise BlobCorruptedError when a blob's content hash differs from its address."""
    if actual != expected:
        raise BlobCorruptedError(
            f"blob {expected} in {where} is corrupted: its content hashes to {actual}"
        )


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob as listed by `BlobStore.iter_blobs` (for gc and reports)."""

    digest: str
    size: int
    modified: datetime  # timezone-aware, UTC


class BlobStore(abc.ABC):
    """Immutable, content-addressed blobs: the address of a blob is the sha256 of its bytes.

    Writes are atomic and idempotent; reads verify the digest, so a damaged blob raises
    BlobCorruptedError instead of loading silently.
    """

    url: str

    @abc.abstractmethod
    def put_bytes(self, data: bytes) -> str:
        """Store `data` and return its sha256 hex digest.

        A blob already stored is not rewritten, but its modification time is refreshed, so a
        concurrent `gc` sees it as young and keeps it until the caller's rows reference it.
        """

    @abc.abstractmethod
    def put_file(self, path: str | Path) -> str:
        """Store a file's content, hashing it in chunks, and return its sha256 hex digest."""

    @abc.abstractmethod
    def get_bytes(self, digest: str) -> bytes:
        """Return a blob's bytes after checking they hash to `digest`.

        Raises:
            BlobNotFoundError: no blob has this digest.
            BlobCorruptedError: the stored bytes hash to something else.
        """

    @abc.abstractmethod
    def exists(self, digest: str) -> bool:
        """Tell whether a blob with this digest is stored (its content is not checked)."""

    @abc.abstractmethod
    def size(self, digest: str) -> int:
        """Size in bytes of a stored blob; BlobNotFoundError when it is missing."""

    @abc.abstractmethod
    def modified(self, digest: str) -> datetime:
        """When a blob was last written or re-put (UTC); BlobNotFoundError when it is missing."""

    @abc.abstractmethod
    def delete(self, digest: str) -> None:
        """Remove a blob; BlobNotFoundError when it is missing."""

    @abc.abstractmethod
    def check_deletable(self, digests: Iterable[str]) -> None:
        """Raise StorageError unless these blobs could be deleted now (changes nothing).

        Lets a caller refuse an operation up front instead of failing half-way through it.
        """

    @abc.abstractmethod
    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Yield every stored blob (temporary and foreign files are skipped)."""

    @abc.abstractmethod
    def verify(self, digest: str) -> None:
        """Re-hash a stored blob without keeping it in memory.

        Raises:
            BlobNotFoundError: no blob has this digest.
            BlobCorruptedError: the stored bytes hash to something else.
        """

    @abc.abstractmethod
    def ensure(self) -> None:
        """Create the store's root (folder or bucket) if missing; safe to call repeatedly."""

    @abc.abstractmethod
    def check_exists(self) -> None:
        """Make sure the store was set up by `ensure` (changes nothing).

        Lets a caller tell a wrong store URL from a missing blob: a typo in the URL names an
        empty place, where every blob would otherwise be reported missing.

        Raises:
            StoreNotFoundError: no such folder or bucket, or one `ensure` never set up.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
