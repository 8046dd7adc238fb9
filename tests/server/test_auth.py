"""Token loading and the authorization decision, without HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mta.registry.errors import InvalidInputError
from mta.server.auth import Role, TokenSet, authorize, load_tokens
from mta.server.errors import ApiError

READ = "r" * 20
ADMIN = "a" * 20


def test_tokens_from_env_and_file_are_merged(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"read": ["x" * 16], "admin": ["y" * 16, ADMIN]}))
    tokens = load_tokens(path, {"MTA_READ_TOKEN": READ, "MTA_ADMIN_TOKEN": ADMIN})
    assert tokens.read == (READ, "x" * 16)
    assert tokens.admin == (ADMIN, "y" * 16)  # duplicates collapse, order kept


def test_no_tokens_is_falsy() -> None:
    assert not load_tokens(None, {})


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps(["a" * 16]), "must be an object"),
        (json.dumps({"read": "a" * 16}), "must be a list"),
        (json.dumps({"writer": ["a" * 16]}), "must be an object"),
        (json.dumps({"read": ["short"]}), "at least 16"),
        (json.dumps({"read": ["has space in the middle"]}), "without spaces"),
        (json.dumps({"admin": [7]}), "non-empty string"),
    ],
)
def test_bad_tokens_file_is_refused(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(InvalidInputError, match=fragment):
        load_tokens(path, {})


def test_missing_tokens_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not found"):
        load_tokens(tmp_path / "absent.json", {})


def test_short_env_token_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="MTA_ADMIN_TOKEN"):
        load_tokens(None, {"MTA_ADMIN_TOKEN": "abc"})


@pytest.mark.parametrize(
    ("header", "needed", "status"),
    [
        (None, Role.READ, 401),
        ("", Role.READ, 401),
        (f"Basic {READ}", Role.READ, 401),
        ("Bearer ", Role.READ, 401),
        ("Bearer " + "z" * 20, Role.READ, 401),
        ("Bearer " + READ[:-1], Role.READ, 401),
        (f"Bearer {READ}", Role.ADMIN, 403),
    ],
)
def test_authorize_refusals(header: str | None, needed: Role, status: int) -> None:
    tokens = TokenSet(read=(READ,), admin=(ADMIN,))
    with pytest.raises(ApiError) as caught:
        authorize(header, tokens, needed)
    assert caught.value.status == status
    if status == 401:
        assert caught.value.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("header", "needed"),
    [
        (f"Bearer {READ}", Role.READ),
        (f"bearer {ADMIN}", Role.READ),
        (f"Bearer {ADMIN}", Role.ADMIN),
    ],
)
def test_authorize_grants(header: str, needed: Role) -> None:
    authorize(header, TokenSet(read=(READ,), admin=(ADMIN,)), needed)


def test_token_in_both_roles_counts_as_admin() -> None:
    assert TokenSet(read=(ADMIN,), admin=(ADMIN,)).role_of(ADMIN) is Role.ADMIN


def test_disabled_auth_lets_everything_through() -> None:
    authorize(None, None, Role.ADMIN)
