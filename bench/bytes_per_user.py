"""Bytes per user: MTA stacks vs one LoRA per user (OPPU) vs the paper's released stacks."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from bench.report import Section
from bench.shapes import LLAMA3_8B, SMOLLM2, LlamaShape, random_adapter
from mta.adapter_blob import adapter_to_bytes
from mta.peft_io import save_peft_adapter

EMBEDDING_BYTES = 384 * 4  # one float32 MiniLM user embedding, stored per user
BANK_ANCHORS = 50
USERS = 1_000_000


def _peft_file_bytes(shape: LlamaShape, rank: int, dtype: torch.dtype) -> int:
    """Size of adapter_model.safetensors + adapter_config.json as PEFT would load them."""
    adapter = random_adapter(shape.linear_shapes(), rank, seed=rank)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_peft_adapter(adapter, Path(tmp) / "a", dtype=dtype)
        return sum(f.stat().st_size for f in Path(folder).iterdir())


def _blob_bytes(
    shape: LlamaShape, rank: int, dtype: torch.dtype | str, *, attention_only: bool = False
) -> int:
    """Size of the blob our registry stores for an adapter of this rank and format."""
    shapes = shape.linear_shapes()
    if attention_only:
        shapes = {path: s for path, s in shapes.items() if ".self_attn." in path}
    adapter = random_adapter(shapes, rank, seed=rank)
    return len(adapter_to_bytes(adapter, dtype=dtype))


def _stack_rows(shape: LlamaShape) -> list[tuple[str, int]]:
    """(label, bytes per user) of the stack formats and module sets `mta user adapt` offers."""
    from mta.registry.requests import AdaptRequest

    default = AdaptRequest(shots=1)
    rows = []
    for modules, attention_only in (("all", False), ("attention", True)):
        for fmt in ("fp16", "int8", "nf4"):
            mark = " (default)" if (fmt, modules) == (default.dtype, default.modules) else ""
            label = f"MTA stack r1 {fmt}, {modules} modules{mark} (+ embedding)"
            size = _blob_bytes(shape, 1, fmt, attention_only=attention_only) + EMBEDDING_BYTES
            rows.append((label, size))
    return rows


def bench_bytes(quick: bool) -> Section:
    """Persisted bytes per user and projected totals at 1M users, by method and base model."""
    section = Section(
        "Bytes per user (all seven linear modules per layer unless a row says otherwise)",
        ["base", "method", "per user", "1M users + bank", "OPPU r8 fp32 / this"],
    )
    for shape in (SMOLLM2, LLAMA3_8B):
        bank = BANK_ANCHORS * _blob_bytes(shape, 8, torch.float16)
        oppu32 = _peft_file_bytes(shape, 8, torch.float32)
        stack2 = _blob_bytes(shape, 2, torch.float16) + EMBEDDING_BYTES
        rows = [
            *((label, size, bank) for label, size in _stack_rows(shape)),
            ("MTA stack r2 fp16 (+ embedding)", stack2, bank),
            ("paper release: r4 stack fp32", _peft_file_bytes(shape, 4, torch.float32), bank),
            ("OPPU r8 fp16", _peft_file_bytes(shape, 8, torch.float16), 0),
            ("OPPU r8 fp32", oppu32, 0),
        ]
        for label, per_user, fixed in rows:
            total = fixed + USERS * per_user
            section.add(
                shape.name, label, _human(per_user), _human(total), (USERS * oppu32) / total
            )
        merged = shape.base_params() * shape.native_bytes
        dtype = "fp32" if shape.native_bytes == 4 else "bf16"
        section.notes.append(
            f"{shape.name}: the paper's pipeline also writes a merged full model per user while "
            f"training ({_human(merged)} in {dtype}); the bank is {BANK_ANCHORS} rank-8 fp16 "
            f"anchors = {_human(bank)}."
        )
    section.notes.append(
        "Sizes are real serialized bytes (our safetensors blob / PEFT folder) of random adapters; "
        "the last column is the 1M-user total of OPPU r8 fp32 over this row's total."
    )
    return section


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} PB"
