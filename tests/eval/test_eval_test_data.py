"""`mta eval --test-data`: the bank's pool from --data, every user of the test file tested.

Runs on the hand-written product_rating fixture (six real users) with the tiny random
model and a tiny random embedder, so the bank and the MTA methods run in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mta.evaluation.data import load_test_users
from mta.evaluation.protocol import split_given
from mta.evaluation.statistics import EvaluationError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "lamp" / "product_rating"


def _fixture_users() -> list[dict]:
    from mta.lamp_data import convert_official

    return convert_official(FIXTURE / "questions.json", FIXTURE / "outputs.json")


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, list[dict], list[dict]]:
    """A pool file with four real users and a test file with the other two."""
    from mta.lamp_data import save_users

    users = _fixture_users()
    pool, test = users[:4], users[4:]
    return (save_users(pool, tmp_path / "pool.json"), save_users(test, tmp_path / "test.json"),
            pool, test)  # fmt: skip


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `mta argv` through `main`, so errors map to exit codes."""
    from mta.cli.app import main

    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_test_user_is_tested_and_the_pool_is_unsplit(files):
    _, _, pool, test = files
    split = split_given(pool, test, seed=3, limit=None)
    assert (split.n_pool_groups, split.n_test_groups) == (4, 2)
    assert [u["user_id"] for u in split.pool] == [u["user_id"] for u in pool]
    assert {u["user_id"] for u in split.test} == {u["user_id"] for u in test}
    assert split_given(pool, test, seed=3, limit=1).test == split.test[:1]


def test_a_real_user_in_both_files_is_refused(files, tmp_path):
    from mta.lamp_data import save_users

    pool_path, _, pool, test = files
    # Another LaMP entry of pool user 0: other query, the same profile items.
    twin = {**pool[0], "user_id": "twin", "query": test[0]["query"]}
    both = save_users([test[0], twin], tmp_path / "overlap.json")
    with pytest.raises(EvaluationError, match="user twin is the same real user as user"):
        load_test_users(both, pool, pool_path, None)
    assert load_test_users(files[1], pool, pool_path, None) == test


def test_cli_refuses_overlap_with_one_line_and_exit_1(files, tmp_path, capsys):
    from mta.lamp_data import save_users

    pool_path, _, pool, test = files
    twin = {**pool[1], "user_id": "twin", "query": test[1]["query"]}
    overlap = save_users([twin], tmp_path / "overlap.json")
    code, out, err = _main(
        ["eval", "--task", "product_rating", "--data", str(pool_path),
         "--test-data", str(overlap), "--methods", "retrieved"],
        capsys,
    )  # fmt: skip
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "same real user" in lines[0] and "twin" in lines[0]
    missing = tmp_path / "missing.json"
    code, _, err = _main(
        ["eval", "--task", "product_rating", "--data", str(pool_path),
         "--test-data", str(missing)],
        capsys,
    )  # fmt: skip
    assert code == 1 and "--test-data" in err and "no such file" in err


def test_eval_on_a_population_the_bank_was_not_built_from(
    files, tmp_path, tiny_model_dir, tiny_embedder_dir
):
    from typer.testing import CliRunner

    from mta.cli.eval import eval_app
    from mta.registry import service
    from mta.registry.context import RegistryContext

    pool_path, test_path, pool, test = files
    out = tmp_path / "result.json"
    args = [
        "--task", "product_rating", "--data", str(pool_path), "--test-data", str(test_path),
        "--methods", "base,mta-fuse,mta,retrieved,user-majority",
        "--base-model", str(tiny_model_dir), "--embedder", str(tiny_embedder_dir),
        "--anchors", "2", "--shots", "3", "--user-epochs", "1", "--max-steps", "1",
        "--max-new-tokens", "4", "--resamples", "20", "--seeds", "2",
        "--workdir", str(tmp_path / "reg"), "--json-out", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(eval_app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["config"]["test_data"] == str(test_path)
    assert res["config"]["data"] == str(pool_path)
    for seed, split in zip((0, 1), res["splits"], strict=True):
        assert split["seed"] == seed
        assert (split["pool_users"], split["test_users"], split["test_entries"]) == (4, 2, 2)
        assert split["anchors"] == 2
    assert {it["user_id"] for it in res["items"]} == {u["user_id"] for u in test}
    assert res["subsets"]["query"]["n_items"] == 2 * len(test)  # one query per entry per seed
    for item in res["items"]:
        assert set(item["predictions"]) == {"base", "mta-fuse", "mta", "retrieved", "user-majority"}
    reg = tmp_path / "reg"
    with RegistryContext.open(f"sqlite:///{reg / 'registry.db'}", f"file://{reg / 'store'}") as ctx:
        assert service.list_users(ctx) == []  # evaluation users are removed after scoring
        assert len(service.list_banks(ctx)) == 2  # one bank version per seed, same pool
