"""PEFT folders and storage blobs: round trips through real PEFT, and every refusal."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mta.adapter_blob import adapter_from_bytes, adapter_to_bytes
from mta.errors import AdapterFormatError, ShapeMismatchError
from mta.fusion import compress, fuse
from mta.lora import LoraAdapter, LoraModule
from mta.peft_config import match_pattern
from mta.peft_io import load_peft_adapter, save_peft_adapter, validate_against_shapes
from tests.fixtures_model import fresh_tiny_model, random_adapter

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_deltas(model_dir: Path, adapter_dir: Path) -> dict[str, torch.Tensor]:
    """PEFT's own delta (``get_delta_weight``) of every LoRA layer of a loaded folder."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    peft_model = PeftModel.from_pretrained(fresh_tiny_model(model_dir), adapter_dir)
    inner = peft_model.base_model.model
    return {
        name: module.get_delta_weight("default").float()
        for name, module in inner.named_modules()
        if isinstance(module, LoraLayer)
    }


def assert_deltas_close(ours: LoraAdapter, theirs: dict[str, torch.Tensor], tol=1e-5) -> None:
    assert set(theirs) == set(ours.modules)
    for path, module in ours.modules.items():
        torch.testing.assert_close(theirs[path], module.delta(), rtol=tol, atol=tol)


# --- our folders, loaded by PEFT ------------------------------------------------------------


def test_saved_fusion_loads_in_peft_with_the_same_delta(
    tiny_model_dir, tiny_shapes, tmp_path
) -> None:
    a1 = random_adapter(tiny_shapes, 4, seed=1, scale=2.0)
    a2 = random_adapter(tiny_shapes, 2, seed=2, scale=0.5)
    fused = fuse([a1, a2], [0.7, 0.3])
    folder = save_peft_adapter(fused, tmp_path / "fused", base_model="tiny-llama")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"]) == ("LORA", "CAUSAL_LM")
    assert config["r"] == config["lora_alpha"] == 6
    assert config["base_model_name_or_path"] == "tiny-llama"
    theirs = peft_deltas(tiny_model_dir, folder)
    for path in tiny_shapes:
        expected = 0.7 * a1.modules[path].delta() + 0.3 * a2.modules[path].delta()
        torch.testing.assert_close(theirs[path], expected, rtol=1e-5, atol=1e-5)


def test_per_module_ranks_use_rank_and_alpha_patterns(
    tiny_model_dir, tiny_shapes, tmp_path
) -> None:
    base = random_adapter(tiny_shapes, 5, seed=3, scale=1.5)
    low = compress(base, 2)
    modules = dict(low.modules)
    odd = "model.layers.1.mlp.down_proj"
    modules[odd] = base.modules[odd]  # rank 5, scale 1.5 among rank-2 modules of scale 1
    modules["model.layers.0.self_attn.q_proj"] = compress(base, 3).modules[
        "model.layers.0.self_attn.q_proj"
    ]
    mixed = LoraAdapter(modules=modules)
    folder = save_peft_adapter(mixed, tmp_path / "mixed")
    config = json.loads((folder / "adapter_config.json").read_text())
    # r is the largest rank, so an engine that ignores the patterns still gets a bound.
    assert config["r"] == config["lora_alpha"] == 5
    assert config["rank_pattern"] == {p: r for p, r in mixed.ranks().items() if r != 5}
    assert config["rank_pattern"]["model.layers.0.self_attn.q_proj"] == 3
    assert odd not in config["rank_pattern"]
    assert config["alpha_pattern"] == config["rank_pattern"]
    assert_deltas_close(mixed, peft_deltas(tiny_model_dir, folder))
    back = load_peft_adapter(folder)
    assert back.ranks() == mixed.ranks()
    for path, module in mixed.modules.items():
        torch.testing.assert_close(back.modules[path].delta(), module.delta())


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_folders_load_in_peft(
    tiny_model_dir, tiny_shapes, tmp_path, dtype, tol
) -> None:
    adapter = random_adapter(tiny_shapes, 3, seed=4, scale=4.0)
    folder = save_peft_adapter(adapter, tmp_path / "half", dtype=dtype)
    assert {t.dtype for t in load_file(folder / "adapter_model.safetensors").values()} == {dtype}
    assert_deltas_close(adapter, peft_deltas(tiny_model_dir, folder), tol=tol)


