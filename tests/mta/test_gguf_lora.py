"""llama.cpp LoRA GGUF files: keys, names, shapes, exact deltas and refusals (no llama.cpp needed).

The file is read back with gguf's own GGUFReader; tensor names are checked against gguf's
TensorNameMap and the q/k row order against the inverse transformers applies when it loads a
GGUF model, so the tests do not just repeat the writer's tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mta.errors import AdapterFormatError, MtaError, ShapeMismatchError, UnknownNameError
from mta.gguf_lora import (
    GGUF_NAME,
    base_head_dim,
    gguf_tensor_name,
    rope_permute_rows,
    save_gguf_lora,
)
from mta.lora import LoraAdapter, LoraModule

gguf = pytest.importorskip("gguf")

# A two-layer Llama in miniature: 4 query heads and 2 key/value heads of 8 rows each.
HIDDEN, HEAD_DIM, N_HEAD, N_KV_HEAD, FFN, LAYERS = 32, 8, 4, 2, 48, 2
SHAPES = {  # module inside a layer -> (out, in)
    "self_attn.q_proj": (N_HEAD * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (N_KV_HEAD * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (N_KV_HEAD * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, N_HEAD * HEAD_DIM),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}


def mixed_adapter(seed: int = 0) -> LoraAdapter:
    """All seven modules on two layers, with ranks 1..5 and scales that differ per module."""
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for layer in range(LAYERS):
        for i, (name, (out_features, in_features)) in enumerate(SHAPES.items()):
            rank = 1 + (i + 2 * layer) % 5
            modules[f"model.layers.{layer}.{name}"] = LoraModule(
                A=torch.randn(rank, in_features, generator=generator),
                B=torch.randn(out_features, rank, generator=generator),
                scale=[2.0, 0.5, -1.5, 1.0, 0.125][i % 5],
            )
    return LoraAdapter(modules=modules)


def read(path: Path) -> tuple[dict[str, object], dict[str, object]]:
    """``(key/values, tensors by name)`` of a GGUF file, via gguf.GGUFReader."""
    reader = gguf.GGUFReader(path)
    fields = {
        name: field.contents()
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.")
    }
    return fields, {tensor.name: tensor for tensor in reader.tensors}


def hf_rows(weight: np.ndarray, module: str) -> np.ndarray:
    """Undo the q/k row permutation the way transformers does when it loads a GGUF model."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor(
        config={"num_attention_heads": N_HEAD, "num_key_value_heads": N_KV_HEAD}
    )
    name = {"self_attn.q_proj": "blk.0.attn_q.weight", "self_attn.k_proj": "blk.0.attn_k.weight"}
    if module not in name:
        return weight
    return processor.process(weight, name[module]).weights


def file_delta(tensors: dict[str, object], path: str, module: str) -> torch.Tensor:
    """The delta llama.cpp applies for one module (alpha == rank, so scale 1), in HF row order."""
    base = gguf_tensor_name(path)
    a = np.asarray(tensors[f"{base}.lora_a"].data, dtype=np.float64)
    b = np.asarray(tensors[f"{base}.lora_b"].data, dtype=np.float64)
    return torch.from_numpy(hf_rows(b @ a, module))


def test_keys_say_lora_adapter_for_the_base_architecture(tmp_path: Path) -> None:
    adapter = mixed_adapter()
    path = save_gguf_lora(adapter, tmp_path / "a.gguf", head_dim=HEAD_DIM)
    fields, _ = read(path)
    assert fields == {
        "general.architecture": "llama",
        "general.type": "adapter",
        "adapter.type": "lora",
        "adapter.lora.alpha": 5.0,  # the largest rank: every module is padded to it
        "general.file_type": int(gguf.LlamaFileType.ALL_F32),
    }


def test_names_follow_llama_cpp_tensor_names(tmp_path: Path) -> None:
    adapter = mixed_adapter()
    _, tensors = read(save_gguf_lora(adapter, tmp_path / "a.gguf", head_dim=HEAD_DIM))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, LAYERS)
    expected = set()
    for path in adapter.modules:
        base = names.get_name(f"{path}.weight", try_suffixes=(".weight",))
        assert base == gguf_tensor_name(path)
        expected |= {f"{base}.lora_a", f"{base}.lora_b"}
    assert set(tensors) == expected
    assert "blk.1.attn_output.weight.lora_b" in tensors
    assert "blk.0.ffn_down.weight.lora_a" in tensors
    assert len(tensors) == 2 * 7 * LAYERS


