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
import math
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mta.errors import AdapterFormatError, ShapeMismatchError
from mta.lora import LoraAdapter, LoraModule, is_finite, one_thread

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

BLOB_FORMAT = "mta-lora"
BLOB_FORMAT_VERSION = 1

# <path>.lora_A.weight or <path>.lora_A.<adapter name>.weight, as PEFT and its forks save them.
_FACTOR_KEY = re.compile(r"^(?P<path>.+)\.lora_(?P<factor>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
# Tensors of LoRA variants we do not represent; the message names the feature.
_UNSUPPORTED_KEYS = (
    ("lora_embedding_", "embedding LoRA"),
    ("lora_magnitude_vector", "DoRA (use_dora)"),
    ("modules_to_save", "modules_to_save (fully trained modules)"),
    ("trainable_tokens", "trainable tokens"),
)


def _read_config(folder: Path) -> dict[str, Any]:
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise AdapterFormatError(f"{folder}: no {CONFIG_NAME}; not a PEFT adapter folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterFormatError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise AdapterFormatError(f"{config_path}: expected a JSON object")
    return config


def _check_supported(config: Mapping[str, Any], where: str) -> None:
    """Refuse config features whose effect a plain (A, B, scale) triple cannot carry."""
    peft_type = config.get("peft_type", "LORA")
    if str(peft_type).upper() != "LORA":
        raise AdapterFormatError(f"{where}: peft_type {peft_type!r} is not supported (only LORA)")
    if config.get("use_dora"):
        raise AdapterFormatError(f"{where}: DoRA adapters (use_dora) are not supported")
    if config.get("bias", "none") not in (None, "none"):
        raise AdapterFormatError(
            f"{where}: bias={config['bias']!r} is not supported (only bias='none')"
        )
    if config.get("lora_bias"):
        raise AdapterFormatError(f"{where}: lora_bias is not supported")
    for key in (
        "modules_to_save",
        "target_parameters",
        "trainable_token_indices",
        "layer_replication",
    ):
        if config.get(key):
            raise AdapterFormatError(f"{where}: {key} is not supported")


def _positive_number(config: Mapping[str, Any], key: str, where: str) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise AdapterFormatError(f"{where}: {key} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise AdapterFormatError(f"{where}: {key} must be finite, got {value!r}")
    return float(value)


def _pattern(config: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
    pattern = config.get(key) or {}
    if not isinstance(pattern, dict):
        raise AdapterFormatError(f"{where}: {key} must be an object, got {type(pattern).__name__}")
    for name, value in pattern.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise AdapterFormatError(f"{where}: {key}[{name!r}] must be positive, got {value!r}")
    return pattern


def match_pattern(pattern: Mapping[str, Any], module_path: str) -> str | None:
    """The first key of a rank/alpha pattern that matches ``module_path``, as PEFT picks it.

    PEFT's rule (``peft.utils.other.get_pattern_key``): keys are tried in order and
    ``key`` matches when ``re.match(rf"(.*\\.)?({key})$", module_path)`` does.

    Returns:
        The matching key, or None when no key matches.
    """
    for key in pattern:
        try:
            if re.match(rf"(.*\.)?({key})$", module_path):
                return key
        except re.error as exc:
            raise AdapterFormatError(f"invalid pattern key {key!r}: {exc}") from exc
    return None


def _module_scale(config: Mapping[str, Any], module_path: str, where: str) -> tuple[int, float]:
    """The (rank, scale) PEFT gives ``module_path`` under ``config``."""
    r = _positive_number(config, "r", where)
    alpha = _positive_number(config, "lora_alpha", where)
    rank_pattern = _pattern(config, "rank_pattern", where)
    alpha_pattern = _pattern(config, "alpha_pattern", where)
    r_key = match_pattern(rank_pattern, module_path)
    alpha_key = match_pattern(alpha_pattern, module_path)
    if r_key is not None:
        r = float(rank_pattern[r_key])
    if alpha_key is not None:
        alpha = float(alpha_pattern[alpha_key])
    if r != int(r):
        raise AdapterFormatError(f"{where}: rank of {module_path} must be an integer, got {r}")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return int(r), scale


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


def _make_module(
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
    config = _read_config(folder)
    where = str(folder)
    _check_supported(config, where)
    factors = _group_factors(_load_tensors(weights_path), where)
    modules: dict[str, LoraModule] = {}
    for module_path in sorted(factors):
        r, scale = _module_scale(config, module_path, where)
        module = _make_module(module_path, factors[module_path], scale, where)
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


def _config_rank(adapter: LoraAdapter) -> int:
    """The largest module rank: it becomes the config's plain ``r``.

    Serving engines size their LoRA slots from the config's ``r`` (vLLM's
    ``--max-lora-rank`` check) and some ignore ``rank_pattern``; with ``r`` the maximum
    and ``lora_alpha == r`` they still see a correct bound and a scaling of exactly 1.
    """
    return max(adapter.ranks().values())


def _cast_finite(
    tensor: torch.Tensor, dtype: torch.dtype, what: str, *, computed: bool = False
) -> torch.Tensor:
    """Cast for writing; re-check a narrowing cast or a ``computed`` tensor (they may overflow)."""
    cast = tensor.to(dtype).contiguous()
    if (computed or cast.dtype != tensor.dtype) and not is_finite(cast):
        raise AdapterFormatError(f"{what} does not fit {dtype} (values overflow to inf)")
    return cast


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to ``target`` through a temp file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def peft_config_for(adapter: LoraAdapter, base_model: str | None = None) -> dict[str, Any]:
    """The adapter_config.json that makes PEFT's scaling exactly 1 on every module.

    Each module is written with ``r = lora_alpha = its rank`` (scale folded into B);
    the config's ``r`` is the largest rank, and smaller ranks go to
    ``rank_pattern``/``alpha_pattern``, keyed by the full module path.
    """
    rank = _config_rank(adapter)
    pattern = {path: r for path, r in sorted(adapter.ranks().items()) if r != rank}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model if base_model is not None else adapter.base_model,
        "r": rank,
        "lora_alpha": rank,
        "use_rslora": False,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": adapter.target_modules(),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_lora_weights": True,
        "use_dora": False,
        "inference_mode": True,
    }


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
            tensors[f"{key}.lora_A.weight"] = _cast_finite(module.A, dtype, f"{module_path} A")
            folded = module.B if module.scale == 1.0 else module.B.float() * module.scale
            tensors[f"{key}.lora_B.weight"] = _cast_finite(
                folded, dtype, f"{module_path} B (scale folded in)", computed=folded is not module.B
            )
    from safetensors.torch import save

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_config_for(adapter, base_model)
    _write_atomic(folder / WEIGHTS_NAME, save(tensors, metadata={"format": "pt"}))
    _write_atomic(folder / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode("utf-8"))
    return folder


def adapter_to_bytes(adapter: LoraAdapter, *, dtype: torch.dtype = torch.float16) -> bytes:
    """Serialize ``adapter`` to one deterministic safetensors blob for the blob store.

    Args:
        adapter: The adapter; at least one module, finite values.
        dtype: Dtype of the stored factors (fp16 by default; scales are kept exactly
            in the metadata, so rounding touches only the factors).

    Returns:
        The blob bytes; equal adapters give equal bytes.

    Raises:
        AdapterFormatError: empty adapter, NaN/inf, or values overflowing ``dtype``.
    """
    from safetensors.torch import save

    if not adapter.modules:
        raise AdapterFormatError("cannot serialize an adapter without modules")
    adapter.check_finite()
    tensors: dict[str, torch.Tensor] = {}
    with one_thread():
        for module_path, module in adapter.modules.items():
            tensors[f"{module_path}.lora_A"] = _cast_finite(module.A, dtype, f"{module_path} A")
            tensors[f"{module_path}.lora_B"] = _cast_finite(module.B, dtype, f"{module_path} B")
    meta = {
        "format": BLOB_FORMAT,
        "version": BLOB_FORMAT_VERSION,
        "base_model": adapter.base_model,
        # repr() of a float round-trips exactly through JSON.
        "scales": {path: module.scale for path, module in adapter.modules.items()},
    }
    return save(tensors, metadata={"mta": json.dumps(meta, sort_keys=True)})


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


def adapter_from_bytes(data: bytes) -> LoraAdapter:
    """Parse a blob written by ``adapter_to_bytes``.

    Raises:
        AdapterFormatError: not a safetensors blob, not our format or version,
            missing tensors or scales, rank mismatch, NaN/inf.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    header = _blob_header(data)
    try:
        meta = json.loads((header.get("__metadata__") or {}).get("mta", "null"))
    except (json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise AdapterFormatError(f"adapter blob metadata is garbled ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != BLOB_FORMAT:
        raise AdapterFormatError(f"not an {BLOB_FORMAT} blob (no 'mta' metadata)")
    if meta.get("version") != BLOB_FORMAT_VERSION:
        raise AdapterFormatError(
            f"unsupported {BLOB_FORMAT} version {meta.get('version')!r} "
            f"(this build reads {BLOB_FORMAT_VERSION})"
        )
    scales = meta.get("scales")
    if not isinstance(scales, dict) or not scales:
        raise AdapterFormatError("adapter blob has no per-module scales")
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise AdapterFormatError(f"adapter blob is not valid safetensors ({exc})") from exc
    expected = {f"{p}.lora_{f}" for p in scales for f in ("A", "B")}
    if set(tensors) != expected:
        odd = sorted(set(tensors) ^ expected)
        raise AdapterFormatError(f"adapter blob tensors do not match its scales (e.g. {odd[0]})")
    modules: dict[str, LoraModule] = {}
    for module_path, scale in scales.items():
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise AdapterFormatError(f"adapter blob: scale of {module_path} is not a number")
        pair = {"A": tensors[f"{module_path}.lora_A"], "B": tensors[f"{module_path}.lora_B"]}
        modules[module_path] = _make_module(module_path, pair, float(scale), "adapter blob")
    adapter = LoraAdapter(modules=modules, base_model=meta.get("base_model"))
    adapter.check_finite()
    return adapter


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
