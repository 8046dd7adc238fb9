"""The packed layout of a quantized stack blob: every factor's codes in one tensor.

A rank-1 stack over SmolLM2's 210 modules has 840 small tensors when each factor keeps its
codes and scales apart, and safetensors spends ~100 bytes of JSON header on each: 104 kB
of a 267 kB NF4 blob. Packed, the blob holds two tensors (`q`: every factor's codes in
module path order, A then B; `scale`: their scales in the same order) and one module list
(path, rank, in, out, LoRA scale) from which every factor's offsets follow
(`stack_formats.part_sizes`). Factors are quantized exactly as in the per-factor layout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mta.errors import AdapterFormatError

if TYPE_CHECKING:
    import torch

    from mta.lora import LoraAdapter


def pack(adapter: LoraAdapter, fmt: str) -> tuple[dict[str, torch.Tensor], list[list[Any]]]:
    """The two tensors of the packed blob and its module list [[path, r, in, out, scale]]."""
    import torch

    from mta.peft_io import cast_finite
    from mta.stack_formats import encode

    codes: list[torch.Tensor] = []
    scales: list[torch.Tensor] = []
    modules: list[list[Any]] = []
    # Sorted paths: the bytes must not depend on the order a dict of modules was built in.
    for path in sorted(adapter.modules):
        module = adapter.modules[path]
        for name, factor, dim in (("A", module.A, 0), ("B", module.B, 1)):
            # Quantized from the fp16 factor, so re-storing an fp16 stack in `fmt` gives
            # the bytes training straight into `fmt` would have stored.
            rounded = cast_finite(factor, torch.float16, f"{path} {name}")
            parts = encode(rounded, fmt, component_dim=dim)
            codes.append(parts["q"].flatten())
            scales.append(parts["scale"].flatten())
        # repr() of a float round-trips exactly through JSON.
        modules.append([path, module.r, module.in_features, module.out_features, module.scale])
    tensors = {"q": torch.cat(codes).contiguous(), "scale": torch.cat(scales).contiguous()}
    return tensors, modules


def unpack(
    tensors: dict[str, torch.Tensor], fmt: str, modules: Any
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(module scales, fp32 factors by `<path>.lora_A|B`) of a packed blob's tensors.

    Raises:
        AdapterFormatError: a malformed module list, other tensors than `q` and `scale`,
            or codes and scales that do not add up to the listed shapes.
    """
    from mta.stack_formats import decode, part_sizes

    if set(tensors) != {"q", "scale"}:
        raise AdapterFormatError("packed stack blob: expected tensors q and scale only")
    codes, scale = tensors["q"].flatten(), tensors["scale"].flatten()
    scales: dict[str, float] = {}
    factors: dict[str, torch.Tensor] = {}
    at_code = at_scale = 0
    for path, rank, in_features, out_features, lora_scale in _module_list(modules):
        scales[path] = lora_scale
        for name, dims, dim in (("A", (rank, in_features), 0), ("B", (out_features, rank), 1)):
            n_codes, n_scales = part_sizes(fmt, dims, component_dim=dim)
            if at_code + n_codes > codes.numel() or at_scale + n_scales > scale.numel():
                raise AdapterFormatError("packed stack blob: codes or scales end too early")
            part_codes = codes[at_code : at_code + n_codes]
            parts = {
                "q": part_codes.view(dims) if fmt == "int8" else part_codes,
                "scale": scale[at_scale : at_scale + n_scales],
            }
            factors[f"{path}.lora_{name}"] = decode(parts, fmt, dims, component_dim=dim)
            at_code, at_scale = at_code + n_codes, at_scale + n_scales
    if at_code != codes.numel() or at_scale != scale.numel():
        raise AdapterFormatError("packed stack blob: more codes or scales than its modules hold")
    return scales, factors


def _module_list(modules: Any) -> list[tuple[str, int, int, int, float]]:
    """The blob's module list, checked: [path, rank, in, out, scale] per module, no repeats."""
    if not isinstance(modules, list) or not modules:
        raise AdapterFormatError("packed stack blob: no module list")
    out = []
    for row in modules:
        if not (
            isinstance(row, list)
            and len(row) == 5
            and isinstance(row[0], str)
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in row[1:4])
            and isinstance(row[4], (int, float))
            and not isinstance(row[4], bool)
        ):
            raise AdapterFormatError(f"packed stack blob: bad module entry {str(row)[:80]}")
        out.append((row[0], row[1], row[2], row[3], float(row[4])))
    if len({row[0] for row in out}) != len(out):
        raise AdapterFormatError("packed stack blob: a module is listed twice")
    return out
