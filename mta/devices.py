"""Which device a model runs on, and in which precision.

`--device auto|cpu|cuda|cuda:N` (env `MTA_DEVICE`, default `auto`: the first CUDA device
when torch sees one). On CUDA the base model runs in bf16; on the CPU in fp32, so CPU
results stay bit-identical to what they always were. Trained factors are fp32 on every
device and stored as the request says (fp16 by default), so a stack trained on a GPU
exports and serves like one trained on a CPU.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from mta.errors import MtaError

if TYPE_CHECKING:
    import torch

DEVICE_ENV = "MTA_DEVICE"
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d{1,3})?)$")


class DeviceError(MtaError, ValueError):
    """A device that is misspelled or not present on this machine."""


def check_device_spec(spec: str) -> str:
    """`spec` if it is spelled right (auto, cpu, cuda, cuda:N), else DeviceError."""
    if not _SPEC.match(spec):
        raise DeviceError(f"unknown device {spec!r}; valid: auto, cpu, cuda, cuda:N")
    return spec


def resolve_device(spec: str | None = None) -> str:
    """The torch device name to run on: `spec`, else `MTA_DEVICE`, else "auto".

    Raises:
        DeviceError: a misspelled device, or a CUDA device torch cannot see.
    """
    import torch

    chosen = check_device_spec((spec or os.environ.get(DEVICE_ENV) or "auto").strip())
    if chosen == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if chosen == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(f"device {chosen!r} asked for, but torch sees no CUDA device here")
    index = int(chosen.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise DeviceError(f"device {chosen!r} asked for, but torch sees {count} CUDA device(s)")
    return f"cuda:{index}"


def model_dtype(device: str) -> torch.dtype:
    """The base model's weight dtype on `device`: bf16 on CUDA, fp32 on the CPU."""
    import torch

    return torch.bfloat16 if device.startswith("cuda") else torch.float32