def test_save_refuses_empty_nan_and_overflow(tmp_path) -> None:
    with pytest.raises(AdapterFormatError, match="without modules"):
        save_peft_adapter(LoraAdapter(), tmp_path / "empty")
    nan = LoraModule(A=torch.full((1, 2), math.nan), B=torch.ones(2, 1), scale=1.0)
    with pytest.raises(AdapterFormatError, match="non-finite"):
        save_peft_adapter(LoraAdapter(modules={"m.q_proj": nan}), tmp_path / "nan")
    huge = LoraModule(A=torch.ones(1, 2), B=torch.full((2, 1), 1e5), scale=1.0)
    with pytest.raises(AdapterFormatError, match="does not fit"):
        save_peft_adapter(
            LoraAdapter(modules={"m.q_proj": huge}), tmp_path / "big", dtype=torch.float16
        )
    assert not (tmp_path / "nan" / "adapter_model.safetensors").exists()


# --- PEFT's folders, loaded by us -------------------------------------------------------------


def peft_saved(model_dir: Path, folder: Path, **config_kwargs) -> dict[str, torch.Tensor]:
    """Save a randomly initialized PEFT LoRA (non-zero B) and return PEFT's deltas."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    torch.manual_seed(0)
    config = LoraConfig(target_modules=TARGETS, init_lora_weights=False, **config_kwargs)
    peft_model = get_peft_model(fresh_tiny_model(model_dir), config)
    peft_model.save_pretrained(folder)
    return {
        name.removeprefix("base_model.model."): module.get_delta_weight("default").float()
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


@pytest.mark.parametrize(
    "config",
    [
        {"r": 4, "lora_alpha": 16},
        {"r": 4, "lora_alpha": 16, "use_rslora": True},
        {
            "r": 4,
            "lora_alpha": 8,
            "rank_pattern": {"q_proj": 2, "model.layers.1.mlp.down_proj": 6},
            "alpha_pattern": {"v_proj": 3, r"layers\.0\..*up_proj": 5},
        },
        {"r": 8, "lora_alpha": 4, "use_rslora": True, "rank_pattern": {"k_proj": 3}},
    ],
    ids=["plain", "rslora", "patterns", "rslora-patterns"],
)
def test_peft_folders_load_with_peft_scales(tiny_model_dir, tmp_path, config) -> None:
    theirs = peft_saved(tiny_model_dir, tmp_path / "peft", **config)
    ours = load_peft_adapter(tmp_path / "peft")
    assert_deltas_close(ours, theirs)


def test_pattern_matching_follows_peft() -> None:
    from peft.utils.other import get_pattern_key

    pattern = {"q_proj": 1, "layers.1.self_attn.k_proj": 2, r"layers\.\d+\.mlp\..*": 3}
    names = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.self_attn.k_proj",
        "model.layers.11.self_attn.k_proj",
        "model.layers.3.mlp.up_proj",
        "model.layers.0.self_attn.xq_proj",
    ]
    for name in names:
        peft_key = get_pattern_key(pattern.keys(), name)
        assert match_pattern(pattern, name) == (peft_key if peft_key in pattern else None)


def test_adapter_name_and_prefixless_keys_load(tmp_path) -> None:
    adapter = random_adapter({"model.layers.0.self_attn.q_proj": (8, 6)}, 2, seed=5, scale=0.25)
    folder = save_peft_adapter(adapter, tmp_path / "named")
    tensors = load_file(folder / "adapter_model.safetensors")
    renamed = {
        key.removeprefix("base_model.model.").replace(".weight", ".default.weight"): value
        for key, value in tensors.items()
    }
    save_file(renamed, folder / "adapter_model.safetensors")
    back = load_peft_adapter(folder)
    torch.testing.assert_close(
        back.modules["model.layers.0.self_attn.q_proj"].delta(),
        adapter.modules["model.layers.0.self_attn.q_proj"].delta(),
    )


# --- refusals ------------------------------------------------------------------------------------


@pytest.fixture
def good_folder(tmp_path) -> Path:
    """A valid two-module adapter folder that each refusal test breaks in one way."""
    shapes = {"model.layers.0.self_attn.q_proj": (8, 6), "model.layers.0.mlp.down_proj": (6, 10)}
    return save_peft_adapter(random_adapter(shapes, 2, seed=6, scale=2.0), tmp_path / "good")


def edit_tensors(folder: Path, change) -> None:
    tensors = load_file(folder / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, folder / "adapter_model.safetensors")


def edit_config(folder: Path, **updates) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **updates}))


Q_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
Q_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def test_pickle_bin_is_refused_and_never_loaded(good_folder) -> None:
    (good_folder / "adapter_model.safetensors").unlink()
    # Not even a valid pickle: the message must come from the file name, not from loading it.
    (good_folder / "adapter_model.bin").write_bytes(b"\x80\x04 this would run code")
    with pytest.raises(AdapterFormatError, match=r"adapter_model\.bin \(pickle\)"):
        load_peft_adapter(good_folder)


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (lambda f: (f / "adapter_config.json").unlink(), "no adapter_config.json"),
        (lambda f: (f / "adapter_config.json").write_text("{not json"), "not valid JSON"),
        (lambda f: (f / "adapter_config.json").write_text("[1, 2]"), "expected a JSON object"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), "no adapter_model.safetensors"),
        (lambda f: (f / "adapter_model.safetensors").write_bytes(b"garbage"), "unreadable"),
        (lambda f: edit_config(f, use_dora=True), "DoRA"),
        (lambda f: edit_config(f, bias="all"), "bias='all'"),
        (lambda f: edit_config(f, modules_to_save=["lm_head"]), "modules_to_save"),
        (lambda f: edit_config(f, peft_type="IA3"), "peft_type 'IA3'"),
        (lambda f: edit_config(f, r=0), "r must be a positive number"),
        (lambda f: edit_config(f, lora_alpha="sixteen"), "lora_alpha must be"),
        (lambda f: edit_config(f, r=3, lora_alpha=3), "rank 2 but the config gives r=3"),
        (lambda f: edit_config(f, rank_pattern={"(": 2}), "invalid pattern key"),
        (lambda f: edit_tensors(f, lambda t: t.pop(Q_B)), "q_proj has no lora_B"),
        (lambda f: edit_tensors(f, lambda t: t.__setitem__(Q_B, torch.ones(8, 3))), "ranks differ"),
        (lambda f: edit_tensors(f, lambda t: t.__setitem__(Q_A, t[Q_A] * math.nan)), "non-finite"),
        (
            lambda f: edit_tensors(f, lambda t: t.__setitem__(Q_A, t[Q_A].to(torch.int32))),
            "dtype torch.int32",
        ),
        (
            lambda f: edit_tensors(
                f,
                lambda t: t.__setitem__("base_model.model.embed.lora_embedding_A", t[Q_A].clone()),
            ),
            "embedding LoRA",
        ),
        (
            lambda f: edit_tensors(
                f, lambda t: t.__setitem__("base_model.model.lm_head.weight", t[Q_A].clone())
            ),
            "unexpected tensor",
        ),
        (
            lambda f: edit_tensors(f, lambda t: t.__setitem__(Q_A, t[Q_A][None])),
            "only Linear LoRA",
        ),
    ],
)
def test_broken_folders_are_refused_with_one_line(good_folder, breaks, message) -> None:
    breaks(good_folder)
    with pytest.raises(AdapterFormatError, match=message) as info:
        load_peft_adapter(good_folder)
    assert "\n" not in str(info.value)


def test_several_adapter_names_are_refused(good_folder) -> None:
    def two_names(tensors):
        for key in list(tensors):
            tensors[key.replace(".weight", ".one.weight")] = tensors[key].clone()
            tensors[key.replace(".weight", ".two.weight")] = tensors.pop(key)

    edit_tensors(good_folder, two_names)
    with pytest.raises(AdapterFormatError, match="several adapters"):
        load_peft_adapter(good_folder)


def test_missing_folder_is_refused(tmp_path) -> None:
    with pytest.raises(AdapterFormatError, match="no such adapter folder"):
        load_peft_adapter(tmp_path / "nope")


def test_folder_round_trip_is_exact_in_fp32(good_folder, tmp_path) -> None:
    adapter = load_peft_adapter(good_folder)
    again = load_peft_adapter(save_peft_adapter(adapter, tmp_path / "again"))
    for path, module in adapter.modules.items():
        assert torch.equal(again.modules[path].A, module.A)
        assert torch.equal(
            again.modules[path].B * again.modules[path].scale, module.B * module.scale
        )
    shutil.rmtree(tmp_path / "again")


# --- blobs ---------------------------------------------------------------------------------------


def test_bytes_round_trip_fp32_is_exact_and_deterministic() -> None:
    adapter = random_adapter({"a.q_proj": (6, 4), "a.v_proj": (3, 4)}, 2, seed=7, scale=0.3)
    adapter = LoraAdapter(modules=adapter.modules, base_model="tiny")
    blob = adapter_to_bytes(adapter, dtype=torch.float32)
    assert adapter_to_bytes(adapter, dtype=torch.float32) == blob
    back = adapter_from_bytes(blob)
    assert back.base_model == "tiny"
    for path, module in adapter.modules.items():
        assert torch.equal(back.modules[path].A, module.A)
        assert torch.equal(back.modules[path].B, module.B)
        assert back.modules[path].scale == module.scale


def test_bytes_fp16_rounds_only_the_factors() -> None:
    adapter = random_adapter({"a.q_proj": (6, 4)}, 3, seed=8, scale=1 / 3)
    blob = adapter_to_bytes(adapter)
    back = adapter_from_bytes(blob)
    module, stored = adapter.modules["a.q_proj"], back.modules["a.q_proj"]
    assert stored.A.dtype == torch.float16
    assert stored.scale == 1 / 3  # exactly: the scale is metadata, not folded into B
    assert torch.equal(stored.B, module.B.half())
    torch.testing.assert_close(stored.delta(), module.delta(), rtol=2e-3, atol=2e-3)
    assert len(blob) < len(adapter_to_bytes(adapter, dtype=torch.float32))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "truncated"),
        (b"\xff" * 16, "truncated"),
        ((7).to_bytes(8, "little") + b"{oops}!", "not valid JSON"),
    ],
)
def test_garbled_blobs_are_refused(blob: bytes, message: str) -> None:
    with pytest.raises(AdapterFormatError, match=message):
        adapter_from_bytes(blob)


def test_foreign_and_future_blobs_are_refused() -> None:
    from safetensors.torch import save

    plain = save({"x": torch.ones(2)})
    with pytest.raises(AdapterFormatError, match="not an mta-lora blob"):
        adapter_from_bytes(plain)
    meta = {"format": "mta-lora", "version": 99, "scales": {"m": 1.0}}
    future = save({"m.lora_A": torch.ones(1, 2)}, metadata={"mta": json.dumps(meta)})
    with pytest.raises(AdapterFormatError, match="version 99"):
        adapter_from_bytes(future)
    meta["version"] = 1
    missing = save({"m.lora_A": torch.ones(1, 2)}, metadata={"mta": json.dumps(meta)})
    with pytest.raises(AdapterFormatError, match="do not match"):
        adapter_from_bytes(missing)


def test_bytes_refuse_non_finite_and_overflow() -> None:
    nan = LoraModule(A=torch.full((1, 2), math.nan), B=torch.ones(2, 1), scale=1.0)
    with pytest.raises(AdapterFormatError, match="non-finite"):
        adapter_to_bytes(LoraAdapter(modules={"m": nan}))
    big = LoraModule(A=torch.ones(1, 2), B=torch.full((2, 1), 7e4), scale=1.0)
    with pytest.raises(AdapterFormatError, match="does not fit"):
        adapter_to_bytes(LoraAdapter(modules={"m": big}))


# --- shape validation -------------------------------------------------------------------------


def test_validate_against_shapes(tiny_shapes) -> None:
    adapter = random_adapter(tiny_shapes, 2, seed=9)
    validate_against_shapes(adapter, tiny_shapes)
    wrong = dict(tiny_shapes)
    wrong["model.layers.0.self_attn.q_proj"] = (1, 1)
    with pytest.raises(ShapeMismatchError, match=r"q_proj is \(out, in\)"):
        validate_against_shapes(adapter, wrong)
    fewer = {k: v for k, v in tiny_shapes.items() if not k.endswith("down_proj")}
    with pytest.raises(ShapeMismatchError, match=r"not a linear module .*\(and 1 more\)"):
        validate_against_shapes(adapter, fewer)
