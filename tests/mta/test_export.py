"""Export: fused + stack as one exact LoRA, optionally rank-capped with the truncated SVD."""

from __future__ import annotations

import pytest
import torch

from mta.errors import ShapeMismatchError
from mta.export import export_adapter, stack_onto
from mta.fusion import fuse
from mta.lora import LoraAdapter, LoraModule

SHAPES = {"model.layers.0.self_attn.q_proj": (12, 10), "model.layers.0.mlp.down_proj": (10, 16)}


def adapter(rank: int, scale: float, seed: int, shapes=SHAPES, base_model=None) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    return LoraAdapter(
        modules={
            path: LoraModule(
                A=torch.randn(rank, fan_in, generator=g),
                B=torch.randn(fan_out, rank, generator=g),
                scale=scale,
            )
            for path, (fan_out, fan_in) in shapes.items()
        },
        base_model=base_model,
    )


@pytest.fixture
def fused() -> LoraAdapter:
    return fuse([adapter(8, 2.0, 0), adapter(8, 2.0, 1)], [0.6, 0.4])


def test_stack_onto_is_exact_concatenation(fused) -> None:
    stack = adapter(2, 0.5, 2).to(torch.float16)  # stacks are stored in fp16
    combined = stack_onto(fused, stack)
    for path in SHAPES:
        assert combined.modules[path].r == 16 + 2
        expected = fused.modules[path].delta() + stack.modules[path].delta()
        torch.testing.assert_close(combined.modules[path].delta(), expected, rtol=1e-5, atol=1e-4)


def test_stack_on_a_subset_of_modules_keeps_the_others(fused) -> None:
    stack = adapter(1, 1.0, 3, shapes={"model.layers.0.mlp.down_proj": (10, 16)})
    combined = stack_onto(fused, stack)
    q = "model.layers.0.self_attn.q_proj"
    assert combined.ranks() == {q: 16, "model.layers.0.mlp.down_proj": 17}
    torch.testing.assert_close(combined.modules[q].delta(), fused.modules[q].delta())


def test_export_without_cap_equals_stack_onto(fused) -> None:
    stack = adapter(2, 0.5, 4, base_model="tiny")
    exported = export_adapter(fused, stack)
    assert exported.base_model == "tiny"
    for path, module in stack_onto(fused, stack).modules.items():
        assert torch.equal(exported.modules[path].A, module.A)
        assert torch.equal(exported.modules[path].B, module.B)


def test_export_with_max_rank_is_the_optimal_truncation(fused) -> None:
    stack = adapter(2, 0.5, 5)
    exported = export_adapter(fused, stack, max_rank=4)
    for path in SHAPES:
        dense = fused.modules[path].delta().double() + stack.modules[path].delta().double()
        sigma = torch.linalg.svdvals(dense)
        error = (exported.modules[path].delta().double() - dense).norm()
        assert exported.modules[path].r == 4
        assert error == pytest.approx(float(sigma[4:].square().sum().sqrt()), rel=1e-4, abs=1e-4)


def test_export_with_a_cap_above_the_rank_is_exact(fused) -> None:
    stack = adapter(2, 0.5, 6)
    exported = export_adapter(fused, stack, max_rank=64)
    assert set(exported.ranks().values()) == {18}


def test_export_without_stack_is_the_fused_adapter(fused) -> None:
    exported = export_adapter(fused, None)
    assert exported.ranks() == fused.ranks()
    assert export_adapter(fused, None, max_rank=3).ranks() == {p: 3 for p in SHAPES}


def test_stack_of_another_model_is_refused(fused) -> None:
    wrong = adapter(2, 1.0, 7, shapes={"model.layers.0.self_attn.q_proj": (12, 11)})
    with pytest.raises(ShapeMismatchError, match="q_proj"):
        export_adapter(fused, wrong)
    with pytest.raises(ValueError, match="positive integer"):
        export_adapter(fused, None, max_rank=0)


def test_an_export_has_one_rank_and_no_rank_pattern(tiny_shapes, tmp_path) -> None:
    import json

    from mta.export import export_adapter
    from mta.fusion import fuse
    from mta.lora import LoraAdapter
    from mta.peft_io import load_peft_adapter, save_peft_adapter
    from tests.fixtures_model import random_adapter

    fused = fuse([random_adapter(tiny_shapes, 8, 1), random_adapter(tiny_shapes, 8, 2)], [0.6, 0.4])
    full = random_adapter(tiny_shapes, 1, 3)
    # A stack on the attention modules only: the MLP modules have rank 16, the others 17.
    stack = LoraAdapter({p: m for p, m in full.modules.items() if "self_attn" in p})
    exported = export_adapter(fused, stack)
    assert set(exported.ranks().values()) == {17}
    for path, module in exported.modules.items():
        expected = fused.modules[path].delta()
        if path in stack.modules:
            expected = expected + stack.modules[path].delta()
        torch.testing.assert_close(module.delta(), expected, rtol=1e-5, atol=1e-6)
    folder = save_peft_adapter(exported, tmp_path / "out")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["rank_pattern"]) == (17, 17, {})
    assert set(load_peft_adapter(folder).ranks().values()) == {17}
    assert set(export_adapter(fused, stack, max_rank=16).ranks().values()) == {16}
