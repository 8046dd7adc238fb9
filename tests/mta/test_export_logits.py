"""An exported fused+stack LoRA, loaded by plain PEFT, reproduces the in-memory model's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from mta.export import export_adapter
from mta.fusion import fuse
from mta.inference import apply_adapter
from mta.lora import LoraAdapter
from mta.peft_io import save_peft_adapter
from mta.training import TrainConfig, train_lora

EXAMPLES = [
    ("Review: ghosts haunt an old house at night. Tag:", " horror"),
    ("Review: two strangers fall in love in Paris. Tag:", " romance"),
    ("Review: robots travel to a distant planet. Tag:", " science fiction"),
    ("Review: a funny film about two friends on a road trip. Tag:", " comedy"),
]
PROBE = "Review: a detective chases a killer through the city. Tag: thriller"


@pytest.fixture(scope="module")
def trained(
    tiny_model: tuple, tiny_shapes: dict[str, tuple[int, int]]
) -> tuple[LoraAdapter, LoraAdapter]:
    """(fused from two random rank-4 anchors, rank-2 stack trained on top of it)."""
    from tests.fixtures_model import random_adapter

    model, tokenizer = tiny_model
    anchors = [random_adapter(tiny_shapes, 4, seed, scale=2.0, std=0.1) for seed in (11, 12)]
    fused = fuse(anchors, [0.7, 0.3])
    config = TrainConfig(rank=2, lr=1e-2, epochs=5, batch_size=2)
    stack, _ = train_lora(model, tokenizer, EXAMPLES, config, frozen=fused, progress=False)
    return fused, stack


def in_memory_logits(tiny_model: tuple, fused: LoraAdapter, stack: LoraAdapter) -> torch.Tensor:
    """Logits of base + fused + stack, merged in memory the way training sees them."""
    model, tokenizer = tiny_model
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad(), apply_adapter(model, fused), apply_adapter(model, stack):
        return model(input_ids=ids).logits


def peft_logits(tiny_model: tuple, model_dir: Path, adapter_dir: Path) -> torch.Tensor:
    """Logits of a freshly loaded base model with the exported folder loaded by PEFT."""
    _, tokenizer = tiny_model
    fresh = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(fresh, adapter_dir).eval()
    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return peft_model(input_ids=ids).logits


def test_stack_was_trained(trained: tuple[LoraAdapter, LoraAdapter]) -> None:
    _, stack = trained
    assert max(float(m.B.abs().max()) for m in stack.modules.values()) > 1e-3


@pytest.mark.parametrize("max_rank", [None, 8 + 2], ids=["exact-concat", "svd-at-full-rank"])
def test_exported_peft_adapter_matches_in_memory_model(
    tiny_model: tuple,
    tiny_model_dir: Path,
    trained: tuple[LoraAdapter, LoraAdapter],
    tmp_path: Path,
    max_rank: int | None,
) -> None:
    fused, stack = trained
    exported = export_adapter(fused, stack, max_rank=max_rank)
    assert set(exported.ranks().values()) == {8 + 2}
    save_peft_adapter(exported, tmp_path / "peft")

    expected = in_memory_logits(tiny_model, fused, stack)
    got = peft_logits(tiny_model, tiny_model_dir, tmp_path / "peft")

    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= 1e-4
    base_model, tokenizer = tiny_model
    with torch.no_grad():
        plain = base_model(input_ids=tokenizer(PROBE, return_tensors="pt")["input_ids"]).logits
    assert float((got - plain).abs().max()) > 1e-2  # the adapter really changes the output


def test_rank_capped_export_stays_close(
    tiny_model: tuple,
    tiny_model_dir: Path,
    trained: tuple[LoraAdapter, LoraAdapter],
    tmp_path: Path,
) -> None:
    fused, stack = trained
    capped = export_adapter(fused, stack, max_rank=6)
    assert max(capped.ranks().values()) <= 6
    save_peft_adapter(capped, tmp_path / "peft")
    expected = in_memory_logits(tiny_model, fused, stack)
    got = peft_logits(tiny_model, tiny_model_dir, tmp_path / "peft")
    base_model, tokenizer = tiny_model
    with torch.no_grad():
        plain = base_model(input_ids=tokenizer(PROBE, return_tensors="pt")["input_ids"]).logits
    # Truncation drops the smallest singular directions: not exact, but far closer to the
    # adapted model than the base model is.
    capped_error = float((got - expected).abs().mean())
    assert 0 < capped_error < 0.5 * float((plain - expected).abs().mean())
