"""Adapters as one content-addressed blob: a deterministic safetensors file with our metadata.

The blob store keeps bank anchors and user stacks in this format (`adapter_to_bytes` /
`adapter_from_bytes`): the factors as tensors, each module's scale exactly in the
metadata, and, for a quantized stack (`mta.stack_formats`), codes and scales per factor.
PEFT folders for engines are `mta.peft_io`'s job.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from mta.dtypes import torch_dtype
from mta.errors import AdapterFormatError
from mta.lora import LoraAdapter, LoraModule, one_thread
from mta.peft_io import cast_finite, make_module

BLOB_FORMAT = "mta-lora"
BLOB_FORMAT_VERSION = 1  # float factors, one tensor each
PACKED_VERSION = 2  # a quantized stack in the packed layout (`mta.packed_stack`)
# Version 1 quantized blobs (codes and scales per factor) written before #23 still read.
READABLE_VERSIONS = (BLOB_FORMAT_VERSION, PACKED_VERSION)


def adapter_to_bytes(adapter: LoraAdapter, *, dtype: torch.dtype | str = "fp16") -> bytes:
    """Serialize ``adapter`` to one deterministic safetensors blob for the blob store.

    Args:
        adapter: The adapter; at least one module, finite values.
        dtype: How the factors are stored: a torch dtype or a stack format name
            (`mta.stack_formats`: "fp16" default, "bf16", "fp32", or quantized "int8",
            "nf4"). Scales are kept exactly in the metadata, so rounding touches only
            the factors; a quantized format is written in the packed layout
            (`mta.packed_stack`), its own scales beside its codes.

    Returns:
        The blob bytes; equal adapters give equal bytes.

    Raises:
        AdapterFormatError: empty adapter, NaN/inf, or values overflowing ``dtype``.
        UnknownNameError: an unknown format name.
    """
    from safetensors.torch import save

    from mta.stack_formats import NF4_BLOCK, QUANTIZED_FORMATS, check_format

    if not adapter.modules:
        raise AdapterFormatError("cannot serialize an adapter without modules")
    adapter.check_finite()
    fmt = check_format(dtype) if isinstance(dtype, str) else None
    meta: dict[str, Any] = {"format": BLOB_FORMAT, "base_model": adapter.base_model}
    with one_thread():
        if fmt in QUANTIZED_FORMATS:
            from mta.packed_stack import pack

            tensors, modules = pack(adapter, fmt)
            block = NF4_BLOCK if fmt == "nf4" else None
            meta["version"] = PACKED_VERSION
            meta["quantized"] = {"format": fmt, "block": block, "modules": modules}
        else:
            cast = torch_dtype(fmt) if fmt is not None else dtype
            tensors = {
                f"{path}.lora_{name}": cast_finite(factor, cast, f"{path} {name}")
                for path, module in adapter.modules.items()
                for name, factor in (("A", module.A), ("B", module.B))
            }
            meta["version"] = BLOB_FORMAT_VERSION
            # repr() of a float round-trips exactly through JSON.
            meta["scales"] = {path: module.scale for path, module in adapter.modules.items()}
    return save(tensors, metadata={"mta": json.dumps(meta, sort_keys=True)})


def blob_format(data: bytes) -> str:
    """The storage format of an adapter blob: a quantized format's name, or its float dtype."""
    header = _blob_header(data)
    quantized = _blob_meta(header).get("quantized")
    if isinstance(quantized, dict):
        return str(quantized.get("format"))
    dtypes = {v.get("dtype") for k, v in header.items() if k != "__metadata__"}
    names = {"F16": "fp16", "BF16": "bf16", "F32": "fp32"}
    return names.get(next(iter(dtypes)), "mixed") if len(dtypes) == 1 else "mixed"


