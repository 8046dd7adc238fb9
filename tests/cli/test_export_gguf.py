"""`mta user export --format gguf`: the PEFT folder plus a llama.cpp LoRA of the same deltas."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mta.peft_io import load_peft_adapter
from tests.support import TASK, CliEnv, Mta, assert_rejected


def test_export_gguf_writes_the_same_deltas_in_llama_cpp_layout(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path
) -> None:
    from gguf import GGUFReader

    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    assert mta("user", "adapt", "alice", "--shots", "2", "--max-steps", "1").code == 0
    out = cli_env.root / "alice-out"
    result = mta("user", "export", "alice", "--out", out, "--format", "gguf", "--json")
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    gguf = Path(record["gguf"])
    assert gguf == out / "adapter_model.gguf" and gguf.stat().st_mode & 0o777 == 0o644
    reader = GGUFReader(gguf)
    fields = {name: field for name, field in reader.fields.items()}
    assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
    peft = load_peft_adapter(out)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * len(peft.modules)
    # One module without RoPE reordering: v_proj of layer 0 is the PEFT delta exactly.
    path = "model.layers.0.self_attn.v_proj"
    a = torch.from_numpy(tensors["blk.0.attn_v.weight.lora_a"].data.copy()).float()
    b = torch.from_numpy(tensors["blk.0.attn_v.weight.lora_b"].data.copy()).float()
    alpha = float(fields["adapter.lora.alpha"].parts[-1][0])
    delta = (alpha / a.shape[0]) * b @ a
    torch.testing.assert_close(delta, peft.modules[path].delta(), rtol=1e-5, atol=1e-6)


def test_export_format_and_dtype_are_checked(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path
) -> None:
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    assert mta("user", "fuse", "alice").code == 0
    out = str(cli_env.root / "o")
    export = ["user", "export", "alice", "--out", out]
    assert_rejected(cli_env, mta, *export, "--format", "onnx", code=2)
    result = assert_rejected(cli_env, mta, *export, "--format", "gguf", "--dtype", "bf16")
    assert "fp32 or fp16" in result.error_lines()[0]
