"""Linear-module shapes of the base models we benchmark, and random adapters of those shapes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mta.lora import LoraAdapter, LoraModule


@dataclass(frozen=True)
class LlamaShape:
    """The widths that fix every linear module's shape in a Llama-family decoder."""

    name: str
    hidden: int
    intermediate: int
    kv_dim: int
    layers: int
    vocab: int
    heads: int
    kv_heads: int
    tied: bool  # input and output embeddings shared
    native_bytes: int  # bytes per parameter of the checkpoint users run (fp32 / bf16)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Module path -> (out_features, in_features) over all seven linear modules per layer."""
        h, i, kv = self.hidden, self.intermediate, self.kv_dim
        per_layer = {
            "self_attn.q_proj": (h, h),
            "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h),
            "self_attn.o_proj": (h, h),
            "mlp.gate_proj": (i, h),
            "mlp.up_proj": (i, h),
            "mlp.down_proj": (h, i),
        }
        return {
            f"model.layers.{layer}.{name}": shape
            for layer in range(self.layers)
            for name, shape in per_layer.items()
        }

    def base_params(self) -> int:
        """Parameters of the full base model (embeddings counted twice when untied)."""
        linear = sum(o * i for o, i in self.linear_shapes().values())
        norms = self.layers * 2 * self.hidden + self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return linear + embeddings + norms


SMOLLM2 = LlamaShape("SmolLM2-135M", 576, 1536, 192, 30, 49152, 9, 3, True, 4)
LLAMA3_8B = LlamaShape("Llama-3-8B", 4096, 14336, 1024, 32, 128256, 32, 8, False, 2)


def random_adapter(
    shapes: dict[str, tuple[int, int]], rank: int, *, seed: int, alpha: float | None = None
) -> LoraAdapter:
    """A rank-``rank`` LoRA with random non-zero A and B (a trained adapter's statistics)."""
    gen = torch.Generator().manual_seed(seed)
    scale = (alpha if alpha is not None else 2 * rank) / rank
    modules = {}
    for path, (out_f, in_f) in shapes.items():
        a = torch.randn(rank, in_f, generator=gen) / in_f**0.5
        b = torch.randn(out_f, rank, generator=gen) * 0.01
        modules[path] = LoraModule(A=a, B=b, scale=scale)
    return LoraAdapter(modules=modules)


def tiny_llama_config(shape: LlamaShape):  # -> transformers.LlamaConfig
    """A transformers LlamaConfig with the given shape (for PEFT baselines; weights random)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab,
        tie_word_embeddings=shape.tied,
    )
