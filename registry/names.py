"""Validation of the names users choose: user ids and bank aliases."""

from __future__ import annotations

import re

from mta.registry.errors import InvalidInputError

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,128}")
ALIAS_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
RESERVED_ALIASES = frozenset({"latest"})


def validate_user_id(user_id: object) -> str:
    """Return `user_id` if it is 1-128 chars of [A-Za-z0-9._@-] and not "." or "..".

    User ids end up in file names (exports, caches), so anything that could escape a folder
    is refused.

    Raises:
        InvalidInputError: with the rule in the message.
    """
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidInputError(
            f"invalid user id {user_id!r}: use 1-128 characters of A-Z a-z 0-9 . _ @ -"
        )
    if user_id in (".", ".."):
        raise InvalidInputError(f"invalid user id {user_id!r}: '.' and '..' are reserved")
    return user_id


def validate_alias(alias: object) -> str:
    """Return `alias` if it is a valid bank alias (starts with a letter; not "latest").

    Aliases must not look like version numbers, which share the same `--bank` argument.

    Raises:
        InvalidInputError: with the rule in the message.
    """
    if not isinstance(alias, str) or not ALIAS_PATTERN.fullmatch(alias):
        raise InvalidInputError(
            f"invalid alias {alias!r}: start with a letter, then up to 63 of A-Z a-z 0-9 . _ -"
        )
    if alias in RESERVED_ALIASES:
        raise InvalidInputError(f"alias {alias!r} is reserved")
    return alias
