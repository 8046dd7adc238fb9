"""Adapter names as engines see them: ``<user id>~<version>``.

The server (`mta.server.archive.adapter_name`, from `mta.registry.identity.engine_name`)
writes them; this is the client's reading. The version is 12 lowercase hex; "~" is outside
the user-id alphabet, so a name splits one way only, no name is a prefix of another, and
the user id follows the registry's rule, so a name is always a safe folder name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

VERSION_CHARS = 12
_NAME = re.compile(r"(?P<user_id>[A-Za-z0-9._@-]{1,128})~(?P<version>[0-9a-f]{12})")


@dataclass(frozen=True)
class AdapterName:
    """One version of one user's adapter."""

    user_id: str
    version: str

    @classmethod
    def parse(cls, name: str) -> AdapterName | None:
        """The name's parts, or None when ``name`` is not a versioned adapter name."""
        match = _NAME.fullmatch(name)
        if match is None or match["user_id"] in (".", ".."):
            return None
        return cls(match["user_id"], match["version"])

    def __str__(self) -> str:
        return f"{self.user_id}~{self.version}"
