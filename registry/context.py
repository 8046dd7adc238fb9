"""What every service call needs: the database, the blob store, the cache and the model loaders."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mta.registry.db import (
    check_schema,
    default_db_url,
    make_engine,
    make_session_factory,
    session_scope,
)
from mta.registry.errors import IntegrityError, InvalidInputError

if TYPE_CHECKING:
    from mta.embedding import Embedder
    from mta.storage import AdapterCache, BlobStore

DEFAULT_STORE_URL = "file://.mta/store"
DEFAULT_CACHE_DIR = ".mta/cache"
# Materialized PEFT folders are derived data; 2 GiB holds ~200 SmolLM2 exports at rank 16.
DEFAULT_CACHE_MAX_BYTES = 2 * 1024**3
CACHE_MAX_BYTES_ENV = "MTA_CACHE_MAX_BYTES"

# The base model is shared per process and training adds deltas into its weights in place
# (restored afterwards), so two threads (e.g. the HTTP server) must not train at once.
MODEL_LOCK = threading.Lock()
# Parsed anchor adapters kept per context (a rank-8 SmolLM2 anchor is ~5 MB in memory).
ANCHOR_CACHE_SIZE = 64


def cache_max_bytes_from_env() -> int:
    """`MTA_CACHE_MAX_BYTES` as a positive byte count (the default when unset).

    Raises:
        InvalidInputError: the variable is set but is not a positive whole number.
    """
    text = os.environ.get(CACHE_MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_CACHE_MAX_BYTES
    # int() alone accepts "1_000" and "-5", and its error would not name the variable.
    if not text.isascii() or not text.isdigit() or int(text) <= 0:
        raise InvalidInputError(
            f"{CACHE_MAX_BYTES_ENV} must be a positive whole number of bytes, got {text!r}"
        )
    return int(text)


def check_cache_dir(cache_dir: Path) -> None:
    """Refuse a cache folder that is, or lies under, a file (it could never be created).

    Raises:
        InvalidInputError: naming the setting and the file in the way.
    """
    setting = f"the cache folder {cache_dir} (--cache-dir / MTA_CACHE_DIR)"
    for path in (cache_dir, *cache_dir.parents):
        if path.exists():
            if path == cache_dir and not path.is_dir():
                raise InvalidInputError(f"{setting} is not a folder")
            if not path.is_dir():
                raise InvalidInputError(f"{setting} cannot be created: {path} is a file")
            return


@dataclass
class RegistryContext:
    """The registry's database, blob store and adapter cache, opened from flags or env.

    Attributes:
        db_url: SQLAlchemy URL of the registry database.
        store_url: URL of the blob store (``file://...`` or ``s3://bucket/prefix``).
        cache_dir: root of local derived data (materialized PEFT exports under ``adapters/``).
        store: the blob store.
        session_factory: sessionmaker bound to ``engine``.
        engine: the SQLAlchemy engine.
        cache_max_bytes: size bound of the export cache (env ``MTA_CACHE_MAX_BYTES``).
    """

    db_url: str
    store_url: str
    cache_dir: Path
    store: BlobStore
    session_factory: sessionmaker[Session]
    engine: Engine
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    # Where models run: "auto" | "cpu" | "cuda" | "cuda:N"; None reads MTA_DEVICE, then auto.
    device: str | None = None
    _schema_checked: bool = field(default=False, repr=False)
    _embedders: dict[str, Any] = field(default_factory=dict, repr=False)
    _anchors: dict[str, Any] = field(default_factory=dict, repr=False)

    @staticmethod
    def folder_locations(root: str | Path) -> tuple[str, str, Path]:
        """(db URL, store URL, cache dir) of a self-contained registry inside `root`."""
        folder = Path(root).expanduser().absolute()
        return f"sqlite:///{folder / 'registry.db'}", f"file://{folder / 'store'}", folder / "cache"

    @classmethod
    def in_folder(cls, root: str | Path) -> RegistryContext:
        """Open the registry laid out inside `root`: SQLite file, blob store and cache."""
        return cls.open(*cls.folder_locations(root))

    @classmethod
    def open(
        cls,
        db_url: str | None = None,
        store_url: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> RegistryContext:
        """Open (never create) a registry.

        Args:
            db_url: default env ``MTA_DB_URL``, else ``sqlite:///.mta/registry.db``.
            store_url: default env ``MTA_STORE_URL``, else ``file://.mta/store``.
            cache_dir: default env ``MTA_CACHE_DIR``, else ``.mta/cache``.

        Returns:
            The context; the schema is checked on first use (`init_registry` creates it).
        """
        from mta.storage import open_store

        db = db_url or default_db_url()
        store = store_url or os.environ.get("MTA_STORE_URL") or DEFAULT_STORE_URL
        cache = Path(cache_dir or os.environ.get("MTA_CACHE_DIR") or DEFAULT_CACHE_DIR)
        # Checked before the engine exists: a bad setting must not leave one to dispose.
        max_bytes = cache_max_bytes_from_env()
        check_cache_dir(cache.expanduser())
        blob_store = open_store(store)
        engine = make_engine(db)
        return cls(
            db_url=db,
            store_url=store,
            cache_dir=cache.expanduser(),
            store=blob_store,
            session_factory=make_session_factory(engine),
            engine=engine,
            cache_max_bytes=max_bytes,
        )

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    def __enter__(self) -> RegistryContext:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A managed session (commit/rollback/close); checks the schema once per context."""
        self._check_schema_once()
        with session_scope(self.session_factory) as session:
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A managed session for reads only: on SQLite it neither waits for nor blocks writers."""
        self._check_schema_once()
        with session_scope(self.session_factory, read_only=True) as session:
            yield session

    def _check_schema_once(self) -> None:
        """The schema check, then the store's, once per context (`mta init` sets up both).

        The store is checked here rather than on a missing blob: a store URL with a typo
        names an empty place, where every blob would otherwise look missing (exit 3).
        """
        if not self._schema_checked:
            check_schema(self.engine)
            self.store.check_exists()
            self._schema_checked = True

    def mark_schema_current(self) -> None:
        """Skip the next schema and store check (`init_registry` has just set both up)."""
        self._schema_checked = True

    @property
    def adapter_cache(self) -> AdapterCache:
        """The size-bounded cache of materialized PEFT folders."""
        from mta.storage import AdapterCache

        return AdapterCache(self.cache_dir / "adapters", self.cache_max_bytes)

    def base_model(self, spec: str) -> tuple[Any, Any]:
        """The one place the registry loads a base model (cached per process by mta.base_model)."""
        from mta.base_model import load_base_model

        # The converted-model cache is MTA_CACHE_DIR or ~/.cache/mta (shared across
        # registries), not this registry's cache_dir: a SmolLM2 copy is 0.5 GB.
        return load_base_model(spec, device=self.device)

    def anchor_adapter(self, digest: str) -> Any:
        """A bank adapter blob parsed once per context: bulk adapts reuse a bank's anchors.

        Blobs are immutable and verified when first read, so the parsed copy stays right.
        """
        if digest not in self._anchors:
            if len(self._anchors) >= ANCHOR_CACHE_SIZE:
                self._anchors.pop(next(iter(self._anchors)))  # oldest first
            self._anchors[digest] = self.load_adapter(digest)
        return self._anchors[digest]

    def load_adapter(self, digest: str) -> Any:
        """The adapter stored in blob `digest` (a verified read), parsed.

        A blob that passes its digest but does not parse (a damaged scale, an unknown
        format) was written wrong: an integrity error (exit 3), not bad input.

        Raises:
            IntegrityError: the blob is not a valid adapter blob.
        """
        from mta.adapter_blob import adapter_from_bytes
        from mta.errors import AdapterFormatError

        try:
            return adapter_from_bytes(self.store.get_bytes(digest))
        except AdapterFormatError as error:
            raise IntegrityError(f"blob {digest[:12]} is not a valid adapter: {error}") from error

    def embedder(self, spec: str | None) -> Embedder:
        """An embedder by name, one per context (the model itself is cached per process)."""
        from mta.embedding import Embedder

        key = spec or ""
        if key not in self._embedders:
            self._embedders[key] = Embedder(spec)
        return self._embedders[key]
