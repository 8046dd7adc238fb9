"""Storage formats of a stack's factors: float casts, int8 with per-component scales, NF4.

A stack is the only thing that grows with users, so its bytes matter. Besides the float
formats (`fp16`, `bf16`, `fp32`: a plain cast), two quantized formats store each factor
with scales next to it in the same safetensors blob:

- `int8`: symmetric int8, one fp32 scale per rank component (each row of A, each column
  of B: the long vectors a rank-1 stack is made of), scale = absmax / 127.
- `nf4`: 4-bit NormalFloat (QLoRA's 16 levels, quantiles of a unit normal), one fp16
  absmax per block of `NF4_BLOCK` consecutive values, two codes per byte.

`encode` returns the tensors to store for one factor; `decode` rebuilds the fp32 factor
from them and refuses non-finite or negative scales and out-of-range codes, so a damaged
or foreign blob fails loudly instead of serving wrong weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mta.errors import AdapterFormatError, unknown_name

if TYPE_CHECKING:
    import torch

FLOAT_FORMATS = ("fp16", "bf16", "fp32")
QUANTIZED_FORMATS = ("int8", "nf4")
STACK_FORMATS = FLOAT_FORMATS + QUANTIZED_FORMATS
# What `mta user adapt`, the HTTP adapt route and `mta eval` store when not told: the
# smallest format measured not to lose quality (docs/results.md, "Bytes per user").
DEFAULT_STACK_FORMAT = "int8"
NF4_BLOCK = 64
# QLoRA's NF4 levels (Dettmers et al. 2023, appendix E): normal quantiles scaled to [-1, 1].
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip


def check_format(name: str) -> str:
    """`name` if it is a stack format, else UnknownNameError listing the valid ones."""
    if name not in STACK_FORMATS:
        raise unknown_name("stack format", name, STACK_FORMATS)
    return name


def encode(factor: torch.Tensor, fmt: str, *, component_dim: int) -> dict[str, torch.Tensor]:
    """The tensors that store `factor` in quantized format `fmt` (suffix -> tensor).

    Args:
        factor: A (r x in) or B (out x r), finite.
        fmt: "int8" or "nf4".
        component_dim: the dimension that indexes rank components (0 for A, 1 for B);
            int8 keeps one scale per component.
    """
    import torch

    values = factor.detach().float()
    if fmt == "int8":
        absmax = values.abs().amax(dim=1 - component_dim, keepdim=True)
        scale = absmax / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.clamp(torch.round(values / safe), -127, 127).to(torch.int8)
        return {"q": codes.contiguous(), "scale": scale.flatten().contiguous()}
    if fmt == "nf4":
        flat = values.flatten()
        pad = (-flat.numel()) % NF4_BLOCK
        blocks = torch.cat([flat, flat.new_zeros(pad)]).view(-1, NF4_BLOCK)
        stored = blocks.abs().amax(dim=1, keepdim=True).half()
        scale = stored.float()  # the block scale decode will see
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        levels = torch.tensor(NF4_LEVELS)
        codes = (blocks / safe).unsqueeze(-1).sub(levels).abs().argmin(dim=-1).flatten()
        packed = (codes[0::2] | (codes[1::2] << 4)).to(torch.uint8)
        return {"q": packed.contiguous(), "scale": stored.flatten().contiguous()}
    raise unknown_name("quantized stack format", fmt, QUANTIZED_FORMATS)


def part_sizes(fmt: str, shape: tuple[int, int], *, component_dim: int) -> tuple[int, int]:
    """(codes, scales) element counts `encode` stores for a factor of `shape` in `fmt`."""
    count = shape[0] * shape[1]
    if fmt == "int8":
        return count, shape[component_dim]
    if fmt == "nf4":
        blocks = -(-count // NF4_BLOCK)
        return blocks * NF4_BLOCK // 2, blocks
    raise AdapterFormatError(f"unknown stack format {fmt!r} in the blob")


def decode(
    parts: dict[str, torch.Tensor], fmt: str, shape: tuple[int, int], *, component_dim: int
) -> torch.Tensor:
    """The fp32 factor of `shape` stored as `parts` in format `fmt`.

    Raises:
        AdapterFormatError: wrong tensor types or sizes, non-finite or negative scales.
    """
    import torch

    codes, scale = parts.get("q"), parts.get("scale")
    if codes is None or scale is None:
        raise AdapterFormatError(f"{fmt} factor lacks its codes or scales")
    scale = scale.float()
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise AdapterFormatError(f"{fmt} factor has non-finite or negative scales")
    rows, cols = shape
    if fmt == "int8":
        components = shape[component_dim]
        if codes.dtype != torch.int8 or tuple(codes.shape) != shape or scale.numel() != components:
            raise AdapterFormatError(f"int8 factor does not match its shape {shape}")
        view = (-1, 1) if component_dim == 0 else (1, -1)
        return codes.float() * scale.view(view)
    if fmt == "nf4":
        count = rows * cols
        blocks = -(-count // NF4_BLOCK)
        if codes.dtype != torch.uint8 or codes.numel() != blocks * NF4_BLOCK // 2:
            raise AdapterFormatError(f"nf4 factor does not match its shape {shape}")
        if scale.numel() != blocks:
            raise AdapterFormatError(f"nf4 factor has {scale.numel()} block scales, not {blocks}")
        low, high = (codes & 0x0F).long(), (codes >> 4).long()
        indices = torch.stack([low, high], dim=1).flatten()
        levels = torch.tensor(NF4_LEVELS)[indices].view(-1, NF4_BLOCK)
        return (levels * scale.view(-1, 1)).flatten()[:count].view(rows, cols)
    raise AdapterFormatError(f"unknown stack format {fmt!r} in the blob")
