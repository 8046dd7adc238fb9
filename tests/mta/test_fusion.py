"""Fusion methods against the dense math of DESIGN §2, on random small shapes (hypothesis)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mta.errors import ShapeMismatchError, UnknownNameError
from mta.fusion import FUSION_METHODS, compress, fuse, get_fusion
from mta.lora import LoraAdapter, LoraModule

PROPERTY = settings(max_examples=30, deadline=None)
MODULES = ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")


def lora_scale(alpha: float, r: int, rslora: bool) -> float:
    """PEFT's scaling rule."""
    return alpha / math.sqrt(r) if rslora else alpha / r


def make_module(fan_out: int, fan_in: int, r: int, scale: float, seed: int) -> LoraModule:
    g = torch.Generator().manual_seed(seed)
    return LoraModule(
        A=torch.randn(r, fan_in, generator=g), B=torch.randn(fan_out, r, generator=g), scale=scale
    )


@st.composite
def adapter_sets(draw, min_k: int = 1, max_k: int = 4, equal_ranks: bool = False):
    """(adapters, weights) over two modules with random shapes, ranks, alphas and rsLoRA."""
    k = draw(st.integers(min_k, max_k))
    shapes = {m: (draw(st.integers(1, 12)), draw(st.integers(1, 12))) for m in MODULES}
    shared_rank = draw(st.integers(1, 6))
    rslora = draw(st.booleans())
    adapters = []
    for i in range(k):
        r = shared_rank if equal_ranks else draw(st.integers(1, 6))
        alpha = draw(st.floats(0.5, 32.0))
        # Some adapters lack a module: a missing module must count as a zero delta.
        present = [m for m in MODULES if i == 0 or draw(st.booleans())] or [MODULES[0]]
        seed = draw(st.integers(0, 2**31 - 1))
        modules = {
            m: make_module(*shapes[m], r, lora_scale(alpha, r, rslora), seed + j)
            for j, m in enumerate(present)
        }
        adapters.append(LoraAdapter(modules=modules))
    weights = draw(
        st.lists(st.floats(-2.0, 2.0), min_size=k, max_size=k).filter(
            lambda ws: any(abs(w) > 1e-3 for w in ws)
        )
    )
    return adapters, weights


def dense_sum(adapters, weights, path: str) -> torch.Tensor:
    """Σ w_i s_i B_i A_i in float64, over the adapters that have ``path``."""
    total = None
    for adapter, w in zip(adapters, weights, strict=True):
        if path in adapter.modules:
            m = adapter.modules[path]
            term = w * m.scale * (m.B.double() @ m.A.double())
            total = term if total is None else total + term
    return total


def bound(adapters, weights, path: str) -> float:
    """A float32 error budget proportional to the size of the summed terms."""
    size = sum(
        abs(w * a.modules[path].scale) * a.modules[path].B.norm() * a.modules[path].A.norm()
        for a, w in zip(adapters, weights, strict=True)
        if path in a.modules
    )
    return 1e-5 * float(size) + 1e-6


@PROPERTY
@given(adapter_sets())
def test_cat_is_the_exact_weighted_sum(case) -> None:
    adapters, weights = case
    fused = fuse(adapters, weights, method="cat")
    for path, module in fused.modules.items():
        present = [a for a in adapters if path in a.modules]
        assert module.r == sum(a.modules[path].r for a in present)
        assert module.scale == 1.0
        error = (module.delta().double() - dense_sum(adapters, weights, path)).norm()
        assert error <= bound(adapters, weights, path)
    assert set(fused.modules) == set().union(*(a.modules for a in adapters))


@PROPERTY
@given(adapter_sets(), st.integers(1, 8))
def test_svd_reaches_the_optimal_truncation_error(case, rank) -> None:
    adapters, weights = case
    fused = fuse(adapters, weights, method="svd", rank=rank)
    for path, module in fused.modules.items():
        dense = dense_sum(adapters, weights, path)
        sigma = torch.linalg.svdvals(dense)
        optimal = sigma[rank:].square().sum().sqrt()
        error = (module.delta().double() - dense).norm()
        assert module.r <= rank
        assert abs(error - optimal) <= 1e-4 * float(sigma.norm()) + 1e-5


