"""PEFT's adapter_config.json: read and check it, the per-module (rank, scale) PEFT derives
from it, and the config our exports write (scaling exactly 1 on every module).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mta.errors import AdapterFormatError

if TYPE_CHECKING:
    from mta.lora import LoraAdapter

CONFIG_NAME = "adapter_config.json"


def read_config(folder: Path) -> dict[str, Any]:
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


def check_supported(config: Mapping[str, Any], where: str) -> None:
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


def positive_number(config: Mapping[str, Any], key: str, where: str) -> float:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise AdapterFormatError(f"{where}: {key} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise AdapterFormatError(f"{where}: {key} must be finite, got {value!r}")
    return float(value)


def pattern_of(config: Mapping[str, Any], key: str, where: str) -> dict[str, float]:
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


def module_scale(config: Mapping[str, Any], module_path: str, where: str) -> tuple[int, float]:
    """The (rank, scale) PEFT gives ``module_path`` under ``config``."""
    r = positive_number(config, "r", where)
    alpha = positive_number(config, "lora_alpha", where)
    rank_pattern = pattern_of(config, "rank_pattern", where)
    alpha_pattern = pattern_of(config, "alpha_pattern", where)
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


def config_rank(adapter: LoraAdapter) -> int:
    """The largest module rank: it becomes the config's plain ``r``.

    Serving engines size their LoRA slots from the config's ``r`` (vLLM's
    ``--max-lora-rank`` check) and some ignore ``rank_pattern``; with ``r`` the maximum
    and ``lora_alpha == r`` they still see a correct bound and a scaling of exactly 1.
    """
    return max(adapter.ranks().values())


def peft_config_for(adapter: LoraAdapter, base_model: str | None = None) -> dict[str, Any]:
    """The adapter_config.json that makes PEFT's scaling exactly 1 on every module.

    Each module is written with ``r = lora_alpha = its rank`` (scale folded into B);
    the config's ``r`` is the largest rank, and smaller ranks go to
    ``rank_pattern``/``alpha_pattern``, keyed by the full module path.
    """
    rank = config_rank(adapter)
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
