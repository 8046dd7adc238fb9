"""Exported and published adapters are readable by an engine running as another user."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from mta.registry.publish.targets import MANIFEST_NAME
from mta.registry.service import (
    AdaptRequest,
    adapt_user,
    adapter_identity,
    add_user,
    export_user,
    publish_users,
)
from tests.support import TASK, movie_user


def _modes(root: Path) -> dict[str, int]:
    """Relative path -> permission bits of every file and folder under `root` (root too)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.stat().st_mode)
    return found


def _assert_engine_readable(root: Path) -> None:
    for name, mode in _modes(root).items():
        is_dir = (root / name).is_dir()
        assert mode == (0o755 if is_dir else 0o644), f"{name}: {oct(mode)}"


def test_exported_and_published_files_are_0644_in_0755_folders(bank_registry, tmp_path):
    add_user(bank_registry, user_id="eve", task=TASK, profile=movie_user("eve", 6))
    adapt_user(bank_registry, "eve", AdaptRequest(shots=2, max_steps=1))
    export = export_user(bank_registry, adapter_identity(bank_registry, "eve"), tmp_path / "out")
    _assert_engine_readable(export.path)
    _assert_engine_readable(export.cache_path)
    name = publish_users(bank_registry, str(tmp_path / "published")).names["eve"]
    _assert_engine_readable(tmp_path / "published" / name)
    assert stat.S_IMODE((tmp_path / "published" / MANIFEST_NAME).stat().st_mode) & 0o044


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root and runuser"
)
def test_another_uid_reads_a_published_adapter(bank_registry):
    add_user(bank_registry, user_id="fay", task=TASK, profile=movie_user("fay", 6))
    adapt_user(bank_registry, "fay", AdaptRequest(shots=2, max_steps=1))
    # A world-traversable folder, as a serving engine's adapter root would be.
    root = Path(tempfile.mkdtemp(prefix="mta-modes-"))
    try:
        root.chmod(0o755)
        folder = root / "loras" / publish_users(bank_registry, str(root / "loras")).names["fay"]
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            done = subprocess.run(
                ["runuser", "-u", "nobody", "--", "cat", str(folder / name)],
                capture_output=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode()
            assert done.stdout == (folder / name).read_bytes()
    finally:
        shutil.rmtree(root, ignore_errors=True)
