"""Bearer-token auth: read tokens may call GET routes, admin tokens may call everything.

Tokens come from ``MTA_READ_TOKEN`` / ``MTA_ADMIN_TOKEN`` and/or a JSON tokens file
``{"read": ["..."], "admin": ["..."]}`` (several tokens per role allow rotation).
Comparison is constant-time and runs over every configured token, so neither the
match position nor the token length leaks through timing.
"""

from __future__ import annotations

import enum
import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mta.registry.errors import InvalidInputError

from .errors import ApiError

MIN_TOKEN_LENGTH = 16
READ_TOKEN_ENV = "MTA_READ_TOKEN"
ADMIN_TOKEN_ENV = "MTA_ADMIN_TOKEN"


class Role(enum.IntEnum):
    """What a token may do; a higher role includes the lower ones."""

    READ = 1
    ADMIN = 2


@dataclass(frozen=True)
class TokenSet:
    """The configured tokens of each role."""

    read: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.read or self.admin)

    def role_of(self, token: str) -> Role | None:
        """The role a presented token grants, or None; constant-time over all tokens."""
        presented = token.encode()
        role: Role | None = None
        # No early exit: every comparison runs whatever matches.
        for candidate in self.read:
            if hmac.compare_digest(presented, candidate.encode()) and role is None:
                role = Role.READ
        for candidate in self.admin:
            if hmac.compare_digest(presented, candidate.encode()):
                role = Role.ADMIN
        return role


def _check_token(token: object, where: str) -> str:
    if not isinstance(token, str) or not token or token != token.strip() or " " in token:
        raise InvalidInputError(f"{where}: a token must be a non-empty string without spaces")
    if len(token) < MIN_TOKEN_LENGTH:
        raise InvalidInputError(
            f"{where}: tokens must be at least {MIN_TOKEN_LENGTH} characters "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def _tokens_from_file(path: Path) -> tuple[list[str], list[str]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInputError(f"tokens file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInputError(f"tokens file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"read", "admin"}:
        raise InvalidInputError(
            f'tokens file {path} must be an object {{"read": [...], "admin": [...]}}'
        )
    lists: list[list[str]] = []
    for role in ("read", "admin"):
        values = data.get(role, [])
        if not isinstance(values, list):
            raise InvalidInputError(f"tokens file {path}: {role!r} must be a list of strings")
        lists.append([_check_token(v, f"tokens file {path} ({role})") for v in values])
    return lists[0], lists[1]


def load_tokens(
    tokens_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> TokenSet:
    """Collect the tokens from the environment and an optional tokens file.

    Args:
        tokens_file: JSON file ``{"read": [...], "admin": [...]}``; None to skip.
        environ: where ``MTA_READ_TOKEN`` / ``MTA_ADMIN_TOKEN`` are read (default os.environ).

    Returns:
        The tokens of both sources together (possibly empty).

    Raises:
        InvalidInputError: a token is empty, too short, or the file is malformed.
    """
    environ = os.environ if environ is None else environ
    read: list[str] = []
    admin: list[str] = []
    if environ.get(READ_TOKEN_ENV):
        read.append(_check_token(environ[READ_TOKEN_ENV], READ_TOKEN_ENV))
    if environ.get(ADMIN_TOKEN_ENV):
        admin.append(_check_token(environ[ADMIN_TOKEN_ENV], ADMIN_TOKEN_ENV))
    if tokens_file is not None:
        file_read, file_admin = _tokens_from_file(Path(tokens_file))
        read += file_read
        admin += file_admin
    return TokenSet(read=tuple(dict.fromkeys(read)), admin=tuple(dict.fromkeys(admin)))


def authorize(authorization: str | None, tokens: TokenSet | None, needed: Role) -> None:
    """Check an ``Authorization`` header value against the tokens.

    Args:
        authorization: the raw header value, or None when absent.
        tokens: the configured tokens; None means auth is disabled (``--insecure-no-auth``).
        needed: the role the route needs.

    Raises:
        ApiError: 401 for a missing or unknown token, 403 for a read token on a write.
    """
    if tokens is None:
        return
    challenge = {"WWW-Authenticate": 'Bearer realm="mta"'}
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token", challenge)
    role = tokens.role_of(token.strip())
    if role is None:
        invalid = {"WWW-Authenticate": 'Bearer realm="mta", error="invalid_token"'}
        raise ApiError(401, "unauthorized", "invalid bearer token", invalid)
    if role < needed:
        raise ApiError(403, "forbidden", "this route needs an admin token")
