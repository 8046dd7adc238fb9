"""Helpers shared by the test folders: synthetic users, anchor folders, CLI runners, dumps.

Loaded by the root `conftest.py` as a plugin (for the `mta` fixture) and imported by the
tests and conftests of tests/cli, tests/registry, tests/server and tests/integration.
Heavy imports (torch, SQLAlchemy, the registry) stay inside the functions: this module is
loaded for every test run.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from mta.registry.context import RegistryContext
    from mta.registry.entities import BankVersion

TASK = "movie_tagging"
ANCHOR_IDS = ("a1", "a2", "a3", "a4")

_WORDS = (
    "space", "crew", "robot", "planet", "war", "love", "city", "detective", "secret",
    "family", "island", "king", "time", "future", "past", "dream", "ghost", "school",
    "music", "heist", "prison", "river", "storm", "village", "doctor",
)  # fmt: skip


# --- Synthetic data --------------------------------------------------------------------------


def movie_user(user_id: str, items: int = 6, seed: int = 0) -> dict[str, Any]:
    """A synthetic movie-tagging user in the per-user format, with one query."""
    from mta.tasks.movie_tagging import MOVIE_TAGS, QUESTION

    rng = random.Random(f"{user_id}/{seed}")
    # Each user prefers two tags, so users cluster and anchors differ.
    liked = rng.sample(MOVIE_TAGS, 2)

    def item(index: int) -> dict[str, str]:
        words = " ".join(rng.choice(_WORDS) for _ in range(12))
        return {"id": f"{user_id}-{index}", "tag": rng.choice(liked), "description": words}

    profile = [item(i) for i in range(items)]
    held_out = item(items)
    query_input = QUESTION.format(tags=", ".join(MOVIE_TAGS), description=held_out["description"])
    return {
        "user_id": user_id,
        "profile": profile,
        "query": [{"id": f"{user_id}-q", "input": query_input, "gold": held_out["tag"]}],
    }


def write_users(path: Path, users: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> Path:
    """Write one user (a JSON object) or several (a per-user JSON list) to `path`."""
    data = dict(users) if isinstance(users, Mapping) else [dict(u) for u in users]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_anchor_adapters(
    root: Path,
    shapes: Mapping[str, tuple[int, int]],
    anchor_ids: Sequence[str],
    *,
    rank: int = 8,
    seed: int = 0,
) -> list[Path]:
    """Save one random rank-`rank` PEFT adapter per anchor id into `root/<anchor id>`."""
    from mta.peft_io import save_peft_adapter
    from tests.fixtures_model import random_adapter

    folders = []
    for n, anchor_id in enumerate(anchor_ids):
        adapter = random_adapter(dict(shapes), rank, seed=100 * seed + n, scale=2.0)
        folders.append(save_peft_adapter(adapter, root / anchor_id))
    return folders


def write_anchor_bank(
    root: Path,
    shapes: Mapping[str, tuple[int, int]],
    anchor_ids: Sequence[str] = ANCHOR_IDS,
    *,
    items: int = 9,
    seed: int = 0,
) -> tuple[list[Path], Path]:
    """Anchor folders `root/<id>` and their profiles `root/profiles.json` (`items` each)."""
    folders = write_anchor_adapters(root, shapes, anchor_ids, seed=seed)
    profiles = write_users(root / "profiles.json", [movie_user(i, items) for i in anchor_ids])
    return folders, profiles


# --- Registry (service level) ----------------------------------------------------------------


def open_registry(
    root: Path, db_url: str | None = None, store_url: str | None = None
) -> RegistryContext:
    """Open and initialize a registry under `root` (SQLite + local store unless given)."""
    from mta.registry.context import RegistryContext
    from mta.registry.service import init_registry

    default_db, default_store, cache = RegistryContext.folder_locations(root)
    ctx = RegistryContext.open(db_url or default_db, store_url or default_store, cache)
    init_registry(ctx)
    return ctx


def push_folders(
    ctx: RegistryContext,
    folders: Sequence[Path],
    profiles: Path,
    base_model: Path | str,
    embedder: Path | str,
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


# Each child fuses then adapts its own user: recipe rows, blob rows and stack rows from
# different processes interleave in one database.
_ADAPT_CHILD = """
import sys
from mta.registry.context import RegistryContext
from mta.registry.service import AdaptRequest, FuseRequest, adapt_user, fuse_user
ctx = RegistryContext.open(sys.argv[1], sys.argv[2], sys.argv[3])
fuse_user(ctx, sys.argv[4], FuseRequest(top_k=2))
stack = adapt_user(ctx, sys.argv[4], AdaptRequest(shots=2, max_steps=1))
print(stack.stack_id)
"""


def run_together(
    commands: Sequence[Sequence[str]], env: Mapping[str, str] | None = None
) -> list[str]:
    """Start every command at once (with `env` added); assert each exits 0; their stdouts."""
    children = [
        subprocess.Popen(
            list(command),
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
        outputs.append(out)
    return outputs


def run_parallel_adapts(ctx: RegistryContext, user_ids: list[str], cache_dir: Path) -> list[int]:
    """Adapt each user in its own process, all started together; returns their stack ids."""
    child = [sys.executable, "-c", _ADAPT_CHILD, ctx.db_url, ctx.store_url, str(cache_dir)]
    outputs = run_together([[*child, uid] for uid in user_ids])
    return [int(out.strip().splitlines()[-1]) for out in outputs]


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


# --- Registry contents -----------------------------------------------------------------------

RegistryDump = tuple[dict[str, list[str]], list[tuple[str, int]]]


def registry_dump(db_url: str, store_url: str) -> RegistryDump:
    """Every row of every table, and every stored file (or blob) with its size.

    A `file://` store lists every file under its folder, temporary ones included; another
    store lists its blobs. Equal dumps mean a command changed nothing.
    """
    from sqlalchemy import create_engine, inspect, text

    from mta.storage import open_store

    engine = create_engine(db_url)
    try:
        rows: dict[str, list[str]] = {}
        with engine.connect() as connection:
            for table in sorted(inspect(connection).get_table_names()):
                result = connection.execute(text(f'SELECT * FROM "{table}"'))
                rows[table] = sorted(repr(tuple(r)) for r in result)
    finally:
        engine.dispose()
    if store_url.startswith("file://"):
        root = Path(store_url.removeprefix("file://"))
        listing = sorted(
            (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
        )
    else:
        listing = sorted((info.digest, info.size) for info in open_store(store_url).iter_blobs())
    return rows, listing


def local_blob_path(store_url: str, digest: str) -> Path:
    """Where a `file://` store keeps the blob `digest`."""
    from mta.storage import LocalBlobStore, open_store

    store = open_store(store_url)
    assert isinstance(store, LocalBlobStore), store_url
    return store.path_for(digest)


def all_file_bytes(root: Path) -> set[bytes]:
    """The contents of every file under `root` (to prove bytes are gone)."""
    return {p.read_bytes() for p in root.rglob("*") if p.is_file()}


# --- The CLI ---------------------------------------------------------------------------------


@dataclass
class Result:
    """What one CLI run produced."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.stdout)

    def error_lines(self) -> list[str]:
        """The stderr lines that start with `Error:`."""
        return [line for line in self.stderr.splitlines() if line.startswith("Error:")]


