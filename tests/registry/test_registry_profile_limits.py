"""A profile field too large to be useful is refused at once, in one line; real ones pass."""

from __future__ import annotations

import time

import pytest

from mta.lamp_data import MAX_FIELD_BYTES
from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.service import add_user, get_user
from tests.support import TASK, movie_user


def test_a_5_mb_description_is_refused_quickly_in_one_line(bank_registry):
    user = movie_user("big", 3)
    user["profile"][1]["description"] = "a plot twist " * (5_000_000 // 13)
    blobs_before = sorted(p.name for p in bank_registry.store.root.rglob("*"))
    started = time.monotonic()
    with pytest.raises(InvalidInputError) as caught:
        add_user(bank_registry, user_id="big", task=TASK, profile=user)
    assert time.monotonic() - started < 5  # tokenizing it all took minutes
    message = str(caught.value)
    assert "\n" not in message and len(message) < 300
    assert "user 'big'" in message and "'description'" in message
    assert f"limit of {MAX_FIELD_BYTES} bytes" in message
    with pytest.raises(NotFoundError):
        get_user(bank_registry, "big")
    assert sorted(p.name for p in bank_registry.store.root.rglob("*")) == blobs_before


def test_a_large_query_input_is_refused_too_and_a_field_at_the_limit_passes(bank_registry):
    user = movie_user("wide", 3)
    user["query"][0]["input"] = "é" * (MAX_FIELD_BYTES // 2 + 1)  # 2 bytes each in UTF-8
    with pytest.raises(InvalidInputError, match=r"user 'wide': query #0 field 'input'"):
        add_user(bank_registry, user_id="wide", task=TASK, profile=user)
    user = movie_user("wide", 3)
    user["profile"][0]["description"] = "x" * MAX_FIELD_BYTES
    assert add_user(bank_registry, user_id="wide", task=TASK, profile=user).user_id == "wide"
