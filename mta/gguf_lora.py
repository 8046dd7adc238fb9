"""Adapters as llama.cpp LoRA GGUF files (what ``llama-cli --lora`` and llama-cpp-python load).

The layout follows llama.cpp's ``convert_lora_to_gguf.py`` (writer) and
``src/llama-adapter.cpp`` (reader):

* Key/values: ``general.architecture`` (the base model's, e.g. ``"llama"``; llama.cpp
  refuses an adapter whose architecture differs from the model's), ``general.type =
  "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha`` (f32).
* Tensors: one ``<base tensor>.lora_a`` / ``.lora_b`` pair per adapted Linear, named like
  the base GGUF's tensors (``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q.weight``).
  ``lora_a`` holds PEFT's ``A`` (r x in) and ``lora_b`` its ``B`` (out x r) unchanged in
  orientation: GGUF lists dimensions innermost first, so llama.cpp sees ``ne = [in, r]``
  and ``[r, out]``, which is the shape check it applies.
* Scaling: llama.cpp multiplies each pair by ``alpha / rank`` with one ``alpha`` per file
  and ``rank`` read from each ``lora_b``. To make every module's delta exact whatever its
  own rank and scale, each module is padded to the adapter's largest rank ``R`` (zero rows
  of ``A``, zero columns of ``B``), its scale is folded into ``B`` in fp32, and
  ``alpha = R``: the effective scale is 1 everywhere (as ``save_peft_adapter`` does with
  ``r = lora_alpha``).
* Rotary layout: Hugging Face Llama checkpoints order each attention head's rows of
  ``q_proj`` / ``k_proj`` in two halves (rotate-half), GGUF in interleaved pairs;
  the converter permutes those base weights' rows, so ``B``'s rows (the output side) get
  the same permutation. That needs the base model's head size (``base_head_dim``).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mta.errors import AdapterFormatError, MtaError, ShapeMismatchError, unknown_name

if TYPE_CHECKING:
    import torch

    from mta.lora import LoraAdapter, LoraModule

GGUF_NAME = "adapter_model.gguf"  # the file name next to a PEFT folder's adapter_model.safetensors
ADAPTER_FILE_MODE = 0o644  # readable by an engine running as another user

# HF module path inside a decoder layer -> llama.cpp tensor suffix (gguf MODEL_TENSOR names).
_LLAMA_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_LAYER_PATH = re.compile(r"^model\.layers\.(?P<block>\d+)\.(?P<module>.+)$")


@dataclass(frozen=True)
class GgufArch:
    """How one llama.cpp architecture names adapted modules and which rows it reorders."""

    tensors: dict[str, str]  # module path inside a layer -> tensor suffix, e.g. "attn_q"
    rope_permuted: frozenset[str]  # modules whose output rows the converter permutes


# Architectures we write (tested against llama.cpp); more are one entry each.
GGUF_ARCHES: dict[str, GgufArch] = {
    "llama": GgufArch(
        tensors=_LLAMA_TENSORS,
        rope_permuted=frozenset({"self_attn.q_proj", "self_attn.k_proj"}),
    ),
}


def gguf_tensor_name(path: str, base_arch: str = "llama") -> str:
    """The llama.cpp base-tensor name of an adapted module, e.g. ``"blk.3.attn_q.weight"``.

    Raises:
        UnknownNameError: ``base_arch`` is not supported.
        AdapterFormatError: the module is not one llama.cpp can adapt in that architecture.
    """
    arch = _arch(base_arch)
    block, module = _split_path(path, arch)
    return f"blk.{block}.{arch.tensors[module]}.weight"


def rope_permute_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half (HF) to interleaved pairs (GGUF).

    Row ``h·d + k·d/2 + i`` moves to ``h·d + 2i + k`` (``d = head_dim``), as llama.cpp's
    converter does to Llama's q/k projections (``LlamaModel.permute``).

    Raises:
        ShapeMismatchError: the row count is not a multiple of an even ``head_dim``.
    """
    rows = weight.shape[0]
    if head_dim < 2 or head_dim % 2 or rows % head_dim:
        raise ShapeMismatchError(
            f"cannot split {rows} rows into heads of {head_dim} (head_dim must be even and "
            f"divide the rows)"
        )
    heads = rows // head_dim
    return (
        weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:])
        .transpose(1, 2)
        .reshape(weight.shape)
    )


