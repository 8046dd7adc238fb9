"""Several `user adapt` processes writing to one SQLite registry at once all succeed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mta.registry.context import RegistryContext
from mta.registry.service import add_user, fsck, get_user, storage_report

from tests.registry.registry_env import TASK, movie_user

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


def test_parallel_adapt_on_sqlite(bank_registry: RegistryContext, tmp_path: Path):
    check_parallel_adapt(bank_registry, tmp_path)
