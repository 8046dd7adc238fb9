"""Quantized stack formats: round-trip error bounds, bytes, and damaged blobs refused."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from mta.adapter_blob import adapter_from_bytes, adapter_to_bytes, blob_format
from mta.errors import AdapterFormatError, UnknownNameError
from mta.lora import LoraAdapter, LoraModule
from mta.stack_formats import NF4_BLOCK, NF4_LEVELS, decode, encode

# The widest gap between neighbouring NF4 levels is between -1 and the next level:
# rounding to the nearest level errs by at most half of it, times the block's absmax.
NF4_HALF_GAP = max(b - a for a, b in zip(NF4_LEVELS, NF4_LEVELS[1:], strict=False)) / 2


def _stack(rank: int = 1, seed: int = 0) -> LoraAdapter:
    generator = torch.Generator().manual_seed(seed)
    modules = {
        f"model.layers.{i}.self_attn.{name}": LoraModule(
            A=torch.randn(rank, 96, generator=generator) * 0.02,
            B=torch.randn(80, rank, generator=generator) * 0.01,
            scale=2.0,
        )
        for i in range(2)
        for name in ("q_proj", "v_proj")
    }
    return LoraAdapter(modules=modules, base_model="tiny")


@pytest.mark.parametrize("rank", [1, 2])
def test_int8_errs_by_at_most_half_a_step_per_component(rank: int) -> None:
    stack = _stack(rank)
    back = adapter_from_bytes(adapter_to_bytes(stack, dtype="int8"))
    for path, module in stack.modules.items():
        restored = back.modules[path]
        assert restored.scale == module.scale
        for original, again, dim in ((module.A, restored.A, 1), (module.B, restored.B, 0)):
            step = original.abs().amax(dim=dim, keepdim=True) / 127
            assert ((original - again).abs() <= step / 2 + 1e-7).all()


def test_nf4_errs_by_at_most_half_the_widest_level_gap_per_block() -> None:
    stack = _stack(2)
    back = adapter_from_bytes(adapter_to_bytes(stack, dtype="nf4"))
    for path, module in stack.modules.items():
        for original, again in ((module.A, back.modules[path].A), (module.B, back.modules[path].B)):
            flat = original.flatten()
            pad = (-flat.numel()) % NF4_BLOCK
            absmax = torch.cat([flat, flat.new_zeros(pad)]).view(-1, NF4_BLOCK).abs().amax(dim=1)
            bound = (absmax.repeat_interleave(NF4_BLOCK)[: flat.numel()] * NF4_HALF_GAP) * 1.002
            assert ((flat - again.flatten()).abs() <= bound + 1e-7).all()


def test_quantized_blobs_are_smaller_and_name_their_format() -> None:
    stack = LoraAdapter(
        {
            f"layers.{i}.q_proj": LoraModule(
                A=torch.randn(1, 4096) * 0.02, B=torch.randn(4096, 1) * 0.01, scale=1.0
            )
            for i in range(4)
        }
    )
    sizes = {fmt: len(adapter_to_bytes(stack, dtype=fmt)) for fmt in ("fp16", "int8", "nf4")}
    assert sizes["int8"] < 0.6 * sizes["fp16"] and sizes["nf4"] < 0.4 * sizes["fp16"]
    for fmt in ("fp16", "fp32", "int8", "nf4"):
        assert blob_format(adapter_to_bytes(stack, dtype=fmt)) == fmt
    assert adapter_to_bytes(stack, dtype="nf4") == adapter_to_bytes(stack, dtype="nf4")
    with pytest.raises(UnknownNameError, match="int8"):
        adapter_to_bytes(stack, dtype="int3")


def test_an_all_zero_factor_survives_both_formats() -> None:
    # A fresh stack's B starts at zero: a zero scale must decode to zeros, not NaN.
    zero = LoraAdapter({"m": LoraModule(A=torch.ones(1, 70), B=torch.zeros(9, 1), scale=1.0)})
    for fmt in ("int8", "nf4"):
        back = adapter_from_bytes(adapter_to_bytes(zero, dtype=fmt))
        assert torch.equal(back.modules["m"].B, torch.zeros(9, 1))


def _rewrite(data: bytes, edit) -> bytes:
    """The blob with its safetensors header and tensors edited by `edit(header, body)`."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    body = bytearray(data[8 + size :])
    header = edit(header, body) or header
    text = json.dumps(header).encode()
    text += b" " * ((-len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(body)


def test_a_damaged_scale_or_an_unknown_format_is_refused() -> None:
    data = adapter_to_bytes(_stack(1), dtype="int8")

    def nan_scale(header: dict, body: bytearray) -> None:
        start, _ = header["model.layers.0.self_attn.q_proj.lora_A.scale"]["data_offsets"]
        body[start : start + 4] = struct.pack("<f", float("nan"))

    with pytest.raises(AdapterFormatError, match="non-finite or negative scales"):
        adapter_from_bytes(_rewrite(data, nan_scale))

    def negative_scale(header: dict, body: bytearray) -> None:
        start, _ = header["model.layers.0.self_attn.q_proj.lora_B.scale"]["data_offsets"]
        body[start : start + 4] = struct.pack("<f", -1.0)

    with pytest.raises(AdapterFormatError, match="non-finite or negative scales"):
        adapter_from_bytes(_rewrite(data, negative_scale))

    def other_format(header: dict, body: bytearray) -> None:
        meta = json.loads(header["__metadata__"]["mta"])
        meta["quantized"]["format"] = "int4"
        header["__metadata__"]["mta"] = json.dumps(meta)

    with pytest.raises(AdapterFormatError, match="unknown quantized format"):
        adapter_from_bytes(_rewrite(data, other_format))


def test_decode_refuses_codes_of_another_shape() -> None:
    parts = encode(torch.randn(3, 70), "nf4", component_dim=0)
    with pytest.raises(AdapterFormatError, match="does not match its shape"):
        decode(parts, "nf4", (3, 90), component_dim=0)
    parts = encode(torch.randn(3, 70), "int8", component_dim=0)
    with pytest.raises(AdapterFormatError, match="does not match its shape"):
        decode(parts, "int8", (70, 3), component_dim=1)


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_re_storing_an_fp16_stack_gives_the_bytes_of_storing_it_directly(fmt: str) -> None:
    # Quantized formats encode the fp16-rounded factors, so an fp16 stack re-stored in
    # `fmt` (the eval's `mta-int8`/`mta-nf4`, a migration) equals training straight into it.
    stack = _stack(rank=2, seed=3)
    via_fp16 = adapter_from_bytes(adapter_to_bytes(stack, dtype="fp16"))
    assert adapter_to_bytes(via_fp16, dtype=fmt) == adapter_to_bytes(stack, dtype=fmt)
