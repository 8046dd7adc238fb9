"""Fixtures that build tiny models and adapters for fast tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mta.lora import LoraAdapter

# torch and transformers are imported inside the fixtures: this module is loaded by the root
# conftest for every test run, including the storage and CLI tests that never touch a model.

TINY_EMBEDDER_DIM = 32  # the embedding size of `tiny_embedder_dir`


def random_adapter(
    shapes: dict[str, tuple[int, int]],
    rank: int,
    seed: int = 0,
    *,
    scale: float = 1.0,
    std: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> LoraAdapter:
    """A LoraAdapter with Gaussian A and B (both non-zero) for the given module shapes.

    Args:
        shapes: module path -> (out_features, in_features), e.g. from ``linear_shapes``.
        rank: rank of every module.
        seed: seed of the factors.
        scale: the LoRA scaling stored on every module.
        std: standard deviation of the factor entries.
        target_modules: keep only modules with these leaf names (default: all of ``shapes``).

    Returns:
        The adapter.
    """
    import torch

    from mta.lora import LoraAdapter, LoraModule

    generator = torch.Generator().manual_seed(seed)
    keep = set(target_modules) if target_modules is not None else None
    modules = {}
    for path, (out_features, in_features) in shapes.items():
        if keep is not None and path.rsplit(".", 1)[-1] not in keep:
            continue
        a = torch.randn(rank, in_features, generator=generator) * std
        b = torch.randn(out_features, rank, generator=generator) * std
        modules[path] = LoraModule(A=a, B=b, scale=scale)
    return LoraAdapter(modules=modules)


def fresh_tiny_model(model_dir: Path):  # -> PreTrainedModel
    """A new float32 copy of the tiny Llama: PEFT injects layers into the model it is given."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a random tiny Llama (seed 0) and its tokenizer."""
    from mta.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder with a random ``TINY_EMBEDDER_DIM``-d sentence-transformer (stand-in for MiniLM)."""
    from mta.tiny import make_tiny_embedder

    return make_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"), dim=TINY_EMBEDDER_DIM)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> tuple:
    """``(model, tokenizer)`` of the tiny Llama, shared by the session: leave it unchanged."""
    from mta.base_model import load_base_model

    return load_base_model(str(tiny_model_dir))


@pytest.fixture(scope="session")
def tiny_shapes(tiny_model: tuple) -> dict[str, tuple[int, int]]:
    """Shapes of the tiny model's default target modules."""
    from mta.base_model import DEFAULT_TARGET_MODULES, linear_shapes

    return linear_shapes(tiny_model[0], DEFAULT_TARGET_MODULES)


@pytest.fixture
def random_adapter_factory(
    tiny_shapes: dict[str, tuple[int, int]],
) -> Callable[..., LoraAdapter]:
    """``make(rank, seed=0, *, scale=1.0, std=0.05, target_modules=None)`` for the tiny model."""

    def make(rank: int, seed: int = 0, **kwargs: object) -> LoraAdapter:
        return random_adapter(tiny_shapes, rank, seed, **kwargs)

    return make
