"""The publish manifest: user id -> current name (and the names still in their grace period).

```json
{"format": 2, "generator": "mta publish", "updated_at": "...",
 "users": {"alice": {"name": "alice~3f2a9c01b7de", "identity": "<sha256>", "bytes": 67561,
                     "rank": 17, "dtype": "fp16", "max_rank": null, "max_lora_rank": 32,
                     "served_model_name": "...", "base_model": {...}, "adapter_at": "...",
                     "published_at": "...",
                     "previous": [{"name": "alice~0c1d2e3f4a5b", "expires_at": "..."}]}},
 "removing": ["bob~5e6f7a8b9c0d"]}
```

`removing` lists the names that were current a moment ago (evicted users, a replaced name
with no grace period), which a round removes only after writing the manifest; a round
that dies before finishing has the next one remove them. Every name read back becomes a path to
delete, so each must be a name the publisher could have written for that user
(`engine_name` form, or the bare user id of a format-1 manifest); anything else is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mta.registry.errors import InvalidInputError, RegistryError
from mta.registry.identity import parse_engine_name
from mta.registry.names import USER_ID_PATTERN, validate_user_id
from mta.registry.publish.targets import MANIFEST_NAME, PublishTarget

MANIFEST_FORMAT = 2  # 2: versioned names (`engine_name`), grace periods, `removing`
_LEGACY_FORMAT = 1  # folders named by the bare user id; read, never written


def name_problem(user_id: str) -> str | None:
    """Why `user_id` cannot be published, or None when it can."""
    if user_id.startswith("."):
        return "ids starting with '.' are hidden folders and reserved for staging"
    return None


def is_own_name(user_id: str, name: object) -> bool:
    """Whether `name` is a folder name the publisher writes for `user_id`."""
    if (
        not isinstance(name, str)
        or name == MANIFEST_NAME
        or not USER_ID_PATTERN.fullmatch(user_id)
        or user_id in (".", "..")
        or name_problem(user_id)
    ):
        return False
    parsed = parse_engine_name(name)
    return name == user_id if parsed is None else parsed[0] == user_id  # bare id: format 1


def to_iso(moment: datetime) -> str:
    """A UTC time as the manifest writes it."""
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds")


def from_iso(text: object) -> datetime:
    """A manifest time back as an aware datetime.

    Raises:
        ValueError: not an ISO 8601 time.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@dataclass
class Manifest:
    """The users a target serves and the names on their way out."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    removing: list[str] = field(default_factory=list)

    def names_of(self, user_id: str) -> list[str]:
        """Every published name of a user: the current one, then those in their grace."""
        entry = self.users.get(user_id)
        if entry is None:
            return []
        return [entry["name"], *(p["name"] for p in entry.get("previous", []))]

    def listed_names(self) -> set[str]:
        """Every name the manifest keeps (current and previous, not `removing`)."""
        return {name for user_id in self.users for name in self.names_of(user_id)}

    def content(self) -> dict[str, Any]:
        """What a round compares to decide whether the manifest changed (no timestamp)."""
        return {"users": self.users, "removing": sorted(set(self.removing))}


def read_manifest(target: PublishTarget) -> Manifest | None:
    """The target's manifest, None when none was published yet.

    Raises:
        InvalidInputError: unreadable, or it names something the publisher never writes.
    """
    raw = target.read_manifest()
    if raw is None:
        return None
    where = f"{target.url}/{MANIFEST_NAME}"
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise InvalidInputError(f"{where} is not JSON ({error}); fix or remove it") from error
    users = data.get("users") if isinstance(data, dict) else None
    version = data.get("format") if isinstance(data, dict) else None
    if version not in (_LEGACY_FORMAT, MANIFEST_FORMAT) or not isinstance(users, dict):
        raise InvalidInputError(f"{where} is not an mta manifest of format {MANIFEST_FORMAT}")
    try:
        manifest = Manifest(
            {user_id: _entry(user_id, entry, version) for user_id, entry in users.items()},
            _removing(data.get("removing", [])),
        )
    except (RegistryError, ValueError, TypeError, KeyError) as error:
        raise InvalidInputError(f"{where} lists an invalid entry: {error}") from None
    return manifest


def _entry(user_id: str, entry: object, version: int) -> dict[str, Any]:
    """A checked copy of one user's entry (a format-1 one gets its folder as its name)."""
    validate_user_id(user_id)
    if not isinstance(entry, dict):
        raise ValueError(f"{user_id!r} is not an object")
    entry = dict(entry)
    if version == _LEGACY_FORMAT:
        entry["name"] = entry.pop("folder", user_id)
        entry.setdefault("previous", [])
    if not is_own_name(user_id, entry.get("name")):
        raise ValueError(f"{user_id!r} has name {entry.get('name')!r}")
    previous = entry.get("previous", [])
    if not isinstance(previous, list):
        raise ValueError(f"{user_id!r} has a malformed previous list")
    for item in previous:
        if not isinstance(item, dict) or not is_own_name(user_id, item.get("name")):
            raise ValueError(f"{user_id!r} has a previous name {item!r}")
        from_iso(item.get("expires_at"))
    return entry


def _removing(names: object) -> list[str]:
    if not isinstance(names, list):
        raise ValueError("'removing' is not a list")
    for name in names:
        parsed = parse_engine_name(name) if isinstance(name, str) else None
        if not is_own_name(parsed[0] if parsed else str(name), name):  # else a format-1 id
            raise ValueError(f"removing {name!r}")
    return list(names)


def write_manifest(target: PublishTarget, manifest: Manifest, now: datetime) -> None:
    """Write the manifest (users sorted by id) in one step."""
    document = {
        "format": MANIFEST_FORMAT,
        "generator": "mta publish",
        "updated_at": to_iso(now),
        "users": {user_id: manifest.users[user_id] for user_id in sorted(manifest.users)},
        "removing": sorted(set(manifest.removing)),
    }
    target.write_manifest((json.dumps(document, indent=1) + "\n").encode())
