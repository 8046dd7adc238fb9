"""Errors raised by the blob stores; the CLI maps them to exit codes."""


class StorageError(Exception):
    """Base class of every error a blob store raises on purpose."""


class StoreNotFoundError(StorageError):
    """The store itself is missing: no such folder or bucket, or one `ensure` never set up."""


class BlobNotFoundError(StorageError, FileNotFoundError):
    """The store holds no blob with the requested digest."""


class BlobCorruptedError(StorageError):
    """A stored blob's content no longer hashes to its digest."""


class InvalidDigestError(StorageError, ValueError):
    """A digest string is not 64 lowercase hexadecimal characters."""


class UnknownSchemeError(StorageError, ValueError):
    """A store URL uses a scheme that no factory is registered for."""
