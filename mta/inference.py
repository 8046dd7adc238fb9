"""In-memory adapters on a base model, and greedy generation (the evaluation's decoder).

`apply_adapter` adds an adapter's delta into the Linear weights for the duration of a
`with` block and copies the pristine weights (kept once per model) back afterwards;
`generate` decodes greedily from raw prompts (no chat template), the same text training saw.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mta.errors import MtaError, ShapeMismatchError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from mta.lora import LoraAdapter


def padding_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Token id used for padding (masked out, so any valid id works)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def device_of(model: torch.nn.Module) -> torch.device:
    """Device of the model's first parameter."""
    return next(model.parameters()).device


# Attributes set on a model by `apply_adapter` (plain attributes: not in its state_dict).
_PRISTINE = "_mta_pristine"  # path -> (copy of the weight before any merge, its _version after)
_DEPTH = "_mta_merge_depth"  # how many apply_adapter blocks are open on the model


@contextmanager
def apply_adapter(model: torch.nn.Module, adapter: LoraAdapter) -> Iterator[torch.nn.Module]:
    """Temporarily add ``adapter``'s delta into the model's Linear weights.

    On exit (normal or not) the original weights are copied back bit-exactly. Contexts nest.
    The outermost block restores from one pristine copy per weight kept on the model, made
    on first use: cloning ~100M weights per call cost more than the merge itself. A weight
    changed in place since (its ``_version`` moved: `load_state_dict`, training) is copied
    again; nested blocks clone what they change.

    Args:
        model: the base model.
        adapter: the LoRA to merge in memory.

    Yields:
        The same model, with the delta merged.

    Raises:
        ShapeMismatchError: a module path is missing or its shape differs.
    """
    import torch

    targets = _target_weights(model, adapter)
    outermost = getattr(model, _DEPTH, 0) == 0
    pristine: dict[str, tuple[torch.Tensor, int]] = model.__dict__.setdefault(_PRISTINE, {})
    saved: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    model.__dict__[_DEPTH] = getattr(model, _DEPTH, 0) + 1
    try:
        with torch.no_grad():
            for path, weight, module in targets:
                # A copy, not a subtraction afterwards: W + Δ - Δ is not bit-exact in floats.
                original = _pristine(pristine, path, weight) if outermost else weight.clone()
                saved.append((path, weight, original))
                weight.add_(module.delta().to(device=weight.device, dtype=weight.dtype))
        yield model
    finally:
        with torch.no_grad():
            for path, weight, original in saved:
                weight.copy_(original)
                if outermost:
                    pristine[path] = (original, weight._version)
        model.__dict__[_DEPTH] -= 1


def _pristine(
    kept: dict[str, tuple[torch.Tensor, int]], path: str, weight: torch.Tensor
) -> torch.Tensor:
    """The kept copy of ``weight`` if nothing changed it since, else a new kept copy."""
    copy, version = kept.get(path, (None, -1))
    if (
        copy is None
        or version != weight._version
        or copy.shape != weight.shape
        or copy.device != weight.device
        or copy.dtype != weight.dtype
    ):
        copy = weight.detach().clone()
        kept[path] = (copy, weight._version)
    return copy


def _target_weights(model: torch.nn.Module, adapter: LoraAdapter) -> list:
    """(path, weight, module) for each adapter module, checking paths and shapes."""
    import torch

    pairs = []
    for path, module in adapter.modules.items():
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            raise ShapeMismatchError(f"adapter module {path!r} is not in the base model") from None
        if not isinstance(layer, torch.nn.Linear):
            raise ShapeMismatchError(f"adapter module {path!r} is not a Linear layer")
        want = (module.out_features, module.in_features)
        if tuple(layer.weight.shape) != want:
            raise ShapeMismatchError(
                f"adapter module {path!r} is {want[0]}x{want[1]}, base weight is "
                f"{layer.weight.shape[0]}x{layer.weight.shape[1]}"
            )
        pairs.append((path, layer.weight, module))
    return pairs


def generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    batch_size: int = 8,
) -> list[str]:
    """Greedy-decode each raw prompt (no chat template) in left-padded batches.

    Args:
        model: the causal LM (merge adapters with ``apply_adapter`` first).
        tokenizer: its tokenizer.
        prompts: prompt texts.
        max_new_tokens: generation budget per prompt.
        batch_size: prompts per forward batch.

    Returns:
        The new text of each prompt, special tokens dropped and whitespace stripped, in order.
    """
    import torch

    if batch_size < 1 or max_new_tokens < 1:
        raise MtaError("generate: batch_size and max_new_tokens must be positive")
    encoded = [list(tokenizer(p, add_special_tokens=True)["input_ids"]) for p in prompts]
    # Similar lengths share a batch, which keeps padding (wasted compute) small.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad_id = padding_id(tokenizer)
    config = _greedy_config(model, tokenizer, max_new_tokens, pad_id)
    device = device_of(model)
    results: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size]
        length = max(len(encoded[i]) for i in ids)
        input_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), length), dtype=torch.long)
        for row, i in enumerate(ids):
            input_ids[row, length - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention[row, length - len(encoded[i]) :] = 1
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                generation_config=config,
            )
        texts = tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)
        for i, text in zip(ids, texts, strict=True):
            results[i] = text.strip()
    return [results[i] for i in range(len(prompts))]


def _greedy_config(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, pad_id: int
):  # -> GenerationConfig
    """A greedy generation config that keeps the model's EOS ids and adds the tokenizer's."""
    from transformers import GenerationConfig

    eos: list[int] = []
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (model_eos, tokenizer.eos_token_id):
        for token in value if isinstance(value, list) else [value]:
            if token is not None and token not in eos:
                eos.append(int(token))
    return GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos or None,
    )