def test_svd_default_rank_is_the_largest_anchor_rank() -> None:
    a = LoraAdapter(modules={"m": make_module(10, 9, 2, 1.0, 0)})
    b = LoraAdapter(modules={"m": make_module(10, 9, 5, 1.0, 1)})
    assert fuse([a, b], [0.5, 0.5], method="svd").ranks() == {"m": 5}


def test_svd_never_forms_the_dense_delta() -> None:
    # A dense 100k x 100k fp32 delta would need 40 GB; the factors need 6 MB.
    wide = LoraAdapter(modules={"m": make_module(100_000, 100_000, 4, 1.0, 0)})
    other = LoraAdapter(modules={"m": make_module(100_000, 100_000, 4, 1.0, 1)})
    fused = fuse([wide, other], [0.5, 0.5], method="svd", rank=3)
    assert fused.ranks() == {"m": 3}
    # Check against the rank-8 exact fusion through small random projections.
    exact = fuse([wide, other], [0.5, 0.5]).modules["m"]
    probe = torch.randn(100_000, 2, dtype=torch.float64)
    approx = fused.modules["m"]
    exact_out = exact.B.double() @ (exact.A.double() @ probe)
    approx_out = approx.B.double() @ (approx.A.double() @ probe)
    assert (exact_out - approx_out).norm() < exact_out.norm()


@PROPERTY
@given(adapter_sets(min_k=2, max_k=4), st.sampled_from(["cat", "svd"]))
def test_weight_one_and_zeros_reproduce_the_first_adapter(case, method) -> None:
    adapters, _ = case
    weights = [1.0] + [0.0] * (len(adapters) - 1)
    fused = fuse(adapters, weights, method=method)
    for path, module in adapters[0].modules.items():
        torch.testing.assert_close(
            fused.modules[path].delta(), module.delta(), rtol=1e-4, atol=1e-4 * module.scale
        )


@PROPERTY
@given(adapter_sets(equal_ranks=True))
def test_factorwise_interpolates_factors(case) -> None:
    adapters, weights = case
    scales = {a.modules[p].scale for a in adapters for p in a.modules}
    if len(scales) > 1:  # factorwise needs one shared scale: rebuild with the first one
        s = next(iter(adapters[0].modules.values())).scale
        adapters = [
            LoraAdapter(modules={p: LoraModule(m.A, m.B, s) for p, m in a.modules.items()})
            for a in adapters
        ]
    fused = fuse(adapters, weights, method="factorwise")
    for path, module in fused.modules.items():
        present = [
            (w, a.modules[path])
            for a, w in zip(adapters, weights, strict=True)
            if path in a.modules
        ]
        B = sum(w * m.B.double() for w, m in present)
        A = sum(w * m.A.double() for w, m in present)
        expected = present[0][1].scale * (B @ A)
        assert module.r == present[0][1].r
        torch.testing.assert_close(module.delta().double(), expected, rtol=1e-4, atol=1e-4)


@PROPERTY
@given(
    st.integers(1, 10),
    st.integers(1, 10),
    st.integers(1, 5),
    st.floats(0.05, 0.95),
    st.floats(0.1, 4.0),
    st.integers(0, 2**31 - 1),
)
def test_factorwise_differs_from_exact_by_the_cross_term(fan_out, fan_in, r, w1, s, seed) -> None:
    m1, m2 = make_module(fan_out, fan_in, r, s, seed), make_module(fan_out, fan_in, r, s, seed + 1)
    a1, a2 = LoraAdapter(modules={"m": m1}), LoraAdapter(modules={"m": m2})
    w2 = 1.0 - w1
    exact = fuse([a1, a2], [w1, w2]).modules["m"].delta().double()
    factorwise = fuse([a1, a2], [w1, w2], method="factorwise").modules["m"].delta().double()
    cross = w1 * w2 * s * (m1.B.double() - m2.B.double()) @ (m1.A.double() - m2.A.double())
    torch.testing.assert_close(exact - factorwise, cross, rtol=1e-4, atol=1e-4 * s)


def test_factorwise_refuses_unequal_ranks_and_scales() -> None:
    a = LoraAdapter(modules={"m": make_module(4, 3, 2, 1.0, 0)})
    with pytest.raises(ShapeMismatchError, match="equal ranks"):
        fuse(
            [a, LoraAdapter(modules={"m": make_module(4, 3, 3, 1.0, 1)})],
            [0.5, 0.5],
            method="factorwise",
        )
    with pytest.raises(ValueError, match="equal scales"):
        fuse(
            [a, LoraAdapter(modules={"m": make_module(4, 3, 2, 2.0, 1)})],
            [0.5, 0.5],
            method="factorwise",
        )


