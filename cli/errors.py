"""Map the exceptions the layers raise on purpose to one-line messages and exit codes.

Exit codes: 0 ok, 1 bad input or not found, 2 usage (Click's own), 3 integrity
error (a blob failing its digest, a row without its blob). Exceptions not listed
here are bugs: they are re-raised with their traceback.
"""

from __future__ import annotations

from mta.errors import one_line

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3


def error_mappings() -> list[tuple[type[BaseException], int]]:
    """Exception types and their exit codes, subclass-first (the first match wins)."""
    from mta.errors import MtaError
    from mta.registry.errors import IntegrityError, RegistryError
    from mta.storage import BlobCorruptedError, BlobNotFoundError, StorageError

    return [
        # Integrity first: both blob errors are also StorageErrors. Commands never take a
        # digest from the user, so a missing blob is always a row without its blob.
        (BlobCorruptedError, EXIT_INTEGRITY),
        (BlobNotFoundError, EXIT_INTEGRITY),
        (IntegrityError, EXIT_INTEGRITY),
        (StorageError, EXIT_BAD_INPUT),
        (RegistryError, EXIT_BAD_INPUT),
        (MtaError, EXIT_BAD_INPUT),
        (FileNotFoundError, EXIT_BAD_INPUT),
        (NotADirectoryError, EXIT_BAD_INPUT),
        (IsADirectoryError, EXIT_BAD_INPUT),
        (FileExistsError, EXIT_BAD_INPUT),
        (PermissionError, EXIT_BAD_INPUT),
        (ValueError, EXIT_BAD_INPUT),
    ]


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code for an expected error, or None when the exception is a bug."""
    for exc_type, code in error_mappings():
        if isinstance(exc, exc_type):
            return code
    return None


def describe(exc: BaseException) -> str:
    """One line that says what went wrong, without a traceback."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        # "is a directory: /data/x" names the path, which str(exc)'s errno prefix buries.
        return f"{exc.strerror[0].lower()}{exc.strerror[1:]}: {exc.filename}"
    return one_line(exc)
