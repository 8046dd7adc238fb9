"""Rank decoding: answer the label of a fixed set that the model finds most likely.

A classification task's labels are exactly the targets training teaches the model to emit
after the prompt, so instead of parsing a greedy generation (which may name no label) each
label is scored by its length-normalized log-likelihood as the prompt's continuation, and
the best one is the answer. Every answer is then a label of the set.

Scoring shares the prompt across labels: one forward pass over a batch of prompts fills a
KV cache, which is repeated once per label, and a second pass over the label tokens reads
the rest of their log-probabilities. The prompt is thus run once per item, not once per
label, and a batch costs about what a greedy generation of the same prompts does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mta.errors import MtaError
from mta.examples import continuation_ids
from mta.inference import device_of, padding_id

if TYPE_CHECKING:
    import torch
    from transformers import Cache, PreTrainedTokenizerBase


def label_log_likelihoods(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[list[float]]:
    """Mean log-probability per token of each label as the continuation of each prompt.

    The label's tokens are those that follow the prompt in running text
    (`mta.training.continuation_ids`), without EOS; prompts are raw (no chat template),
    as in training and `mta.inference.generate`. Padding is built here, so the tokenizer's
    ``padding_side`` does not matter.

    Args:
        model: the causal LM (merge adapters with ``apply_adapter`` first).
        tokenizer: its tokenizer.
        prompts: prompt texts.
        labels: the label strings, e.g. a task's ``labels``.
        batch_size: prompts per forward pass; the label pass holds
            ``batch_size * len(labels)`` copies of the prompts' KV cache.

    Returns:
        ``scores[i][j]``: the mean log-probability of ``labels[j]``'s tokens after
        ``prompts[i]``.

    Raises:
        MtaError: ``batch_size`` below 1, no labels, or a label with no tokens.
    """
    if batch_size < 1:
        raise MtaError("label_log_likelihoods: batch_size must be positive")
    if not labels:
        raise MtaError("label_log_likelihoods: no labels to rank")
    encoded = []
    for prompt in prompts:
        prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        conts = [continuation_ids(tokenizer, prompt, prompt_ids, label) for label in labels]
        for label, cont in zip(labels, conts, strict=True):
            if not cont:
                raise MtaError(f"label {label!r} has no tokens after prompt {prompt[:40]!r}")
        encoded.append((prompt_ids, conts))
    # Similar lengths share a batch, which keeps padding (wasted compute) small.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    results: dict[int, list[float]] = {}
    for start in range(0, len(order), batch_size):
        ids = order[start : start + batch_size]
        scores = _score_batch(model, [encoded[i] for i in ids], padding_id(tokenizer))
        results.update(zip(ids, scores, strict=True))
    return [results[i] for i in range(len(prompts))]


def rank_labels(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    labels: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[str]:
    """The label with the highest `label_log_likelihoods` score for each prompt."""
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size=batch_size)
    return [labels[best_index(row)] for row in scores]


def best_index(scores: Sequence[float]) -> int:
    """Index of the highest score; a tie goes to the first (the task's label order)."""
    return max(range(len(scores)), key=lambda j: (scores[j], -j))


def _score_batch(
    model: torch.nn.Module, batch: list[tuple[list[int], list[list[int]]]], pad_id: int
) -> list[list[float]]:
    """Mean label log-probs for one batch of (prompt ids, label continuations)."""
    import torch

    n_labels = len(batch[0][1])
    device = device_of(model)
    length = max(len(prompt) for prompt, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    for row, (prompt, _) in enumerate(batch):
        input_ids[row, length - len(prompt) :] = torch.tensor(prompt)
        attention[row, length - len(prompt) :] = 1
    # Left padding leaves every prompt's last token at the right edge, where the first
    # label token is predicted; positions count real tokens only, so padding changes nothing.
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    cache = _empty_cache()
    with torch.no_grad():
        out = _forward(
            model,
            cache,
            keep=1,
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            position_ids=positions.to(device),
        )
        first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        # Row r of the label pass is prompt r // n_labels followed by label r % n_labels.
        conts = [cont for _, conts in batch for cont in conts]
        rows = torch.arange(len(conts), device=first.device) // n_labels
        heads = torch.tensor([cont[0] for cont in conts], device=first.device)
        totals = first[rows, heads].double().cpu()
        rest = max(len(cont) for cont in conts) - 1
        if rest > 0:
            totals += _rest_log_probs(
                model, cache, attention, positions, conts, n_labels, rest, pad_id
            )
    counts = torch.tensor([len(cont) for cont in conts], dtype=torch.float64)
    means = (totals / counts).view(len(batch), n_labels)
    return means.tolist()


def _rest_log_probs(
    model: torch.nn.Module,
    cache: Cache,
    attention: torch.Tensor,
    positions: torch.Tensor,
    conts: list[list[int]],
    n_labels: int,
    rest: int,
    pad_id: int,
) -> torch.Tensor:
    """Summed log-probs of every label token after the first, reading the prompts' cache."""
    import torch

    cache.batch_repeat_interleave(n_labels)
    # Token j of a label predicts token j + 1. Labels are right-padded: causal attention
    # keeps every real token from seeing the padding after it, and `mask` drops its scores.
    inputs = torch.full((len(conts), rest), pad_id, dtype=torch.long)
    targets = torch.zeros((len(conts), rest), dtype=torch.long)
    mask = torch.zeros((len(conts), rest), dtype=torch.long)
    for row, cont in enumerate(conts):
        inputs[row, : len(cont) - 1] = torch.tensor(cont[:-1])
        targets[row, : len(cont) - 1] = torch.tensor(cont[1:])
        mask[row, : len(cont) - 1] = 1
    prompt_attention = attention.repeat_interleave(n_labels, dim=0)
    starts = positions[:, -1:].repeat_interleave(n_labels, dim=0) + 1
    device = device_of(model)
    out = _forward(
        model,
        cache,
        keep=rest,
        input_ids=inputs.to(device),
        attention_mask=torch.cat([prompt_attention, mask], dim=1).to(device),
        position_ids=(starts + torch.arange(rest)).to(device),
    )
    log_probs = torch.log_softmax(out.logits[:, -rest:, :].float(), dim=-1)
    picked = log_probs.gather(-1, targets.to(device).unsqueeze(-1)).squeeze(-1)
    # where, not a product: a padding score could be -inf, and -inf * 0 is NaN.
    picked = torch.where(mask.to(device).bool(), picked, torch.zeros_like(picked))
    return picked.sum(dim=1).double().cpu()


def _forward(model: torch.nn.Module, cache: Cache, *, keep: int, **kwargs: object):
    """The model's forward reading and extending ``cache``, with logits for the last ``keep``."""
    import inspect

    params = inspect.signature(model.forward).parameters
    # transformers 5 renamed past_key_values to cache; the cache is filled in place either way.
    kwargs["cache" if "cache" in params else "past_key_values"] = cache
    # Skipping the vocabulary projection for the (long) prompts saves most of its cost.
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = keep
    return model(use_cache=True, **kwargs)


def _empty_cache() -> Cache:
    """A fresh KV cache object, so every supported transformers returns one (not tuples)."""
    from transformers import DynamicCache

    return DynamicCache()