@PROPERTY
@given(adapter_sets(max_k=1), st.integers(1, 8))
def test_compress_keeps_low_ranks_and_truncates_high_ones(case, rank) -> None:
    (adapter,), _ = case
    small = compress(adapter, rank)
    for path, module in adapter.modules.items():
        out = small.modules[path]
        if module.r <= rank:
            assert torch.equal(out.A, module.A) and torch.equal(out.B, module.B)
            assert out.scale == module.scale and out.A is not module.A
        else:
            assert out.r == min(rank, module.in_features, module.out_features, module.r)
            sigma = torch.linalg.svdvals(module.delta().double())
            error = (out.delta().double() - module.delta().double()).norm()
            optimal = sigma[rank:].square().sum().sqrt()
            assert abs(error - optimal) <= 1e-4 * float(sigma.norm()) + 1e-5


def test_mismatched_module_shapes_are_refused() -> None:
    a = LoraAdapter(modules={"m.q_proj": make_module(4, 3, 2, 1.0, 0)})
    b = LoraAdapter(modules={"m.q_proj": make_module(5, 3, 2, 1.0, 1)})
    for method in FUSION_METHODS:
        with pytest.raises(ShapeMismatchError, match=r"m\.q_proj: adapter 1 is .* adapter 2 is"):
            fuse([a, b], [0.5, 0.5], method=method)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([1.0], "got 1 weights for 2 adapters"),
        ([0.5, 0.5, 0.0], "got 3 weights"),
        ([math.nan, 1.0], "finite"),
        ([math.inf, 1.0], "finite"),
        ([0.0, 0.0], "all zero"),
    ],
)
def test_bad_weights_are_refused(weights, message) -> None:
    a = LoraAdapter(modules={"m": make_module(4, 3, 2, 1.0, 0)})
    for method in FUSION_METHODS:
        with pytest.raises(ValueError, match=message):
            fuse([a, a], weights, method=method)


def test_negative_weights_subtract() -> None:
    a = LoraAdapter(modules={"m": make_module(4, 3, 2, 1.5, 0)})
    fused = fuse([a, a], [1.0, -1.0])
    assert fused.modules["m"].delta().abs().max() < 1e-6


def test_no_adapters_and_bad_ranks_are_refused() -> None:
    a = LoraAdapter(modules={"m": make_module(4, 3, 2, 1.0, 0)})
    with pytest.raises(ValueError, match="at least one adapter"):
        fuse([], [])
    with pytest.raises(ValueError, match="'cat' is exact"):
        fuse([a], [1.0], method="cat", rank=2)
    with pytest.raises(ValueError, match="takes no rank"):
        fuse([a], [1.0], method="factorwise", rank=2)
    with pytest.raises(ValueError, match="positive integer"):
        fuse([a], [1.0], method="svd", rank=0)
    with pytest.raises(ValueError, match="positive integer"):
        compress(a, 0)


def test_unknown_method_lists_the_valid_ones() -> None:
    with pytest.raises(
        UnknownNameError, match="unknown fusion method 'ties'; valid: cat, factorwise, svd"
    ):
        get_fusion("ties")
    assert sorted(FUSION_METHODS) == ["cat", "factorwise", "svd"]
    assert all(get_fusion(name).name == name for name in FUSION_METHODS)


def test_fused_factors_are_fp32_and_base_model_is_kept() -> None:
    a = LoraAdapter(modules={"m": make_module(4, 3, 2, 1.0, 0).to(torch.float16)}, base_model="x")
    b = LoraAdapter(modules={"m": make_module(4, 3, 2, 1.0, 1).to(torch.bfloat16)}, base_model="x")
    for method in FUSION_METHODS:
        fused = fuse([a, b], [0.5, 0.5], method=method)
        assert fused.base_model == "x"
        assert fused.modules["m"].A.dtype == torch.float32
        assert fused.modules["m"].B.dtype == torch.float32
    mixed = fuse([a, LoraAdapter(modules=b.modules, base_model="y")], [0.5, 0.5])
    assert mixed.base_model is None
