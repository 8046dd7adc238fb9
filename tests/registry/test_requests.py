"""The one training request and the one fuse request: validated once, compared by one method."""

from __future__ import annotations

import pytest

from mta.errors import UnknownNameError
from mta.registry.errors import InvalidInputError
from mta.registry.requests import AdaptRequest, FuseRequest, shot_indices
from mta.registry.service import AdaptRequest as FacadeRequest
from mta.registry.service import adapt_user, add_user, get_user
from tests.support import TASK, movie_user


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shots": 0}, "shots must be at least 1"),
        ({"rank": 0}, "rank must be at least 1"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"max_steps": 0}, "max_steps must be at least 1"),
        ({"seed": -1}, "seed must be between 0 and"),
        ({"seed": 99999999999999999999999}, "seed must be between 0 and"),
        ({"lr": 0.0}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"dtype": "int3"}, "unknown stack dtype 'int3'; valid: fp16, bf16, fp32"),
        ({"shots": 2, "shot_indices": (3, 1)}, "2 distinct ascending item positions"),
        ({"shots": 2, "shot_indices": (1,)}, "2 distinct ascending item positions"),
        ({"shots": 2, "shot_indices": (-1, 2)}, "2 distinct ascending item positions"),
    ],
)
def test_a_bad_adapt_request_is_refused_naming_the_field(changes, message):
    with pytest.raises(InvalidInputError, match=message):
        AdaptRequest(**changes).validate()


def test_the_facade_exports_the_one_request_type():
    assert FacadeRequest is AdaptRequest
    assert AdaptRequest().validate() == AdaptRequest()


def test_shots_are_seeded_or_named():
    assert AdaptRequest(shots=3, seed=4).choose_shots(6) == shot_indices(6, 3, 4)
    assert AdaptRequest(shots=2, shot_indices=(0, 5)).choose_shots(6) == [0, 5]
    with pytest.raises(InvalidInputError, match="exceed the profile's 4 items"):
        AdaptRequest(shots=2, shot_indices=(0, 5)).choose_shots(4)


def test_a_stored_stack_reads_back_as_its_request_and_matches_it(bank_registry):
    add_user(bank_registry, user_id="ann", task=TASK, profile=movie_user("ann", 6))
    request = AdaptRequest(shots=2, epochs=1, max_steps=1, seed=3)
    stack = adapt_user(bank_registry, "ann", request)
    chosen = tuple(stack.train_config["shot_indices"])
    assert AdaptRequest.of_stack(stack) == AdaptRequest(
        shots=2, epochs=1, max_steps=1, seed=3, shot_indices=chosen
    )
    assert request.matches(stack)
    assert AdaptRequest(shots=2, epochs=1, max_steps=1, seed=3, shot_indices=chosen).matches(stack)
    for other in (
        AdaptRequest(shots=2, epochs=1, max_steps=1, seed=4),
        AdaptRequest(shots=2, epochs=1, max_steps=1, seed=3, dtype="fp32"),
        AdaptRequest(shots=2, epochs=1, max_steps=1, seed=3, lr=2e-3),
        AdaptRequest(shots=2, epochs=1, max_steps=1, seed=3, shot_indices=(0, 5)),
    ):
        assert not other.matches(stack), other


def test_named_shots_train_on_those_items(bank_registry):
    # The evaluation passes its own shot positions; the stack records exactly those.
    add_user(bank_registry, user_id="bo", task=TASK, profile=movie_user("bo", 6))
    request = AdaptRequest(shots=2, max_steps=1, shot_indices=(1, 4))
    stack = adapt_user(bank_registry, "bo", request)
    assert stack.train_config["shot_indices"] == [1, 4]
    assert stack.train_config["shots"] == 2 and request.matches(stack)
    assert get_user(bank_registry, "bo").stack == stack


def test_a_bad_fuse_request_is_refused():
    with pytest.raises(UnknownNameError, match="cat"):
        FuseRequest(method="magic").validate()
    with pytest.raises(UnknownNameError, match="proportional"):
        FuseRequest(weight_rule="magic").validate()
    with pytest.raises(InvalidInputError, match="top_k must be at least 1"):
        FuseRequest(top_k=0).validate()
    with pytest.raises(InvalidInputError, match="rank must be at least 1"):
        FuseRequest(method="svd", rank=0).validate()
    assert FuseRequest().on_bank("2") == FuseRequest(bank_ref="2")