def _blob_header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise AdapterFormatError("adapter blob is truncated (shorter than its header length)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise AdapterFormatError("adapter blob is truncated (header runs past the end)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"adapter blob header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise AdapterFormatError("adapter blob header is not a JSON object")
    return header


def _blob_meta(header: dict[str, Any]) -> dict[str, Any]:
    """The blob's `mta` metadata, checked for our format and version."""
    try:
        meta = json.loads((header.get("__metadata__") or {}).get("mta", "null"))
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise AdapterFormatError(f"adapter blob metadata is garbled ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != BLOB_FORMAT:
        raise AdapterFormatError(f"not an {BLOB_FORMAT} blob (no 'mta' metadata)")
    if meta.get("version") not in READABLE_VERSIONS:
        raise AdapterFormatError(
            f"unsupported {BLOB_FORMAT} version {meta.get('version')!r} "
            f"(this build reads {', '.join(map(str, READABLE_VERSIONS))})"
        )
    return meta


def _dequantize(
    tensors: dict[str, torch.Tensor], quantized: Any, scales: dict[str, Any]
) -> dict[str, torch.Tensor]:
    """The fp32 factors of a quantized blob (name -> tensor, as a float blob holds them)."""
    from mta.stack_formats import QUANTIZED_FORMATS, decode

    if not isinstance(quantized, dict) or quantized.get("format") not in QUANTIZED_FORMATS:
        raise AdapterFormatError(f"adapter blob: unknown quantized format in {quantized!r}")
    fmt, shapes = quantized["format"], quantized.get("shapes")
    if not isinstance(shapes, dict) or set(shapes) != set(scales):
        raise AdapterFormatError("adapter blob: quantized shapes do not match its scales")
    out: dict[str, torch.Tensor] = {}
    for path, shape in shapes.items():
        if not (
            isinstance(shape, list) and len(shape) == 3 and all(isinstance(n, int) for n in shape)
        ):
            raise AdapterFormatError(f"adapter blob: bad quantized shape of {path}")
        rank, in_features, out_features = shape
        for name, dims, dim in (("A", (rank, in_features), 0), ("B", (out_features, rank), 1)):
            key = f"{path}.lora_{name}"
            parts = {s: tensors.get(f"{key}.{s}") for s in ("q", "scale")}
            out[key] = decode(parts, fmt, dims, component_dim=dim)
    return out


def _unpacked(
    tensors: dict[str, torch.Tensor], quantized: Any
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """(scales, fp32 factors) of a packed quantized blob."""
    from mta.packed_stack import unpack
    from mta.stack_formats import QUANTIZED_FORMATS

    if not isinstance(quantized, dict) or quantized.get("format") not in QUANTIZED_FORMATS:
        raise AdapterFormatError(f"adapter blob: unknown quantized format in {quantized!r}")
    return unpack(tensors, quantized["format"], quantized.get("modules"))


def adapter_from_bytes(data: bytes) -> LoraAdapter:
    """Parse a blob written by ``adapter_to_bytes``.

    Raises:
        AdapterFormatError: not a safetensors blob, not our format or version,
            missing tensors or scales, rank mismatch, NaN/inf.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    header = _blob_header(data)
    meta = _blob_meta(header)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise AdapterFormatError(f"adapter blob is not valid safetensors ({exc})") from exc
    quantized = meta.get("quantized")
    if meta["version"] == PACKED_VERSION:
        scales, tensors = _unpacked(tensors, quantized)
    else:
        scales = meta.get("scales")
        if not isinstance(scales, dict) or not scales:
            raise AdapterFormatError("adapter blob has no per-module scales")
        if quantized is not None:
            tensors = _dequantize(tensors, quantized, scales)
    expected = {f"{p}.lora_{f}" for p in scales for f in ("A", "B")}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise AdapterFormatError(f"adapter blob tensors do not match its scales (e.g. {odd[0]})")
    modules: dict[str, LoraModule] = {}
    for module_path, scale in scales.items():
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise AdapterFormatError(f"adapter blob: scale of {module_path} is not a number")
        pair = {"A": tensors[f"{module_path}.lora_A"], "B": tensors[f"{module_path}.lora_B"]}
        modules[module_path] = make_module(module_path, pair, float(scale), "adapter blob")
    adapter = LoraAdapter(modules=modules, base_model=meta.get("base_model"))
    adapter.check_finite()
    return adapter
