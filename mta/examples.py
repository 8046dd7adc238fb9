"""Training examples as tokens: the prompt, then the target as it continues the prompt."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mta.errors import MtaError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def encode_example(
    tokenizer: PreTrainedTokenizerBase, prompt: str, target: str, max_length: int
) -> tuple[list[int], list[int]]:
    """Tokenize one example into (prompt ids, target ids + EOS), fitted to ``max_length``."""
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    target_ids = continuation_ids(tokenizer, prompt, prompt_ids, target)
    if tokenizer.eos_token_id is not None:
        target_ids.append(tokenizer.eos_token_id)
    if not target_ids:
        raise MtaError(f"training example with an empty target (prompt {prompt[:40]!r})")
    if len(target_ids) >= max_length:
        # The first target token needs one token of context to be predicted.
        return prompt_ids[-1:], target_ids[: max_length - 1]
    # Cut the prompt from the left: the query sits at its end, right before the target.
    room = max_length - len(target_ids)
    return prompt_ids[-room:], target_ids


def continuation_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, prompt_ids: Sequence[int], target: str
) -> list[int]:
    """The target's tokens as they follow the prompt in running text (no EOS).

    A prompt ending in "Answer:" is continued by " comedy", not "comedy": tokenizing the
    target alone gives the no-space token, which the base model almost never emits there,
    so a few training steps spent on it mostly teach an early EOS (fused anchors trained
    that way named no tag on half the movie-tagging items). Tokenizing prompt and target
    together and keeping the tokens past the prompt matches generation without assuming
    how the tokenizer marks spaces.
    """
    sep = "" if not prompt or prompt[-1].isspace() or target[:1].isspace() else " "
    full = list(tokenizer(prompt + sep + target, add_special_tokens=True)["input_ids"])
    n = len(prompt_ids)
    if len(full) > n and full[:n] == list(prompt_ids):
        return full[n:]
    # A merge across the boundary: fall back to the target on its own, space included.
    return list(tokenizer(sep + target, add_special_tokens=False)["input_ids"])
