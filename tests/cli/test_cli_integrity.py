"""A blob that fails its digest, or a row without its blob: exit 3, never a silent load."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.support import TASK, CliEnv, Mta, local_blob_path


def blob_path(env: CliEnv, digest: str) -> Path:
    """Where the registry's local store keeps a blob."""
    return local_blob_path(env.store_url, digest)


def flip_byte(path: Path) -> None:
    """Change one byte of a (possibly read-only) blob file in place."""
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def adapted_user(cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path) -> dict:
    """User alice, fused and adapted; returns `user show --json`."""
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    assert mta("user", "adapt", "alice", "--shots", "2", "--epochs", "1").code == 0
    return json.loads(mta("user", "show", "alice", "--json").stdout)


def test_corrupted_stack_blob_fails_export_and_fsck(
    cli_env: CliEnv, mta: Mta, adapted_user: dict
) -> None:
    digest = adapted_user["stack"]["blob"]
    flip_byte(blob_path(cli_env, digest))
    out_dir = cli_env.root / "export"

    result = mta("user", "export", "alice", "--out", out_dir)
    assert result.code == 3, result.stderr
    assert len(result.error_lines()) == 1
    assert not (out_dir / "adapter_model.safetensors").exists()

    fsck = mta("fsck", "--json")
    assert fsck.code == 3
    report = fsck.json()
    assert report["ok"] is False
    assert [p["digest"] for p in report["corrupt"]] == [digest]


def test_corrupted_anchor_blob_fails_adapt(
    cli_env: CliEnv, mta: Mta, pushed_bank: dict, new_user_file: Path
) -> None:
    assert mta("user", "add", "alice", "--bank", TASK, "--profile", new_user_file).code == 0
    recipe = json.loads(mta("user", "fuse", "alice", "--json").stdout)
    bank = json.loads(mta("bank", "show", TASK, "--json").stdout)
    blobs = {a["anchor_id"]: a["adapter_blob"] for a in bank["anchors"]}
    for anchor in recipe["anchors"]:
        flip_byte(blob_path(cli_env, blobs[anchor["anchor_id"]]))
    before = cli_env.dump()

    result = mta("user", "adapt", "alice", "--shots", "2", "--epochs", "1")
    assert result.code == 3, result.stderr
    assert len(result.error_lines()) == 1
    assert cli_env.dump()[0] == before[0], "a stack row was written from a corrupt anchor"
    assert mta("fsck").code == 3


def test_missing_blob_fails_fsck(cli_env: CliEnv, mta: Mta, adapted_user: dict) -> None:
    digest = adapted_user["profile_blob"]
    path = blob_path(cli_env, digest)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
    path.unlink()

    fsck = mta("fsck", "--json")
    assert fsck.code == 3
    assert [p["digest"] for p in fsck.json()["missing"]] == [digest]
    human = mta("fsck")
    assert human.code == 3 and "missing" in human.stdout