Mta = Callable[..., Result]


def ok(result: Result) -> Any:
    """Assert a zero exit with parseable JSON on stdout; return the JSON."""
    assert result.code == 0, result.stderr
    return result.json()


def invoke(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """Run `mta argv` in this process through `main` (so errors map to exit codes)."""
    from mta.cli.app import main

    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.fixture
def mta(capsys: pytest.CaptureFixture[str]) -> Mta:
    """`mta(*argv)` runs the CLI in this process and returns its exit code and output."""

    def run(*argv: Any) -> Result:
        return invoke([str(a) for a in argv], capsys)

    return run


def mta_command(*argv: str | Path) -> list[str]:
    """The argv that runs `mta` in a fresh interpreter of this virtualenv."""
    return [sys.executable, "-m", "mta.cli.app", *(str(a) for a in argv)]


def run_subprocess(
    argv: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 600,
) -> Result:
    """Run `mta argv` as a child process with `env` added to the environment."""
    completed = subprocess.run(
        mta_command(*argv),
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


@dataclass
class CliEnv:
    """Where one test's registry lives, and the models its banks use."""

    root: Path
    db_url: str
    store_url: str
    cache_dir: Path
    base_model: str
    embedder: str

    def env(self) -> dict[str, str]:
        """Environment variables that point a child `mta` process at this registry."""
        return {
            "MTA_DB_URL": self.db_url,
            "MTA_STORE_URL": self.store_url,
            "MTA_CACHE_DIR": str(self.cache_dir),
        }

    def dump(self) -> RegistryDump:
        """All registry rows and stored files (equal dumps: nothing changed)."""
        return registry_dump(self.db_url, self.store_url)


def make_cli_env(
    root: Path, db_url: str, store_url: str, base_model: Path, embedder: Path
) -> CliEnv:
    """A CliEnv whose cache lives under `root`."""
    return CliEnv(
        root=root,
        db_url=db_url,
        store_url=store_url,
        cache_dir=root / "cache",
        base_model=str(base_model),
        embedder=str(embedder),
    )


def push_bank_argv(env: CliEnv, shapes: Mapping[str, tuple[int, int]]) -> list[str]:
    """Write random rank-8 anchors and profiles under `env.root / "anchors"`; the push argv."""
    folders, profiles = write_anchor_bank(env.root / "anchors", shapes)
    return [
        "bank", "push", TASK, *map(str, folders),
        "--profiles", str(profiles),
        "--base-model", env.base_model,
        "--embedder", env.embedder,
        "--json",
    ]  # fmt: skip


def adapt_in_parallel(env: CliEnv, mta: Mta, user_ids: Sequence[str]) -> list[Any]:
    """Add each user through `mta`, then adapt all at once in child processes; their JSON."""
    for user_id in user_ids:
        profile = write_users(env.root / f"{user_id}.json", movie_user(user_id, 5, seed=4))
        ok(mta("user", "add", user_id, "--bank", TASK, "--profile", profile, "--json"))
    argv = ("--shots", "3", "--epochs", "1", "--json")
    outputs = run_together([mta_command("user", "adapt", u, *argv) for u in user_ids], env.env())
    return [json.loads(out) for out in outputs]


def assert_rejected(env: CliEnv, mta: Mta, *argv: Any, code: int = 1) -> Result:
    """Run argv; assert the exit code, one `Error:` line, no traceback and an unchanged registry.

    Args:
        env: the registry the command runs against.
        mta: the in-process CLI runner fixture.
        argv: the command line.
        code: the expected exit code.

    Returns:
        The run's result.
    """
    before = env.dump()
    result = mta(*argv)
    assert result.code == code, (argv, result.code, result.stdout, result.stderr)
    assert len(result.error_lines()) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert env.dump() == before, f"{argv} changed the registry"
    return result
