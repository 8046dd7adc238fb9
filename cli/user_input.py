"""What `mta user` reads from the user: a profile JSON from a file or stdin."""

from __future__ import annotations

import sys
from typing import Any


def read_profile(source: str, user_id: str) -> dict[str, Any]:
    """Read a user's profile JSON from a file or stdin (`-`).

    Args:
        source: a path, or `-` for stdin. The JSON is one per-user object
            `{user_id, profile: [...], query: [...]}`, or a list of them, in which case
            the entry whose user_id equals `user_id` is taken.
        user_id: the id the profile is added under.

    Returns:
        The per-user object (schema checks are the service's job).

    Raises:
        DataFormatError: a missing, unreadable, non-UTF-8 or invalid JSON file (named).
        InvalidInputError: JSON that is not one user, or a list without that user.
    """
    from mta.lamp_data import parse_json, read_json_file
    from mta.registry.errors import InvalidInputError

    name = "stdin" if source == "-" else source
    data = parse_json(sys.stdin.read(), name) if source == "-" else read_json_file(source)
    if isinstance(data, list):
        matches = [d for d in data if isinstance(d, dict) and str(d.get("user_id")) == user_id]
        if len(matches) != 1:
            raise InvalidInputError(
                f"profile {name} is a list without exactly one entry for user_id {user_id!r}"
            )
        return matches[0]
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"profile {name} must be a JSON object {{user_id, profile, query}}, "
            f"not {type(data).__name__}"
        )
    return data
