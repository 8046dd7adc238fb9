"""Read and write adapters as PEFT folders and as storage blobs (safetensors only, never pickle).

A PEFT LoRA folder holds ``adapter_config.json`` and ``adapter_model.safetensors``
(LLaMA-Factory writes the same). Tensor keys look like
``base_model.model.<module path>.lora_A.weight``; some tools keep the adapter
name, ``...lora_A.<name>.weight``. Per-module ranks and alphas come from
``rank_pattern``/``alpha_pattern``, matched exactly as PEFT does.

The blob format (``adapter_to_bytes``) is one safetensors file whose only
metadata entry, ``"mta"``, is a JSON object with the format version, the base
model and the per-module scales. Scales stay in the metadata (not folded into
B) so storing in fp16 rounds only the factors. One metadata key and sorted JSON
keep the bytes deterministic, which content addressing relies on.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch

from mta.errors import AdapterFormatError, ShapeMismatchError
from mta.lora import LoraAdapter, LoraModule, is_finite, one_thread
from mta.peft_config import (
    CONFIG_NAME,
    check_supported,
    module_scale,
    peft_config_for,
    read_config,
)

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."


# <path>.lora_A.weight or <path>.lora_A.<adapter name>.weight, as PEFT and its forks save them.
_FACTOR_KEY = re.compile(r"^(?P<path>.+)\.lora_(?P<factor>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
# Tensors of LoRA variants we do not represent; the message names the feature.
_UNSUPPORTED_KEYS = (
    ("lora_embedding_", "embedding LoRA"),
    ("lora_magnitude_vector", "DoRA (use_dora)"),
    ("modules_to_save", "modules_to_save (fully trained modules)"),
    ("trainable_tokens", "trainable tokens"),
)


def _load_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterFormatError(f"{weights_path}: unreadable safetensors file ({exc})") from exc


def _group_factors(
    tensors: Mapping[str, torch.Tensor], where: str
) -> dict[str, dict[str, torch.Tensor]]:
    """Module path -> {"A": tensor, "B": tensor}, refusing keys we cannot represent."""
    factors: dict[str, dict[str, torch.Tensor]] = {}
    adapter_names: set[str] = set()
    for key, tensor in tensors.items():
        for marker, feature in _UNSUPPORTED_KEYS:
            if marker in key:
                raise AdapterFormatError(f"{where}: {feature} is not supported (tensor {key})")
        match = _FACTOR_KEY.match(key)
        if match is None:
            raise AdapterFormatError(f"{where}: unexpected tensor {key!r} (not a LoRA A/B weight)")
        if match["name"] is not None:
            adapter_names.add(match["name"])
        path = match["path"].removeprefix(PEFT_PREFIX)
        factors.setdefault(path, {})[match["factor"]] = tensor
    if len(adapter_names) > 1:
        raise AdapterFormatError(
            f"{where}: holds several adapters ({', '.join(sorted(adapter_names))}); expected one"
        )
    if not factors:
        raise AdapterFormatError(f"{where}: no LoRA tensors found")
    return factors


def make_module(
    path: str, pair: Mapping[str, torch.Tensor], scale: float, where: str
) -> LoraModule:
    for factor in ("A", "B"):
        if factor not in pair:
            raise AdapterFormatError(f"{where}: {path} has no lora_{factor} tensor")
        tensor = pair[factor]
        if tensor.dim() != 2:
            raise AdapterFormatError(
                f"{where}: {path} lora_{factor} has shape {tuple(tensor.shape)}; "
                "only Linear LoRA (2-D factors) is supported"
            )
        if not tensor.is_floating_point():
            raise AdapterFormatError(f"{where}: {path} lora_{factor} has dtype {tensor.dtype}")
    A, B = pair["A"], pair["B"]
    if A.shape[0] != B.shape[1]:
        raise AdapterFormatError(
            f"{where}: {path} ranks differ: lora_A has {A.shape[0]} rows, "
            f"lora_B has {B.shape[1]} columns"
        )
    return LoraModule(A=A, B=B, scale=scale)


def load_peft_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT (or LLaMA-Factory) LoRA folder.

    Args:
        path: Folder holding ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        The adapter, factors in their stored dtype, scales resolved per module from
        ``r``, ``lora_alpha``, ``use_rslora``, ``rank_pattern`` and ``alpha_pattern``.

    Raises:
        AdapterFormatError: not a folder, pickle weights, garbled or unsupported config,
            missing or malformed tensors, rank disagreeing with the config, NaN/inf.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise AdapterFormatError(f"{folder}: no such adapter folder")
    weights_path = folder / WEIGHTS_NAME
    if not weights_path.is_file():
        if (folder / PICKLE_WEIGHTS_NAME).is_file():
            raise AdapterFormatError(
                f"{folder}: holds only {PICKLE_WEIGHTS_NAME} (pickle), which is never loaded; "
                f"re-save it as {WEIGHTS_NAME} (PEFT: save_pretrained(safe_serialization=True))"
            )
        raise AdapterFormatError(f"{folder}: no {WEIGHTS_NAME}")
    config = read_config(folder)
    where = str(folder)
    check_supported(config, where)
    factors = _group_factors(_load_tensors(weights_path), where)
    modules: dict[str, LoraModule] = {}
    for module_path in sorted(factors):
        r, scale = module_scale(config, module_path, where)
        module = make_module(module_path, factors[module_path], scale, where)
        if module.r != r:
            raise AdapterFormatError(
                f"{where}: {module_path} has rank {module.r} but the config gives r={r}"
            )
        modules[module_path] = module
    base_model = config.get("base_model_name_or_path")
    adapter = LoraAdapter(modules=modules, base_model=str(base_model) if base_model else None)
    try:
        adapter.check_finite()
    except AdapterFormatError as exc:
        raise AdapterFormatError(f"{where}: {exc}") from None
    return adapter


def cast_finite(
    tensor: torch.Tensor, dtype: torch.dtype, what: str, *, computed: bool = False
) -> torch.Tensor:
    """Cast for writing; re-check a narrowing cast or a ``computed`` tensor (they may overflow)."""
    cast = tensor.to(dtype).contiguous()
    if (computed or cast.dtype != tensor.dtype) and not is_finite(cast):
        raise AdapterFormatError(f"{what} does not fit {dtype} (values overflow to inf)")
    return cast


ADAPTER_FILE_MODE = 0o644  # adapter files: readable by an engine running as another user


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temp file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600; serving engines often run as another user and must read it.
        os.fchmod(fd, ADAPTER_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_peft_adapter(
    adapter: LoraAdapter,
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    base_model: str | None = None,
) -> Path:
    """Write ``adapter`` as a folder that ``peft.PeftModel.from_pretrained`` loads.

    Each module's scale is multiplied into B (in fp32, before the cast) and written
    with ``r = lora_alpha = rank``, so PEFT's ``get_delta_weight`` reproduces
    ``LoraModule.delta()`` up to the rounding of ``dtype``. Files are written
    through temp files and renames; the folder is created when missing.

    Args:
        adapter: The adapter to write; must have at least one module.
        path: Target folder.
        dtype: Dtype of the stored factors.
        base_model: ``base_model_name_or_path`` for the config (default: the adapter's).

    Returns:
        The folder path.

    Raises:
        AdapterFormatError: empty adapter, NaN/inf, or values overflowing ``dtype``.
    """
    if not adapter.modules:
        raise AdapterFormatError("cannot save an adapter without modules")
    adapter.check_finite()
    tensors: dict[str, torch.Tensor] = {}
    with one_thread():
        for module_path, module in sorted(adapter.modules.items()):
            key = f"{PEFT_PREFIX}{module_path}"
            tensors[f"{key}.lora_A.weight"] = cast_finite(module.A, dtype, f"{module_path} A")
            folded = module.B if module.scale == 1.0 else module.B.float() * module.scale
            tensors[f"{key}.lora_B.weight"] = cast_finite(
                folded, dtype, f"{module_path} B (scale folded in)", computed=folded is not module.B
            )
    from safetensors.torch import save

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_config_for(adapter, base_model)
    _write_atomic(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    _write_atomic(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    return folder


def validate_against_shapes(adapter: LoraAdapter, shapes: Mapping[str, tuple[int, int]]) -> None:
    """Check that every module of ``adapter`` exists in the base model with matching shape.

    Args:
        adapter: The adapter to check.
        shapes: Module path -> (out_features, in_features) of the base model's linear layers.

    Raises:
        ShapeMismatchError: a module missing from ``shapes`` or of another shape; the
            message names the first offender and how many there are.
    """
    problems: list[str] = []
    for module_path, module in adapter.modules.items():
        expected = shapes.get(module_path)
        if expected is None:
            problems.append(f"{module_path} is not a linear module of the base model")
        elif tuple(expected) != (module.out_features, module.in_features):
            problems.append(
                f"{module_path} is (out, in) = ({module.out_features}, {module.in_features}), "
                f"the base model has {tuple(expected)}"
            )
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ShapeMismatchError(f"adapter does not fit the base model: {problems[0]}{more}")