@pytest.mark.parametrize(("dtype", "ggml_type"), [(torch.float32, "F32"), (torch.float16, "F16")])
def test_shapes_are_what_llama_cpp_checks(tmp_path: Path, dtype, ggml_type: str) -> None:
    adapter = mixed_adapter()
    _, tensors = read(save_gguf_lora(adapter, tmp_path / "a.gguf", head_dim=HEAD_DIM, dtype=dtype))
    for path, module in adapter.modules.items():
        a = tensors[f"{gguf_tensor_name(path)}.lora_a"]
        b = tensors[f"{gguf_tensor_name(path)}.lora_b"]
        # ggml order (innermost first): model ne[0] == a.ne[0], model ne[1] == b.ne[1],
        # a.ne[1] == b.ne[0] (src/llama-adapter.cpp's shape checks).
        assert [int(n) for n in a.shape] == [module.in_features, 5]
        assert [int(n) for n in b.shape] == [5, module.out_features]
        assert a.data.shape == (5, module.in_features)
        assert b.data.shape == (module.out_features, 5)
        assert a.tensor_type.name == b.tensor_type.name == ggml_type


def test_padding_and_folding_keep_every_delta_exact(tmp_path: Path) -> None:
    adapter = mixed_adapter()
    _, tensors = read(save_gguf_lora(adapter, tmp_path / "a.gguf", head_dim=HEAD_DIM))
    for path, module in adapter.modules.items():
        base = gguf_tensor_name(path)
        a = tensors[f"{base}.lora_a"].data
        b = tensors[f"{base}.lora_b"].data
        assert not a[module.r :].any() and not b[:, module.r :].any()  # zero padding only
        expected = module.delta().double()
        got = file_delta(tensors, path, path.split(".", 3)[3])
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


def test_fp16_deltas_are_exact_up_to_fp16_rounding(tmp_path: Path) -> None:
    adapter = mixed_adapter()
    path = save_gguf_lora(adapter, tmp_path / "a.gguf", head_dim=HEAD_DIM, dtype=torch.float16)
    _, tensors = read(path)
    for module_path, module in adapter.modules.items():
        expected = module.delta().double()
        got = file_delta(tensors, module_path, module_path.split(".", 3)[3])
        # Each factor entry is rounded once (relative error 2^-11); the sum over rank <= 5.
        bound = 5 * 2 * 2**-11 * float((module.B.abs() @ module.A.abs()).max()) * abs(module.scale)
        assert float((got - expected).abs().max()) <= bound


def test_only_q_and_k_rows_are_permuted(tmp_path: Path) -> None:
    adapter = mixed_adapter()
    _, tensors = read(save_gguf_lora(adapter, tmp_path / "a.gguf", head_dim=HEAD_DIM))
    for path, module in adapter.modules.items():
        stored = tensors[f"{gguf_tensor_name(path)}.lora_b"].data[:, : module.r]
        natural = (module.B.float() * module.scale).numpy()
        if path.endswith(("q_proj", "k_proj")):
            assert not np.allclose(stored, natural)
        else:
            np.testing.assert_allclose(stored, natural, rtol=1e-6)


def test_rope_permutation_moves_rotate_half_pairs_next_to_each_other() -> None:
    rows = torch.arange(2 * 6).float().unsqueeze(1)  # two heads of 6 rows: pairs (0,3) (1,4) (2,5)
    permuted = rope_permute_rows(rows, 6).squeeze(1).tolist()
    assert permuted == [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]
    with pytest.raises(ShapeMismatchError):
        rope_permute_rows(rows, 5)
    with pytest.raises(ShapeMismatchError):
        rope_permute_rows(rows, 8)


