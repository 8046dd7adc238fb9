"""Builders for registry tests: synthetic LaMP users, a tiny embedder, pushed anchor folders."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

TASK = "movie_tagging"
TAGS = ("sci-fi", "comedy", "action", "romance", "classic", "fantasy", "dystopia", "violence")
WORDS = [
    "space",
    "ship",
    "crew",
    "alien",
    "planet",
    "robot",
    "heist",
    "detective",
    "city",
    "night",
    "love",
    "family",
    "war",
    "king",
    "dragon",
    "future",
    "past",
    "school",
    "friend",
    "secret",
    "island",
    "storm",
]


def movie_user(user_id: str, items: int = 6, seed: int = 0) -> dict:
    """A movie-tagging user with `items` profile items and one query."""
    rng = random.Random(f"{user_id}-{seed}")
    profile = [
        {
            "id": f"{user_id}-{n}",
            "tag": rng.choice(TAGS),
            "description": " ".join(rng.choice(WORDS) for _ in range(12)),
        }
        for n in range(items)
    ]
    query = [
        {
            "id": f"{user_id}-q",
            "input": " ".join(rng.choice(WORDS) for _ in range(12)),
            "gold": rng.choice(TAGS),
        }
    ]
    return {"user_id": user_id, "profile": profile, "query": query}


def write_users(path: Path, users: Sequence[dict]) -> Path:
    """Write a per-user JSON file."""
    path.write_text(json.dumps(list(users)))
    return path


def make_tiny_embedder(folder: Path, model_dir: Path) -> Path:
    """A sentence-transformers folder: the tiny Llama's encoder with mean pooling (64-d)."""
    from sentence_transformers import SentenceTransformer, models

    encoder = models.Transformer(str(model_dir))
    dim_of = (
        getattr(encoder, "get_embedding_dimension", None) or encoder.get_word_embedding_dimension
    )
    pooling = models.Pooling(dim_of(), pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(folder))
    return folder


def write_anchor_adapters(
    root: Path,
    shapes: dict[str, tuple[int, int]],
    ids: Sequence[str],
    rank: int = 8,
    seed: int = 0,
) -> list[Path]:
    """Save one random rank-`rank` PEFT folder per anchor id under `root`."""
    from mta.peft_io import save_peft_adapter
    from tests.fixtures_model import random_adapter

    folders = []
    for n, anchor_id in enumerate(ids):
        adapter = random_adapter(shapes, rank, seed=seed * 100 + n, scale=2.0)
        folders.append(save_peft_adapter(adapter, root / anchor_id))
    return folders


def dir_bytes(path: Path) -> int:
    """Total size of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def all_file_bytes(root: Path) -> set[bytes]:
    """The contents of every file under `root` (to prove bytes are gone)."""
    return {p.read_bytes() for p in root.rglob("*") if p.is_file()}
