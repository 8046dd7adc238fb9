"""Errors raised by the registry service layer."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of registry errors."""


class NotFoundError(RegistryError, LookupError):
    """A bank, version, alias, user, recipe or stack does not exist."""


class AlreadyExistsError(RegistryError):
    """A row with the same identity already exists."""


class InvalidInputError(RegistryError, ValueError):
    """The caller's input is malformed (bad id, empty profile, wrong schema...)."""


class IntegrityError(RegistryError):
    """The registry and the blob store disagree (a row without its blob, a bad digest)."""


class NotInitializedError(RegistryError):
    """The database has no registry schema, or an older one: run `mta init`."""


class ImmutableError(RegistryError):
    """Something tried to change a published bank version."""


class ConflictError(RegistryError):
    """The row an operation read changed before it could write (run it again)."""