def test_same_adapter_gives_the_same_bytes_and_no_temp_files(tmp_path: Path) -> None:
    adapter = mixed_adapter()
    first = save_gguf_lora(adapter, tmp_path / "one.gguf", head_dim=HEAD_DIM)
    second = save_gguf_lora(adapter, tmp_path / "two.gguf", head_dim=HEAD_DIM)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.gguf", "two.gguf"]
    assert first.stat().st_mode & 0o777 == 0o644


def test_a_folder_gets_the_file_next_to_the_peft_weights(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    written = save_gguf_lora(mixed_adapter(), folder, head_dim=HEAD_DIM)
    assert written == folder / GGUF_NAME and written.is_file()


def test_uniform_rank_adapter_needs_no_padding(tmp_path: Path) -> None:
    modules = {
        f"model.layers.0.{name}": LoraModule(
            A=torch.ones(3, shape[1]), B=torch.ones(shape[0], 3), scale=1.0
        )
        for name, shape in SHAPES.items()
        if not name.endswith(("q_proj", "k_proj"))
    }
    path = save_gguf_lora(LoraAdapter(modules=modules), tmp_path / "a.gguf")  # no head_dim needed
    fields, tensors = read(path)
    assert fields["adapter.lora.alpha"] == 3.0
    assert all(t.data.min() == 1.0 for t in tensors.values())


@pytest.mark.parametrize(
    ("modules", "kwargs", "error", "match"),
    [
        ({}, {}, AdapterFormatError, "without modules"),
        ({"lm_head": (8, HIDDEN)}, {}, AdapterFormatError, "cannot adapt 'lm_head'"),
        (
            {"model.layers.0.mlp.up_proj": (FFN, HIDDEN)},
            {"base_arch": "qwen2"},
            UnknownNameError,
            "valid: llama",
        ),
        ({"model.layers.0.self_attn.q_proj": (32, HIDDEN)}, {}, ShapeMismatchError, "head_dim"),
        (
            {"model.layers.0.self_attn.k_proj": (16, HIDDEN)},
            {"head_dim": 6},
            ShapeMismatchError,
            "heads of 6",
        ),
        (
            {"model.layers.0.mlp.up_proj": (FFN, HIDDEN)},
            {"dtype": torch.bfloat16},
            AdapterFormatError,
            "fp32 or fp16",
        ),
    ],
)
def test_refusals(tmp_path: Path, modules, kwargs, error, match) -> None:
    adapter = LoraAdapter(
        modules={
            p: LoraModule(A=torch.ones(2, s[1]), B=torch.ones(s[0], 2), scale=1.0)
            for p, s in modules.items()
        }
    )
    with pytest.raises(error, match=match):
        save_gguf_lora(adapter, tmp_path / "a.gguf", **kwargs)
    assert not any(tmp_path.iterdir())


def test_non_finite_and_fp16_overflow_are_refused(tmp_path: Path) -> None:
    a = torch.ones(2, HIDDEN)
    nan = LoraAdapter(
        modules={
            "model.layers.0.mlp.up_proj": LoraModule(
                A=a, B=torch.full((FFN, 2), math.nan), scale=1.0
            )
        }
    )
    with pytest.raises(AdapterFormatError, match="non-finite"):
        save_gguf_lora(nan, tmp_path / "a.gguf")
    huge = LoraAdapter(
        modules={"model.layers.0.mlp.up_proj": LoraModule(A=a, B=torch.ones(FFN, 2), scale=1e6)}
    )
    with pytest.raises(AdapterFormatError, match="does not fit"):
        save_gguf_lora(huge, tmp_path / "a.gguf", dtype=torch.float16)
    assert not any(tmp_path.iterdir())


def test_head_dim_from_a_config_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 576, "num_attention_heads": 9})
    )
    assert base_head_dim(tmp_path) == 64
    (tmp_path / "config.json").write_text(json.dumps({"head_dim": 128, "hidden_size": 576}))
    assert base_head_dim(tmp_path) == 128
    with pytest.raises(MtaError):
        base_head_dim(tmp_path / "missing")


def test_head_dim_from_a_gguf_file(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", arch="llama")
    writer.add_embedding_length(576)
    writer.add_head_count(9)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert base_head_dim(tmp_path / "m.gguf") == 64
