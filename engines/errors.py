"""Errors of the engine integrations."""

from __future__ import annotations

from mta.errors import MtaError


class ResolverError(MtaError):
    """The adapter could not be resolved now: the server refused or failed, or is unreachable."""


class ArchiveError(ResolverError, ValueError):
    """A fetched archive is not the adapter its name promises (damaged, wrong, or malformed)."""
