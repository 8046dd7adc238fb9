"""Content-addressed blob stores chosen by URL scheme, plus the local adapter cache.

Open a store with `open_store("file://.mta/store")` or `open_store("s3://bucket/prefix")`;
blobs are addressed by the sha256 hex digest of their bytes.
"""

from .base import ALGORITHM, BlobInfo, BlobStore, blob_key, validate_digest
from .cache import AdapterCache
from .errors import (
    BlobCorruptedError,
    BlobNotFoundError,
    InvalidDigestError,
    StorageError,
    StoreNotFoundError,
    UnknownSchemeError,
)
from .local import LocalBlobStore
from .s3 import S3BlobStore
from .schemes import STORE_SCHEMES, open_store, register_scheme

__all__ = [
    "ALGORITHM",
    "STORE_SCHEMES",
    "AdapterCache",
    "BlobCorruptedError",
    "BlobInfo",
    "BlobNotFoundError",
    "BlobStore",
    "InvalidDigestError",
    "LocalBlobStore",
    "S3BlobStore",
    "StorageError",
    "StoreNotFoundError",
    "UnknownSchemeError",
    "blob_key",
    "open_store",
    "register_scheme",
    "validate_digest",
]
