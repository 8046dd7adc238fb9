"""Builders for registry tests: synthetic LaMP users, pushed anchor folders, parallel adapts."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mta.registry.context import RegistryContext
from mta.registry.entities import BankVersion

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


def push_folders(
    ctx: RegistryContext,
    folders: Sequence[Path],
    profiles: Path,
    base_model: Path,
    embedder: Path,
) -> BankVersion:
    """Push anchor folders with their profiles as a new movie_tagging bank version."""
    from mta.registry.service import push_bank

    return push_bank(
        ctx,
        task=TASK,
        adapter_dirs=folders,
        profiles_path=profiles,
        base_model=str(base_model),
        embedder=str(embedder),
    )


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


# Each child fuses then adapts its own user: recipe rows, blob rows and stack rows from
# different processes interleave in one database.
CHILD = """
import sys
from mta.registry.context import RegistryContext
from mta.registry.service import adapt_user, fuse_user
ctx = RegistryContext.open(sys.argv[1], sys.argv[2], sys.argv[3])
fuse_user(ctx, sys.argv[4], top_k=2)
stack = adapt_user(ctx, sys.argv[4], shots=2, max_steps=1)
print(stack.stack_id)
"""


def run_parallel_adapts(ctx: RegistryContext, user_ids: list[str], cache_dir: Path) -> list[int]:
    """Adapt each user in its own process, all started together; returns their stack ids."""
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, ctx.db_url, ctx.store_url, str(cache_dir), uid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for uid in user_ids
    ]
    stack_ids = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
        stack_ids.append(int(out.strip().splitlines()[-1]))
    return stack_ids


def check_parallel_adapt(ctx: RegistryContext, tmp_path: Path, n: int = 3) -> None:
    """Add `n` users, adapt them in parallel processes, check every row and blob landed."""
    from mta.registry.service import add_user, fsck, get_user, storage_report

    user_ids = [f"p{i}" for i in range(n)]
    for uid in user_ids:
        add_user(ctx, user_id=uid, task=TASK, profile=movie_user(uid, 5))
    stack_ids = run_parallel_adapts(ctx, user_ids, tmp_path / "child-cache")
    assert len(set(stack_ids)) == n
    for uid in user_ids:
        detail = get_user(ctx, uid)
        assert detail.num_stacks == 1 and detail.num_recipes == 1
        assert detail.stack.stack_id in stack_ids
    assert storage_report(ctx)["stacks"] == n
    assert fsck(ctx).ok
