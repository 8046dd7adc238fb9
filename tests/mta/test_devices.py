"""Devices: one spelling, a clear error for a missing GPU, and an exact frozen branch in bf16."""

from __future__ import annotations

import pytest
import torch

from mta import devices
from mta.devices import DeviceError, model_dtype, resolve_device
from mta.training import TrainConfig, _branch_hooks, train_lora
from tests.fixtures_model import fresh_tiny_model, random_adapter


def test_device_specs_resolve_or_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device() == resolve_device("auto") == resolve_device("cpu") == "cpu"
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="torch sees no CUDA device here"):
            resolve_device(spec)
    for spec in ("gpu", "cuda:x", "CPU", "cuda:"):
        with pytest.raises(DeviceError, match="valid: auto, cpu, cuda, cuda:N"):
            resolve_device(spec)
    monkeypatch.setenv(devices.DEVICE_ENV, "tpu")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda:0" and resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="sees 2 CUDA device"):
        resolve_device("cuda:2")
    assert model_dtype("cuda:0") == torch.bfloat16 and model_dtype("cpu") == torch.float32


def test_the_unmerged_frozen_branch_equals_the_merge(tiny_model_dir, tiny_shapes) -> None:
    from mta.inference import apply_adapter

    model = fresh_tiny_model(tiny_model_dir)
    frozen = random_adapter(tiny_shapes, rank=4, seed=3)
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad(), apply_adapter(model, frozen):
        merged = model(input_ids=ids).logits
    branches = {p: (m.A.float(), m.B.float(), m.scale) for p, m in frozen.modules.items()}
    with torch.no_grad(), _branch_hooks(model, branches):
        unmerged = model(input_ids=ids).logits
    torch.testing.assert_close(unmerged, merged, rtol=1e-5, atol=1e-5)


def test_a_bf16_model_trains_a_stack_on_an_unmerged_frozen_adapter(
    tiny_model_dir, tiny_shapes
) -> None:
    from transformers import AutoTokenizer

    model = fresh_tiny_model(tiny_model_dir).to(torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = random_adapter(tiny_shapes, rank=4, seed=3)
    examples = [("Tag: a heist. Answer:", " crime"), ("Tag: a ghost. Answer:", " horror")]
    config = TrainConfig(rank=1, epochs=1, lr=1e-3, max_steps=1)
    stack, losses = train_lora(model, tokenizer, examples, config, frozen=frozen, progress=False)
    assert len(losses) == 1 and all(m.A.dtype == torch.float32 for m in stack.modules.values())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # never merged into bf16
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())
