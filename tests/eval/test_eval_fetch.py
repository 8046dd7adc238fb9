"""`mta data fetch` / `convert`: download with checksums, offline error, conversion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mta.cli.data import data_app
from mta.cli.errors import describe, exit_code_for
from mta.errors import UnknownNameError
from mta.lamp_fetch import FetchError, fetch_task, task_paths

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "lamp"


def _mirror(root: Path, task: str, number: int) -> str:
    """Lay the hand-written fixtures out like the LaMP host and return its file:// URL."""
    folder = root / f"LaMP_{number}" / "dev"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / task / "questions.json", folder / "dev_questions.json")
    shutil.copy(FIXTURES / task / "outputs.json", folder / "dev_outputs.json")
    return f"file://{root}"


def test_offline_fetch_fails_with_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("MTA_LAMP_BASE_URL", raising=False)
    # This machine has no internet; an unroutable host makes the test hold anywhere.
    with pytest.raises(FetchError) as info:
        fetch_task("movie_tagging", tmp_path, base_url="https://lamp.invalid/downloads")
    message = describe(info.value)
    assert message.startswith("cannot reach lamp.invalid: are you offline?")
    assert "\n" not in message
    assert exit_code_for(info.value) == 1
    assert not list((tmp_path / "movie_tagging").glob("*.part"))


def test_fetch_downloads_records_unpinned_digests_and_converts(tmp_path):
    base = _mirror(tmp_path / "host", "product_rating", 3)
    result = fetch_task("product_rating", tmp_path / "data", base_url=base)
    assert result.n_users == 6
    users = json.loads(result.users_path.read_text())
    assert users[0]["query"][0]["gold"] in {"1", "2", "3", "4", "5"}
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert [f["status"] for f in manifest["files"]] == ["unpinned", "unpinned"]
    assert manifest["files"][0]["url"].endswith("LaMP_3/dev/dev_questions.json")
    assert len(manifest["files"][0]["sha256"]) == 64
    # A second fetch into the same folder is verified against the recorded digests.
    again = fetch_task("product_rating", tmp_path / "data", base_url=base)
    assert [f.status for f in again.files] == ["verified", "verified"]


def test_fetch_refuses_a_file_that_changed_since_it_was_recorded(tmp_path):
    host = tmp_path / "host"
    base = _mirror(host, "citation", 1)
    fetch_task("citation", tmp_path / "data", base_url=base)
    outputs = host / "LaMP_1" / "dev" / "dev_outputs.json"
    outputs.write_text(outputs.read_text().replace("[1]", "[2]"))
    with pytest.raises(FetchError, match="does not match the expected"):
        fetch_task("citation", tmp_path / "data", base_url=base)


def test_fetch_reports_a_missing_remote_file(tmp_path):
    (tmp_path / "host").mkdir()
    with pytest.raises(FetchError, match="no such file"):
        fetch_task("citation", tmp_path / "data", base_url=f"file://{tmp_path / 'host'}")


def test_task_paths_follow_the_official_layout():
    assert task_paths("news_headline", "train") == [
        "LaMP_4/train/train_questions.json",
        "LaMP_4/train/train_outputs.json",
    ]
    with pytest.raises(UnknownNameError, match="valid: dev, train"):
        task_paths("citation", "test")
    with pytest.raises(UnknownNameError, match="valid: citation"):
        task_paths("lamp9", "dev")


def test_cli_fetch_via_mirror_and_convert(tmp_path, monkeypatch):
    base = _mirror(tmp_path / "host", "scholarly_title", 5)
    monkeypatch.setenv("MTA_LAMP_BASE_URL", base)
    runner = CliRunner()
    result = runner.invoke(
        data_app, ["fetch", "--task", "scholarly_title", "--dest", str(tmp_path / "d"), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["users"] == 6 and data["files"][1]["status"] == "unpinned"
    out = tmp_path / "users.json"
    result = runner.invoke(
        data_app,
        [
            "convert",
            str(FIXTURES / "scholarly_title" / "questions.json"),
            str(FIXTURES / "scholarly_title" / "outputs.json"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(json.loads(out.read_text())) == 6
