"""`recode_stack` / `mta user recode`: a stack re-stored in a quantized format, no training."""

from __future__ import annotations

import pytest

from mta.registry.errors import InvalidInputError, NotFoundError
from mta.registry.service import (
    AdaptRequest,
    FuseRequest,
    adapt_user,
    add_user,
    fuse_user,
    get_user,
    recode_stack,
    storage_report,
)
from tests.support import TASK, movie_user


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_a_recoded_stack_is_the_blob_training_into_the_format_stores(bank_registry, fmt):
    request = AdaptRequest(shots=3, max_steps=2, seed=4, dtype="fp16")
    add_user(bank_registry, user_id="direct", task=TASK, profile=movie_user("r", 6))
    add_user(bank_registry, user_id="later", task=TASK, profile=movie_user("r", 6))
    direct = adapt_user(bank_registry, "direct", AdaptRequest(**{**vars(request), "dtype": fmt}))
    half = adapt_user(bank_registry, "later", request)
    recoded = recode_stack(bank_registry, "later", fmt)
    # Same profile, shots, seed and recipe: the recode is the directly trained blob, exactly.
    assert recoded.stack.blob == direct.blob and recoded.stack.dtype == fmt
    assert (recoded.previous_stack_id, recoded.previous_bytes) == (half.stack_id, half.bytes)
    assert recoded.stack.bytes < half.bytes
    assert recoded.stack.train_config["recoded_from"] == half.stack_id
    assert request.__class__(**{**vars(request), "dtype": fmt}).matches(recoded.stack)
    assert get_user(bank_registry, "later").stack.stack_id == recoded.stack.stack_id
    again = recode_stack(bank_registry, "later", fmt)  # already there: nothing written
    assert again.previous_stack_id is None and again.stack.stack_id == recoded.stack.stack_id


def test_recodes_that_are_not_exact_or_have_nothing_to_recode_are_refused(bank_registry):
    add_user(bank_registry, user_id="q", task=TASK, profile=movie_user("q", 6))
    with pytest.raises(NotFoundError, match="no current stack"):
        recode_stack(bank_registry, "q", "nf4")
    quantized = adapt_user(bank_registry, "q", AdaptRequest(shots=2, max_steps=1, dtype="int8"))
    for target in ("nf4", "fp16", "fp32"):
        with pytest.raises(InvalidInputError, match="cannot be recoded to"):
            recode_stack(bank_registry, "q", target)
    assert get_user(bank_registry, "q").stack.stack_id == quantized.stack_id
    fuse_user(bank_registry, "q", FuseRequest(top_k=1))  # a new recipe: no current stack
    with pytest.raises(NotFoundError, match="no current stack"):
        recode_stack(bank_registry, "q", "int8")
    assert storage_report(bank_registry)["current_stack_formats"] == {}
