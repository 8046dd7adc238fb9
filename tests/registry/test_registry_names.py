"""User-id and alias validation."""

from __future__ import annotations

import pytest

from mta.registry.errors import InvalidInputError
from mta.registry.names import validate_alias, validate_user_id


@pytest.mark.parametrize("user_id", ["u1", "alice@example.com", "a.b_c-d", "x" * 128, "8000002"])
def test_valid_user_ids(user_id: str):
    assert validate_user_id(user_id) == user_id


@pytest.mark.parametrize(
    "user_id", ["", ".", "..", "a/b", "../etc", "x" * 129, "a b", "é", "a\\b", "a\nb", 5, None]
)
def test_invalid_user_ids(user_id: object):
    with pytest.raises(InvalidInputError, match="invalid user id"):
        validate_user_id(user_id)


@pytest.mark.parametrize("alias", ["prod", "staging", "canary-2", "v.next"])
def test_valid_aliases(alias: str):
    assert validate_alias(alias) == alias


@pytest.mark.parametrize("alias", ["", "3", "2prod", "latest", "a/b", "x" * 65])
def test_invalid_aliases(alias: str):
    with pytest.raises(InvalidInputError):
        validate_alias(alias)
