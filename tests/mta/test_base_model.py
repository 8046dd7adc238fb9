"""Base-model resolution, loading, the converted-GGUF cache and the tiny test model."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from mta.base_model import (
    DEFAULT_TARGET_MODULES,
    SMOLLM2_GGUF,
    converted_gguf_dir,
    linear_shapes,
    load_base_model,
    resolve_base_model,
)
from mta.errors import MtaError, ShapeMismatchError
from mta.tiny import make_tiny_llama


def test_tiny_model_loads_in_eval_mode_with_left_padding(tiny_model: tuple) -> None:
    model, tokenizer = tiny_model
    assert not model.training
    assert tokenizer.pad_token is not None
    assert tokenizer.padding_side == "left"
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("the capital of France")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the capital of France"


def test_second_load_returns_the_cached_objects(tiny_model_dir: Path, tiny_model: tuple) -> None:
    again = load_base_model(str(tiny_model_dir))
    assert again[0] is tiny_model[0]
    assert again[1] is tiny_model[1]


def test_linear_shapes_of_tiny_model(tiny_model: tuple) -> None:
    shapes = linear_shapes(tiny_model[0], DEFAULT_TARGET_MODULES)
    assert len(shapes) == 2 * 7
    assert shapes["model.layers.0.self_attn.q_proj"] == (64, 64)
    assert shapes["model.layers.1.self_attn.k_proj"] == (32, 64)  # 2 kv heads of 16
    assert shapes["model.layers.0.mlp.up_proj"] == (128, 64)
    assert shapes["model.layers.1.mlp.down_proj"] == (64, 128)
    only_q = linear_shapes(tiny_model[0], ["q_proj"])
    assert list(only_q) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]


def test_linear_shapes_rejects_unknown_module(tiny_model: tuple) -> None:
    with pytest.raises(ShapeMismatchError, match="c_attn"):
        linear_shapes(tiny_model[0], ["q_proj", "c_attn"])


def test_resolve_default_alias_finds_the_wheel_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTA_BASE_MODEL", raising=False)
    resolved = Path(resolve_base_model())
    assert resolved.name == SMOLLM2_GGUF
    assert resolved.is_file()
    assert resolve_base_model("SmolLM2") == str(resolved)


def test_resolve_reads_env_then_passes_paths_and_hub_ids(
    monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path
) -> None:
    monkeypatch.setenv("MTA_BASE_MODEL", str(tiny_model_dir))
    assert resolve_base_model() == str(tiny_model_dir.resolve())
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


@pytest.mark.parametrize("spec", ["./no-such-model", "/no/such/dir", "missing.gguf"])
def test_resolve_rejects_missing_paths(spec: str) -> None:
    with pytest.raises(MtaError, match="does not exist"):
        resolve_base_model(spec)


def test_existing_converted_copy_is_reused_without_reading_the_gguf(tmp_path: Path) -> None:
    done = tmp_path / "models" / "smollm2-135m-instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    # The GGUF path does not exist: a cache hit must not touch it.
    assert converted_gguf_dir(tmp_path / SMOLLM2_GGUF, tmp_path) == done


def test_make_tiny_llama_is_deterministic_per_seed(tmp_path: Path) -> None:
    first = make_tiny_llama(tmp_path / "a", seed=3)
    second = make_tiny_llama(tmp_path / "b", seed=3)
    other = make_tiny_llama(tmp_path / "c", seed=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_smollm2_gguf_conversion_is_atomic_and_sweeps_stale_leftovers(tmp_path: Path) -> None:
    gguf = Path(resolve_base_model("smollm2"))
    models = tmp_path / "models"
    models.mkdir()
    stale = models / ".smollm2-135m-instruct.tmp-1-dead"
    fresh = models / ".smollm2-135m-instruct.tmp-2-busy"  # another process converting now
    for leftover in (stale, fresh):
        leftover.mkdir()
        (leftover / "partial").write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))

    out = converted_gguf_dir(gguf, tmp_path)

    assert out == models / "smollm2-135m-instruct"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert "quantization_config" not in (out / "config.json").read_text()
    assert not stale.exists()
    assert fresh.exists()
    assert sorted(p.name for p in models.iterdir()) == [fresh.name, out.name]


@pytest.mark.slow
def test_smollm2_loads_with_thirty_layers_of_targets() -> None:
    model, tokenizer = load_base_model("smollm2")
    shapes = linear_shapes(model, DEFAULT_TARGET_MODULES)
    assert len(shapes) == 30 * 7
    assert shapes["model.layers.29.self_attn.q_proj"] == (576, 576)
    assert shapes["model.layers.0.self_attn.k_proj"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj"] == (576, 1536)
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert not model.training
