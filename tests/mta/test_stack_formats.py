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
            # Half a step of the component's scale, after the fp16 rounding it is encoded from.
            step = original.abs().amax(dim=dim, keepdim=True) / 127
            fp16 = (original - original.half().float()).abs()
            assert ((original - again).abs() <= step / 2 + fp16 + 1e-7).all()


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

    # Packed layout: one `scale` tensor, A's then B's scale of each module in order.
    def nan_scale(header: dict, body: bytearray) -> None:
        start, _ = header["scale"]["data_offsets"]
        body[start : start + 4] = struct.pack("<f", float("nan"))

    with pytest.raises(AdapterFormatError, match="non-finite or negative scales"):
        adapter_from_bytes(_rewrite(data, nan_scale))

    def negative_scale(header: dict, body: bytearray) -> None:
        start, _ = header["scale"]["data_offsets"]
        body[start + 4 : start + 8] = struct.pack("<f", -1.0)

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


def _per_factor_v1_blob(stack: LoraAdapter, fmt: str) -> bytes:
    """A quantized blob as written before the packed layout: codes and scales per factor."""
    from safetensors.torch import save

    tensors, shapes = {}, {}
    for path, module in stack.modules.items():
        for name, factor, dim in (("A", module.A, 0), ("B", module.B, 1)):
            for suffix, part in encode(factor.half().float(), fmt, component_dim=dim).items():
                tensors[f"{path}.lora_{name}.{suffix}"] = part
        shapes[path] = [module.r, module.in_features, module.out_features]
    meta = {
        "format": "mta-lora",
        "version": 1,
        "base_model": stack.base_model,
        "scales": {path: module.scale for path, module in stack.modules.items()},
        "quantized": {
            "format": fmt,
            "block": NF4_BLOCK if fmt == "nf4" else None,
            "shapes": shapes,
        },
    }
    return save(tensors, metadata={"mta": json.dumps(meta, sort_keys=True)})


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_the_packed_layout_holds_what_the_per_factor_one_held_in_two_tensors(fmt: str) -> None:
    stack = _stack(rank=2, seed=5)
    packed = adapter_to_bytes(stack, dtype=fmt)
    old = _per_factor_v1_blob(stack, fmt)
    header = json.loads(packed[8 : 8 + int.from_bytes(packed[:8], "little")])
    assert sorted(k for k in header if k != "__metadata__") == ["q", "scale"]
    assert len(packed) < len(old)
    # Blobs stored before the packed layout still read, to the same factors.
    new_back, old_back = adapter_from_bytes(packed), adapter_from_bytes(old)
    for path, module in new_back.modules.items():
        assert torch.equal(module.A, old_back.modules[path].A)
        assert torch.equal(module.B, old_back.modules[path].B)
        assert module.scale == old_back.modules[path].scale == 2.0
    assert blob_format(packed) == blob_format(old) == fmt


def test_a_packed_blob_whose_codes_or_modules_do_not_add_up_is_refused() -> None:
    data = adapter_to_bytes(_stack(1), dtype="int8")

    def edit_modules(change):
        def edit(header: dict, body: bytearray) -> None:
            meta = json.loads(header["__metadata__"]["mta"])
            change(meta["quantized"]["modules"])
            header["__metadata__"]["mta"] = json.dumps(meta)

        return edit

    cases = [
        (lambda modules: modules.pop(), "more codes or scales than its modules hold"),
        (lambda modules: modules.append(list(modules[0])), "listed twice"),
        (lambda modules: modules[0].__setitem__(1, 9), "end too early"),
        (lambda modules: modules[0].__setitem__(2, "96"), "bad module entry"),
    ]
    for change, message in cases:
        with pytest.raises(AdapterFormatError, match=message):
            adapter_from_bytes(_rewrite(data, edit_modules(change)))
