"""Bad values typed by users: markup in names, unreadable profiles, --out folders, integers
too large for torch or SQL, missing blobs.

Every case asserts the exit code, exactly one `Error:` line, no traceback and an unchanged
registry (rows and store listing, see `assert_rejected` in tests/support.py).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support import TASK, CliEnv, Mta, assert_rejected, local_blob_path, movie_user


@pytest.fixture
def alice(cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path) -> Path:
    """User alice added and fused; returns her profile file."""
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    assert mta("user", "fuse", "alice").code == 0
    return new_user_file


# --- rich markup and emoji codes in user-supplied values: printed literally ------------------

MARKUP_CASES = [
    (["bank", "show", "x[/y]"], "x[/y]"),
    (["bank", "show", "[bold]t"], "[bold]t"),
    (["bank", "show", TASK, "--alias", "p[/]"], "p[/]"),
    (["bank", "alias", "x[/y]", "1", "prod"], "x[/y]"),
    (["bank", "alias", TASK, "1", "p[/x]"], "p[/x]"),
    (["user", "show", "x[/y]"], "x[/y]"),
    (["user", "show", ":warning:"], ":warning:"),
    (["user", "delete", "a[b]c"], "a[b]c"),
    (["user", "delete", "[red]z[/red]"], "[red]z[/red]"),
    (["user", "fuse", "x[/y]"], "x[/y]"),
    (["user", "fuse", "alice", "--method", "m[/x]"], "m[/x]"),
    (["user", "fuse", "alice", "--weight-rule", "[red]w"], "[red]w"),
    (["user", "adapt", "x[/y]", "--shots", "1"], "x[/y]"),
    (["user", "export", "x[/y]", "--out", "{root}/o"], "x[/y]"),
    (["user", "add", "x[/y]", "--bank", TASK, "--profile", "{profile}"], "x[/y]"),
    (["user", "add", "bob", "--bank", "t[/x]", "--profile", "{profile}"], "t[/x]"),
    (["user", "add", "bob", "--bank", f"{TASK}@v[/x]", "--profile", "{profile}"], "v[/x]"),
    (["user", "add", "bob", "--bank", TASK, "--profile", "{root}/[/p].json"], "[/p].json"),
]


@pytest.mark.parametrize(("argv", "literal"), MARKUP_CASES, ids=lambda v: str(v))
def test_markup_in_values_is_printed_literally(
    cli_env: CliEnv, mta: Mta, alice: Path, argv: list[str], literal: str
) -> None:
    filled = [a.format(root=cli_env.root, profile=alice) for a in argv]
    result = assert_rejected(cli_env, mta, *filled)
    assert literal in result.error_lines()[0]


def test_fsck_prints_store_errors_literally(
    cli_env: CliEnv, mta: Mta, alice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mta.storage import BlobCorruptedError
    from mta.storage.local import LocalBlobStore

    def failing_verify(self: LocalBlobStore, digest: str) -> None:
        # Short words: the table wraps long details at the terminal width.
        raise BlobCorruptedError("S3: [/:] [b]")

    monkeypatch.setattr(LocalBlobStore, "verify", failing_verify)
    result = mta("fsck")
    assert result.code == 3, result.stderr
    assert "Traceback" not in result.stderr
    assert "[/:]" in result.stdout and "[b]" in result.stdout


# --- profile files that cannot be read: one line naming the file ------------------------------


def _deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def _deep_inside_item(levels: int) -> str:
    user = movie_user("bob", 4, seed=0)
    user["profile"][0]["extra"] = "@@"
    return json.dumps(user).replace('"@@"', _deep(levels))


PROFILE_FILES = {
    "folder": None,
    "nested-100k": _deep(100_000).encode(),
    "nested-5000-in-item": _deep_inside_item(5000).encode(),
    "latin-1": '{"user_id": "b\u00e9b"}'.encode("latin-1"),
    "utf-16": json.dumps(movie_user("bob", 4, seed=0)).encode("utf-16"),
    "binary": bytes(range(256)) * 4,
    "nul-bytes": b"\x00" * 64,
    "truncated-utf-8": '{"user_id": "\u00e9'.encode()[:-1],
}


@pytest.mark.parametrize("kind", list(PROFILE_FILES))
def test_unreadable_profile_names_the_file(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, kind: str
) -> None:
    path = cli_env.root / f"profile-{kind}"
    content = PROFILE_FILES[kind]
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    result = assert_rejected(cli_env, mta, "user", "add", "bob", "--bank", TASK, "--profile", path)
    assert str(path) in result.error_lines()[0]


def test_profile_on_stdin_nested_too_deep(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(_deep(100_000)))
    result = assert_rejected(cli_env, mta, "user", "add", "bob", "--bank", TASK, "--profile", "-")
    assert "stdin" in result.error_lines()[0]


# --- export --out that cannot become a folder -------------------------------------------------


@pytest.mark.parametrize("target", ["file", "file/sub", "file/sub/deeper"])
def test_export_out_over_a_file(cli_env: CliEnv, mta: Mta, alice: Path, target: str) -> None:
    existing = cli_env.root / "file"
    existing.write_text("keep me", encoding="utf-8")
    result = assert_rejected(
        cli_env, mta, "user", "export", "alice", "--out", cli_env.root / target
    )
    assert str(existing) in result.error_lines()[0]
    assert existing.read_text(encoding="utf-8") == "keep me"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a mounted /proc")
@pytest.mark.parametrize("target", ["/proc/nope/x", "/proc/self/nope"])
def test_export_out_that_cannot_be_created_writes_nothing(
    cli_env: CliEnv, mta: Mta, alice: Path, target: str
) -> None:
    # The export cache is not in the registry dump: it must not gain an entry either.
    cache = cli_env.cache_dir / "adapters"
    before = sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []
    result = assert_rejected(cli_env, mta, "user", "export", "alice", "--out", target)
    assert target in result.error_lines()[0]
    assert (sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []) == before


# --- integers beyond 64 bits: typer's usage error (exit 2) before any work ------------------

HUGE = "99999999999999999999999"
_BUILD = ["bank", "build", TASK, "--data", "{root}/no-users.json"]
_EVAL = ["eval", "--task", TASK, "--data", "{root}/no-users.json"]
_ADAPT = ["user", "adapt", "alice", "--epochs", "1"]
# (argv, the option the error names); old runs overflowed in torch or SQLite, or trained on.
HUGE_INTEGERS = [
    ([*_BUILD, "--anchors", "2", "--seed", HUGE], "--seed"),
    ([*_BUILD, "--anchors", HUGE], "--anchors"),
    ([*_BUILD, "--anchors", "2", "--epochs", HUGE], "--epochs"),
    ([*_BUILD, "--anchors", "2", "--rank", HUGE], "--rank"),
    (["bank", "show", TASK, "--version", HUGE], "--version"),
    (["bank", "alias", TASK, HUGE, "prod"], "version"),
    ([*_ADAPT, "--shots", "2", "--seed", HUGE], "--seed"),
    ([*_ADAPT, "--shots", "2", "--seed", "-1"], "--seed"),
    ([*_ADAPT, "--shots", "2", "--rank", HUGE], "--rank"),
    ([*_ADAPT, "--shots", "2", "--max-steps", HUGE], "--max-steps"),
    ([*_ADAPT, "--shots", HUGE, "--max-steps", "1"], "--shots"),
    (["user", "fuse", "alice", "--top-k", HUGE], "--top-k"),
    (["user", "export", "alice", "--out", "{root}/o", "--max-rank", HUGE], "--max-rank"),
    ([*_EVAL, "--seed", HUGE], "--seed"),
    ([*_EVAL, "--shots", HUGE], "--shots"),
    ([*_EVAL, "--top-k", HUGE], "--top-k"),
    ([*_EVAL, "--max-steps", HUGE], "--max-steps"),
    (["gc", "--grace", HUGE], "--grace"),
]


@pytest.mark.parametrize(
    ("argv", "option"),
    HUGE_INTEGERS,
    ids=[" ".join([*(a for a in argv[:2] if not a.startswith("-")), option,
                   "-1" if "-1" in argv else "huge"]) for argv, option in HUGE_INTEGERS],
)  # fmt: skip
def test_huge_integers_are_usage_errors(
    cli_env: CliEnv, mta: Mta, alice: Path, argv: list[str], option: str
) -> None:
    filled = [a.format(root=cli_env.root) for a in argv]
    result = assert_rejected(cli_env, mta, *filled, code=2)
    assert f"'{option}'" in result.error_lines()[0]


DEVICES = [
    ([*_ADAPT, "--shots", "2", "--device", "gpu"], 2, "unknown device 'gpu'"),
    ([*_ADAPT, "--shots", "2", "--device", "cuda:x"], 2, "valid: auto, cpu, cuda, cuda:N"),
    ([*_ADAPT, "--shots", "2", "--device", "cuda"], 1, "torch sees no CUDA device"),
    ([*_ADAPT, "--shots", "2", "--device", "cuda:3"], 1, "torch sees no CUDA device"),
    ([*_BUILD, "--anchors", "2", "--device", "tpu"], 2, "unknown device 'tpu'"),
    ([*_EVAL, "--device", "npu"], 2, "unknown device 'npu'"),
]


@pytest.mark.parametrize(
    ("argv", "code", "message"), DEVICES, ids=[f"{a[1]}-{a[-1]}" for a, _, _ in DEVICES]
)
def test_a_device_that_is_misspelled_or_absent_is_one_line(
    cli_env: CliEnv, mta: Mta, alice: Path, argv: list[str], code: int, message: str
) -> None:
    if code == 1:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
    filled = [a.format(root=cli_env.root) for a in argv]
    result = assert_rejected(cli_env, mta, *filled, code=code)
    assert message in result.error_lines()[0]


def test_the_cli_integer_bound_is_the_registry_seed_bound() -> None:
    from mta.cli.options import MAX_INT
    from mta.registry.requests import MAX_SEED

    assert MAX_INT == MAX_SEED


# --- a row whose blob is missing: integrity, exit 3 -------------------------------------------


def _remove_blob(env: CliEnv, digest: str) -> None:
    path = local_blob_path(env.store_url, digest)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    path.unlink()


@pytest.mark.parametrize(
    "argv",
    [
        ["user", "export", "alice", "--out", "{root}/out"],
        ["user", "adapt", "alice", "--shots", "1", "--epochs", "1"],
        ["user", "fuse", "alice"],
    ],
    ids=lambda argv: " ".join(argv[:2]),
)
def test_missing_blob_exits_3(cli_env: CliEnv, mta: Mta, alice: Path, argv: list[str]) -> None:
    bank = json.loads(mta("bank", "show", TASK, "--json").stdout)
    for digest in [bank["index_blob"], *(a["adapter_blob"] for a in bank["anchors"])]:
        _remove_blob(cli_env, digest)
    filled = [a.format(root=cli_env.root) for a in argv]
    result = assert_rejected(cli_env, mta, *filled, code=3)
    assert "not found" in result.error_lines()[0]
