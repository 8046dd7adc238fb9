"""LoraModule / LoraAdapter: shapes, the delta, dtype casts and finiteness checks."""

from __future__ import annotations

import math

import pytest
import torch

from mta.errors import AdapterFormatError
from mta.lora import LoraAdapter, LoraModule


def _module(r: int = 3, fan_in: int = 5, fan_out: int = 4, scale: float = 2.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return LoraModule(
        A=torch.randn(r, fan_in, generator=g), B=torch.randn(fan_out, r, generator=g), scale=scale
    )


def test_module_shapes_and_delta() -> None:
    module = _module()
    assert (module.r, module.in_features, module.out_features) == (3, 5, 4)
    expected = 2.0 * module.B.double() @ module.A.double()
    delta = module.delta()
    assert delta.dtype == torch.float32
    assert delta.shape == (4, 5)
    torch.testing.assert_close(delta.double(), expected, rtol=1e-6, atol=1e-6)


def test_delta_of_half_factors_is_fp32() -> None:
    module = _module().to(torch.float16)
    assert module.A.dtype == torch.float16
    assert module.delta().dtype == torch.float32
    assert module.scale == 2.0


@pytest.mark.parametrize(
    ("a_shape", "b_shape", "message"),
    [
        ((3, 5), (4, 2), "rank mismatch"),
        ((3,), (4, 3), "2-D"),
        ((3, 5), (4, 3, 1), "2-D"),
    ],
)
def test_module_rejects_bad_factor_shapes(a_shape, b_shape, message) -> None:
    with pytest.raises(AdapterFormatError, match=message):
        LoraModule(A=torch.zeros(a_shape), B=torch.zeros(b_shape), scale=1.0)


@pytest.mark.parametrize("scale", [math.nan, math.inf])
def test_module_rejects_non_finite_scale(scale: float) -> None:
    with pytest.raises(AdapterFormatError, match="scale"):
        LoraModule(A=torch.zeros(1, 2), B=torch.zeros(2, 1), scale=scale)


def test_adapter_summaries() -> None:
    adapter = LoraAdapter(
        modules={
            "model.layers.0.self_attn.q_proj": _module(r=2),
            "model.layers.0.mlp.down_proj": _module(r=4, fan_in=6, fan_out=3),
            "model.layers.1.self_attn.q_proj": _module(r=2),
        },
        base_model="tiny",
    )
    assert adapter.target_modules() == ["down_proj", "q_proj"]
    assert adapter.ranks() == {
        "model.layers.0.self_attn.q_proj": 2,
        "model.layers.0.mlp.down_proj": 4,
        "model.layers.1.self_attn.q_proj": 2,
    }
    assert adapter.num_params() == 2 * (2 * 5 + 4 * 2) + (4 * 6 + 3 * 4)
    half = adapter.to(torch.bfloat16)
    assert half.base_model == "tiny"
    assert {m.A.dtype for m in half.modules.values()} == {torch.bfloat16}
    assert {m.B.dtype for m in half.modules.values()} == {torch.bfloat16}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("factor", ["A", "B"])
def test_check_finite_names_the_module(bad: float, factor: str) -> None:
    module = _module()
    tensor = (module.A if factor == "A" else module.B).clone()
    tensor[0, 0] = bad
    broken = LoraModule(
        A=tensor if factor == "A" else module.A,
        B=tensor if factor == "B" else module.B,
        scale=1.0,
    )
    adapter = LoraAdapter(modules={"ok": _module(seed=1), "model.x.q_proj": broken})
    with pytest.raises(AdapterFormatError, match=rf"model\.x\.q_proj lora_{factor}"):
        adapter.check_finite()


def test_check_finite_passes_on_finite_adapter() -> None:
    LoraAdapter(modules={"m": _module()}).check_finite()
