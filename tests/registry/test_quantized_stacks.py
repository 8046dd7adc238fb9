"""Stacks stored int8 or NF4: trained, stored smaller, served dequantized; damage is exit 3."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from sqlalchemy import update

from mta.adapter_blob import adapter_from_bytes, adapter_to_bytes, blob_format
from mta.peft_io import load_peft_adapter
from mta.registry.blobrefs import KIND_STACK, put_blob, record_blob
from mta.registry.errors import IntegrityError, InvalidInputError
from mta.registry.models import SqlStack
from mta.registry.service import (
    AdaptRequest,
    adapt_user,
    adapter_identity,
    add_user,
    export_user,
    materialize_fused,
)
from tests.support import TASK, movie_user


def _payload(blob: bytes) -> int:
    """Bytes of a safetensors blob's tensors (its length less the header)."""
    return len(blob) - 8 - int.from_bytes(blob[:8], "little")


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_a_quantized_stack_is_stored_small_and_exported_dequantized(bank_registry, tmp_path, fmt):
    add_user(bank_registry, user_id="qa", task=TASK, profile=movie_user("qa", 6))
    half = adapt_user(bank_registry, "qa", AdaptRequest(shots=2, max_steps=1, dtype="fp16"))
    small = adapt_user(bank_registry, "qa", AdaptRequest(shots=2, max_steps=1, dtype=fmt))
    data = bank_registry.store.get_bytes(small.blob)
    assert small.dtype == fmt and blob_format(data) == fmt and small.bytes == len(data)
    # On the tiny model the safetensors header outweighs the tensors; compare the tensors.
    limit = {"int8": 0.6, "nf4": 0.35}[fmt]
    assert _payload(data) < limit * _payload(bank_registry.store.get_bytes(half.blob))
    assert AdaptRequest(shots=2, max_steps=1, dtype=fmt).matches(small)
    assert not AdaptRequest(shots=2, max_steps=1, dtype="fp16").matches(small)
    identity = adapter_identity(bank_registry, "qa")
    assert identity.stack == small.blob  # the format is in the stack digest, so in the ETag
    out = export_user(bank_registry, identity, tmp_path / "out")
    exported = load_peft_adapter(out.path)
    fused = materialize_fused(bank_registry, identity)
    stack = adapter_from_bytes(data)
    for path in list(exported.modules)[:3]:
        expected = fused.modules[path].delta() + stack.modules[path].delta()
        torch.testing.assert_close(exported.modules[path].delta(), expected, rtol=1e-4, atol=1e-6)


def test_a_stack_on_the_attention_modules_only(bank_registry):
    add_user(bank_registry, user_id="qb", task=TASK, profile=movie_user("qb", 6))
    request = AdaptRequest(shots=2, max_steps=1, modules="attention")
    stack = adapt_user(bank_registry, "qb", request)
    trained = adapter_from_bytes(bank_registry.store.get_bytes(stack.blob))
    leaves = {path.rsplit(".", 1)[1] for path in trained.modules}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert stack.train_config["stack_modules"] == "attention" and request.matches(stack)
    assert not AdaptRequest(shots=2, max_steps=1).matches(stack)
    with pytest.raises(InvalidInputError, match="not targets of the bank"):
        adapt_user(bank_registry, "qb", AdaptRequest(shots=2, modules="q_proj,lm_head"))


def test_a_stack_blob_with_a_damaged_scale_is_an_integrity_error(bank_registry, tmp_path):
    add_user(bank_registry, user_id="qc", task=TASK, profile=movie_user("qc", 6))
    stack = adapt_user(bank_registry, "qc", AdaptRequest(shots=2, max_steps=1, dtype="int8"))
    data = bank_registry.store.get_bytes(stack.blob)
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    start, _ = header["scale"]["data_offsets"]  # the packed layout's scales, A's first
    body = bytearray(data[8 + size :])
    body[start : start + 4] = struct.pack("<f", float("inf"))
    damaged = put_blob(bank_registry, data[: 8 + size] + bytes(body), KIND_STACK)
    with bank_registry.session() as session:  # a writer bug: a valid digest, wrong content
        record_blob(session, damaged)
        session.execute(
            update(SqlStack).where(SqlStack.id == stack.stack_id).values(blob=damaged.digest)
        )
    with pytest.raises(IntegrityError, match="not a valid adapter: .*non-finite"):
        export_user(bank_registry, adapter_identity(bank_registry, "qc"), tmp_path / "x")
    assert adapter_to_bytes  # the writer itself never produces such a blob (finite check)
