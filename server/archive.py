"""Adapter archives: a deterministic tar of a PEFT folder, its ETag, and an in-memory LRU.

The ETag is computed *without* building the archive: it is the sha256 of the
archive format version and the adapter identity's digest (`mta.registry.identity`:
the stack blob's digest, each fused anchor's adapter digest and weight, the fusion
method and its params, the base model, ``max_rank`` and the tensor dtype), the same
digest the service's export-cache key uses. Exports are deterministic functions
of those inputs and the tar is written with fixed metadata (sorted names, mtime 0,
uid/gid 0, mode 0644), so equal keys mean byte-identical archives and the ETag is a
strong one. A
revalidation (``If-None-Match``) therefore costs one registry lookup and no
tensor work or blob read.

Engines name a user's adapter ``<user id>~<version>`` (`adapter_name`): the version is the
first `VERSION_CHARS` hex of the identity's digest with the default export options, so it
changes exactly when the adapter does and names the same bytes for any fixed
``max_rank``/``dtype``. Each archive response also carries its sha256 (`repr_digest`), so a
client can tell the bytes it received are the bytes the server built.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sqlite3
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mta.registry.service import ENGINE_NAME_SEPARATOR, ENGINE_VERSION_CHARS, engine_name
from mta.storage.base import sha256_bytes

if TYPE_CHECKING:
    from mta.registry.service import AdapterIdentity

# Bump when the archive layout changes, so old ETags stop matching.
ARCHIVE_FORMAT = "mta-peft-tar/1"
ARCHIVE_MEDIA_TYPE = "application/x-tar"
ARCHIVE_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_NAME_HEADER = "X-MTA-Adapter-Name"
DIGEST_HEADER = "Repr-Digest"  # RFC 9530: sha-256=:<base64 of the archive's sha256>:
VERSION_CHARS = ENGINE_VERSION_CHARS


def adapter_version(identity: AdapterIdentity) -> str:
    """The version engines name the identity by: 12 hex of its default-options digest.

    The default options (no rank cap, fp32, the bank's base model name) make the version a
    function of the adapter alone (anchors and weights, method, stack, base model); the
    fetch options a client adds are its own and fixed per client.
    """
    return adapter_name(identity).rpartition(ENGINE_NAME_SEPARATOR)[2]


def adapter_name(identity: AdapterIdentity) -> str:
    """``<user id>~<version>`` (`registry.identity.engine_name` with the default options)."""
    return engine_name(identity)


def repr_digest(sha256_hex: str) -> str:
    """The ``Repr-Digest`` header value (RFC 9530) of an archive with this sha256 hex."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


def archive_rank(data: bytes) -> int:
    """The largest per-module rank in an archive's ``adapter_config.json``."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(ARCHIVE_FILES[0])
        config = json.loads(member.read() if member is not None else b"{}")
    patterned = (config.get("rank_pattern") or {}).values()
    return max([int(config.get("r", 0)), *(int(r) for r in patterned)])


def archive_etag(identity: AdapterIdentity, max_rank: int | None, dtype: str = "fp32") -> str:
    """The quoted strong ETag of an adapter archive.

    Args:
        identity: what fixes the exported adapter (`mta.registry.identity`).
        max_rank: the requested rank cap, or None.
        dtype: the requested tensor precision.

    Returns:
        ``'"<sha256 hex>"'``, quotes included as HTTP wants them.
    """
    adapter = identity.digest(max_rank=max_rank, dtype=dtype)
    payload = f"{ARCHIVE_FORMAT}:{adapter}"
    return '"' + hashlib.sha256(payload.encode()).hexdigest() + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header value matches ``etag`` (weak comparison, RFC 9110)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in if_none_match.split(","))


def tar_adapter_folder(folder: Path) -> bytes:
    """The PEFT files of ``folder`` as an uncompressed tar with fixed metadata.

    Safetensors tensors barely compress, so the archive is plain tar: no CPU spent
    on gzip and clients can stream-extract it.

    Raises:
        FileNotFoundError: a PEFT file is missing from the folder.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in ARCHIVE_FILES:
            data = (folder / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class IdentityCache:
    """Users' adapter identities, kept until the SQLite registry file changes.

    ``PRAGMA data_version`` changes whenever another connection (thread or process,
    the CLI included) commits to the database, and costs microseconds. Reading it
    before each fetch lets a fetch skip the registry read (several queries) while
    nothing was written; any commit drops every entry, since writes are rare next
    to fetches. An entry stored under an older version is never served.
    """

    MAX_ENTRIES = 100_000  # a crude bound; a clear costs one registry read per user

    def __init__(self, db_path: Path) -> None:
        # Our own connection, which never writes: every commit is "another connection's".
        # A short busy timeout: the pragma runs on the event loop, and a miss only costs a read.
        self._db = sqlite3.connect(
            db_path, timeout=0.1, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._version: int | None = None
        self._items: dict[str, AdapterIdentity] = {}

    def get(self, user_id: str) -> tuple[int | None, AdapterIdentity | None]:
        """The database's current version and the user's identity cached under it, if any."""
        with self._lock:
            try:
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                version = None  # unknown (e.g. busy): serve nothing cached, keep nothing new
            if version is None or version != self._version:
                self._items.clear()
                self._version = version
            return version, self._items.get(user_id)

    def put(self, user_id: str, version: int | None, identity: AdapterIdentity) -> None:
        """Keep an identity read after `get` returned ``version`` (dropped if it moved on)."""
        with self._lock:
            if version is not None and version == self._version:
                if len(self._items) >= self.MAX_ENTRIES:
                    self._items.clear()
                self._items[user_id] = identity

    def close(self) -> None:
        """Close the version connection."""
        with self._lock:
            self._db.close()


class ArchiveCache:
    """A byte-bounded LRU of archives keyed by ETag, plus one lock per key being built.

    The per-key lock makes concurrent cold requests for the same adapter build it
    once (the others wait and then hit the cache). Each archive's sha256 is kept with it,
    so a hit sends its digest header without hashing again.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, max_bytes)
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._owner_of: dict[str, str] = {}  # key -> user id, so a deletion can find them
        self._digests: dict[str, str] = {}  # key -> sha256 hex of the archive
        self._bytes = 0
        self._lock = threading.Lock()
        self._building: dict[str, tuple[threading.Lock, int]] = {}

    def get(self, key: str) -> bytes | None:
        """The cached archive for ``key`` (and mark it recently used), or None."""
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def get_entry(self, key: str) -> tuple[bytes, str] | None:
        """The cached archive for ``key`` and its sha256 hex (marked recently used), or None."""
        with self._lock:
            data = self._items.get(key)
            if data is None:
                return None
            self._items.move_to_end(key)
            digest = self._digests.get(key)
            if digest is None:
                digest = self._digests[key] = sha256_bytes(data)
            return data, digest

    def put(
        self, key: str, data: bytes, owner: str | None = None, digest: str | None = None
    ) -> None:
        """Cache an archive of user ``owner`` (and its sha256 hex), evicting past the bound."""
        if len(data) > self.max_bytes:
            return  # larger than the whole cache: keeping it would evict everything
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = data
            if owner is not None:
                self._owner_of[key] = owner
            if digest is not None:
                self._digests[key] = digest
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                evicted_key, evicted = self._items.popitem(last=False)
                self._owner_of.pop(evicted_key, None)
                self._digests.pop(evicted_key, None)
                self._bytes -= len(evicted)

    def discard_owner(self, owner: str) -> int:
        """Drop every archive of user ``owner`` (a deleted user's bytes leave memory too)."""
        with self._lock:
            keys = [key for key, who in self._owner_of.items() if who == owner]
            for key in keys:
                self._bytes -= len(self._items.pop(key))
                del self._owner_of[key]
                self._digests.pop(key, None)
            return len(keys)

    @contextmanager
    def building(self, key: str) -> Iterator[None]:
        """Hold the build lock of ``key`` for the duration of the block."""
        with self._lock:
            lock, users = self._building.get(key, (threading.Lock(), 0))
            self._building[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._building[key]
                if users == 1:
                    del self._building[key]
                else:
                    self._building[key] = (lock, users - 1)

    @property
    def total_bytes(self) -> int:
        """Bytes currently held."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