def save_gguf_lora(
    adapter: LoraAdapter,
    path: str | Path,
    *,
    base_arch: str = "llama",
    head_dim: int | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``adapter`` as a llama.cpp LoRA GGUF file (see the module docstring).

    The file is written through a temp file and a rename. Its bytes depend only on the
    arguments, so the same adapter always gives the same file.

    Args:
        adapter: The adapter; its module paths must be HF Llama paths such as
            ``model.layers.0.self_attn.q_proj``.
        path: The ``.gguf`` file to write, or an existing folder (e.g. a PEFT export) to
            write ``GGUF_NAME`` into.
        base_arch: llama.cpp architecture of the base model (``general.architecture`` of
            its GGUF); one of ``GGUF_ARCHES``.
        head_dim: Rows per attention head of the base model (``base_head_dim``); needed
            when the adapter touches ``q_proj`` or ``k_proj``.
        dtype: ``torch.float32`` (default, as llama.cpp's converter) or ``torch.float16``.

    Returns:
        The path of the written file.

    Raises:
        AdapterFormatError: empty adapter, NaN/inf or values overflowing ``dtype``, a
            module llama.cpp cannot adapt, or an unsupported ``dtype``.
        ShapeMismatchError: ``head_dim`` is missing or does not divide q/k's rows.
        UnknownNameError: ``base_arch`` is not supported.
    """
    import torch

    dtype = dtype or torch.float32
    if dtype not in (torch.float32, torch.float16):
        raise AdapterFormatError(f"GGUF LoRA factors are written as fp32 or fp16, not {dtype}")
    arch = _arch(base_arch)
    placed, rank = _layout(adapter, arch, head_dim)
    target = Path(path)
    if target.is_dir():
        target = target / GGUF_NAME
    return _write_atomically(
        target, lambda tmp: _write(tmp, adapter, placed, rank, base_arch, head_dim, dtype)
    )


def _write_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` into a temp file beside `target`, then 0644, fsync and rename it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, ADAPTER_FILE_MODE)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _layout(
    adapter: LoraAdapter, arch: GgufArch, head_dim: int | None
) -> tuple[list[tuple[int, str, str]], int]:
    """Check the adapter; return ``[(block, module, path)]`` in file order and the padded rank."""
    if not adapter.modules:
        raise AdapterFormatError("cannot save an adapter without modules")
    adapter.check_finite()
    order = list(arch.tensors)
    placed = sorted(
        ((*_split_path(path, arch), path) for path in adapter.modules),
        key=lambda item: (item[0], order.index(item[1])),
    )
    rank = max(module.r for module in adapter.modules.values())
    if rank == 0:
        raise AdapterFormatError("cannot save an adapter whose modules all have rank 0")
    if head_dim is None and any(module in arch.rope_permuted for _, module, _ in placed):
        raise ShapeMismatchError(
            "writing q_proj/k_proj for llama.cpp needs the base model's head_dim "
            "(mta.gguf_lora.base_head_dim reads it from the base GGUF or config.json)"
        )
    return placed, rank


def _write(
    file: Path,
    adapter: LoraAdapter,
    placed: list[tuple[int, str, str]],
    rank: int,
    base_arch: str,
    head_dim: int | None,
    dtype: torch.dtype,
) -> None:
    """Write the key/values and the padded, folded (and for q/k permuted) factor pairs."""
    import gguf
    import torch

    from mta.lora import one_thread
    from mta.peft_io import cast_finite

    arch = GGUF_ARCHES[base_arch]
    writer = gguf.GGUFWriter(file, arch=base_arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(rank))
        writer.add_file_type(
            gguf.LlamaFileType.ALL_F32 if dtype == torch.float32 else gguf.LlamaFileType.MOSTLY_F16
        )
        with one_thread():
            for block, module_name, module_path in placed:
                a, b = _padded_folded(adapter.modules[module_path], rank)
                if module_name in arch.rope_permuted:
                    b = rope_permute_rows(b, head_dim)  # type: ignore[arg-type]  # _layout checked
                name = f"blk.{block}.{arch.tensors[module_name]}.weight"
                what = f"{module_path} (scale folded into B)"
                writer.add_tensor(f"{name}.lora_a", cast_finite(a, dtype, what).numpy())
                writer.add_tensor(
                    f"{name}.lora_b", cast_finite(b, dtype, what, computed=True).numpy()
                )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def base_head_dim(base: str | Path) -> int:
    """Rows per attention head of a base model, from its ``.gguf`` file or ``config.json``.

    Args:
        base: A ``.gguf`` model file, or a folder holding a transformers ``config.json``
            (``mta.base_model.resolve_base_model`` gives either for local models).

    Raises:
        MtaError: the file or folder does not say (hub ids are not fetched).
    """
    source = Path(base)
    if source.is_file() and source.suffix == ".gguf":
        return _gguf_head_dim(source)
    config = source / "config.json"
    if not config.is_file():
        raise MtaError(f"cannot read the head size of {base}: not a .gguf file or model folder")
    hparams = json.loads(config.read_text(encoding="utf-8"))
    head_dim = hparams.get("head_dim")
    if head_dim:
        return int(head_dim)
    try:
        return int(hparams["hidden_size"]) // int(hparams["num_attention_heads"])
    except KeyError as missing:
        raise MtaError(f"{config} has no head_dim and no {missing.args[0]}") from None


def _gguf_head_dim(path: Path) -> int:
    """``<arch>.attention.key_length``, else ``embedding_length // attention.head_count``."""
    import gguf

    reader = gguf.GGUFReader(path)

    def value(key: str) -> int | str | None:
        field = reader.get_field(key)
        return None if field is None else field.contents()

    arch = value(gguf.Keys.General.ARCHITECTURE)
    key_length = value(gguf.Keys.Attention.KEY_LENGTH.format(arch=arch))
    if key_length:
        return int(key_length)
    width = value(gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch))
    heads = value(gguf.Keys.Attention.HEAD_COUNT.format(arch=arch))
    if not width or not heads:
        raise MtaError(f"{path} does not record its attention head count")
    return int(width) // int(heads)


def _arch(base_arch: str) -> GgufArch:
    if base_arch not in GGUF_ARCHES:
        raise unknown_name("GGUF architecture", base_arch, list(GGUF_ARCHES))
    return GGUF_ARCHES[base_arch]


def _split_path(path: str, arch: GgufArch) -> tuple[int, str]:
    """``"model.layers.3.self_attn.q_proj"`` -> ``(3, "self_attn.q_proj")``."""
    match = _LAYER_PATH.match(path)
    if match is None or match["module"] not in arch.tensors:
        raise AdapterFormatError(
            f"llama.cpp cannot adapt {path!r}: only model.layers.N.<"
            f"{'|'.join(arch.tensors)}> are written to GGUF"
        )
    return int(match["block"]), match["module"]


def _padded_folded(module: LoraModule, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(A, B·scale)`` padded with zeros to ``rank``: same delta, effective scale 1."""
    import torch

    a = module.A.float()
    b = module.B.float() * module.scale if module.scale != 1.0 else module.B.float()
    missing = rank - module.r
    if missing:
        a = torch.cat([a, a.new_zeros(missing, module.in_features)], dim=0)
        b = torch.cat([b, b.new_zeros(module.out_features, missing)], dim=1)
    return a.contiguous(), b.contiguous()
