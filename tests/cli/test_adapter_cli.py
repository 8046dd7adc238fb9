"""`mta adapter fuse|inspect`: PEFT folders in and out, exit codes for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mta.peft_io import load_peft_adapter, save_peft_adapter
from tests.fixtures_model import fresh_tiny_model, random_adapter
from tests.support import run_subprocess

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture
def anchors(tmp_path: Path, tiny_shapes) -> list[Path]:
    """Two rank-4 anchor folders with different scales."""
    return [
        save_peft_adapter(random_adapter(tiny_shapes, 4, seed=1, scale=2.0), tmp_path / "a1"),
        save_peft_adapter(random_adapter(tiny_shapes, 4, seed=2, scale=0.5), tmp_path / "a2"),
    ]


def leftovers(parent: Path) -> list[str]:
    """Temp folders a failed or finished write left behind."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_fuse_writes_a_folder_peft_loads_with_the_exact_delta(
    mta, anchors, tmp_path, tiny_model_dir
) -> None:
    from peft import PeftModel

    out = tmp_path / "fused"
    result = mta("adapter", "fuse", *anchors, "--weights", "0.6,0.4", "--out", out, "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["method"] == "cat" and summary["rank"] == 8
    assert summary["weights"] == [0.6, 0.4]
    assert summary["bytes"] == sum(p.stat().st_size for p in out.iterdir())
    recipe = json.loads((out / "mta_fusion.json").read_text())
    assert recipe["anchors"] == [str(a) for a in anchors] and recipe["method"] == "cat"

    first, second = (load_peft_adapter(a) for a in anchors)
    peft_model = PeftModel.from_pretrained(fresh_tiny_model(tiny_model_dir), out)
    inner = peft_model.base_model.model
    for path in first.modules:
        theirs = inner.get_submodule(path).get_delta_weight("default")
        expected = 0.6 * first.modules[path].delta() + 0.4 * second.modules[path].delta()
        torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "rank"),
    [(["--method", "svd", "--rank", "3"], 3), (["--method", "factorwise"], 4)],
)
def test_fuse_other_methods(mta, anchors, tmp_path, args, rank) -> None:
    out = tmp_path / "fused"
    result = mta("adapter", "fuse", *anchors, "--out", out, "--json", *args)
    assert result.code == 0, result.stderr
    assert result.json()["rank"] == rank
    assert set(load_peft_adapter(out).ranks().values()) == {rank}


def test_fuse_defaults_to_uniform_weights_and_stores_the_dtype(mta, anchors, tmp_path) -> None:
    out = tmp_path / "half"
    result = mta("adapter", "fuse", *anchors, "--out", out, "--dtype", "fp16", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["weights"] == [0.5, 0.5]
    tensors = load_file(out / "adapter_model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float16}


def test_fuse_refuses_a_non_empty_out_unless_forced(mta, anchors, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = mta("adapter", "fuse", *anchors, "--out", out)
    assert result.code == 1
    assert result.error_lines() == [f"Error: --out {out} is not empty; pass --force to replace it"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    result = mta("adapter", "fuse", *anchors, "--out", out, "--force")
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "mta_fusion.json",
    ]
    assert leftovers(tmp_path) == []


def test_fuse_into_an_existing_empty_folder(mta, anchors, tmp_path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    assert mta("adapter", "fuse", *anchors, "--out", out).code == 0
    assert (out / "adapter_model.safetensors").is_file()


def pickle_only(folder: Path) -> Path:
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04not loaded")
    return folder


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda a, t: [*a, "--weights", "0.6"], "got 1 weights for 2 adapters"),
        (lambda a, t: [*a, "--weights", "0.6,x"], "invalid --weights '0.6,x'"),
        (lambda a, t: [*a, "--weights", "0,0"], "weights are all zero"),
        (lambda a, t: [*a, "--method", "ties"], "unknown fusion method 'ties'; valid:"),
        (lambda a, t: [*a, "--rank", "2"], "--rank applies to --method svd only"),
        (lambda a, t: [*a, "--dtype", "int8"], "unknown dtype 'int8'"),
        (lambda a, t: [a[0], t / "missing"], "no such adapter folder"),
        (lambda a, t: [a[0], pickle_only(a[1])], "adapter_model.bin (pickle)"),
    ],
    ids=["count", "parse", "zeros", "method", "rank", "dtype", "missing", "pickle"],
)
def test_bad_input_is_one_error_line_and_writes_nothing(
    mta, anchors, tmp_path, make_args, message
) -> None:
    out = tmp_path / "out"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = mta("adapter", "fuse", *make_args(anchors, tmp_path), "--out", out)
    assert result.code == 1
    assert len(result.error_lines()) == 1, result.stderr
    assert message in result.error_lines()[0]
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_anchors_of_different_models_are_refused(mta, anchors, tmp_path) -> None:
    other = {"model.layers.0.self_attn.q_proj": (3, 5)}
    odd = save_peft_adapter(random_adapter(other, 4, seed=3), tmp_path / "odd")
    result = mta("adapter", "fuse", anchors[0], odd, "--out", tmp_path / "out")
    assert result.code == 1
    assert "q_proj: adapter 1 is (out, in)" in result.error_lines()[0]
    assert not (tmp_path / "out").exists()


def test_missing_out_is_a_usage_error(mta, anchors) -> None:
    assert mta("adapter", "fuse", *anchors).code == 2


def test_inspect_summary_and_modules(mta, anchors, tiny_shapes) -> None:
    result = mta("adapter", "inspect", anchors[0], "--json")
    assert result.code == 0, result.stderr
    info = result.json()
    assert info["modules"] == len(tiny_shapes)
    assert info["rank"] == 4 and info["ranks"] == [4] and info["scales"] == [1.0]
    assert info["target_modules"] == sorted(TARGETS)
    assert info["params"] == sum(4 * (i + o) for o, i in tiny_shapes.values())
    assert info["bytes"] == sum(p.stat().st_size for p in anchors[0].iterdir())

    rows = mta("adapter", "inspect", anchors[0], "--modules", "--json").json()
    assert {row["module"] for row in rows} == set(tiny_shapes)
    assert all(row["rank"] == 4 and row["dtype"] == "float32" for row in rows)


def test_inspect_garbled_folder(mta, anchors) -> None:
    (anchors[0] / "adapter_config.json").write_text("{")
    result = mta("adapter", "inspect", anchors[0])
    assert result.code == 1
    assert "not valid JSON" in result.error_lines()[0]


def test_the_installed_command_end_to_end(anchors, tmp_path) -> None:
    out = tmp_path / "fused"
    ok = run_subprocess(["adapter", "fuse", *anchors, "-w", "0.6,0.4", "-o", out, "--json"], {})
    assert ok.code == 0, ok.stderr
    assert ok.json()["modules"] == len(load_peft_adapter(out).modules)
    bad = run_subprocess(["adapter", "fuse", *anchors, "-w", "1", "-o", tmp_path / "x"], {})
    assert bad.code == 1
    assert bad.error_lines() == ["Error: got 1 weights for 2 adapters; need one each"]
    assert "Traceback" not in bad.stderr
