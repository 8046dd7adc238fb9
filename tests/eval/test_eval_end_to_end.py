"""`mta eval` end to end on all five LaMP tasks with the tiny random model.

The two real tasks use the shared LaMP users (../shared/lamp or $MTA_LAMP_DIR); the
other three convert the hand-written official-format fixtures. Training is capped at
one step and two test entries, so each task runs in seconds; the numbers are noise, the
test checks the protocol and the output schema. Marked slow: the bank and user
embeddings need the real MiniLM weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mta.cli.app import app
from mta.cli.eval import eval_app
from mta.evaluation.options import DEFAULT_METHODS

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "lamp"
SHARED = Path(os.environ.get("MTA_LAMP_DIR") or ROOT.parent / "shared" / "lamp")
REAL_TASKS = ("movie_tagging", "news_headline")
FIXTURE_TASKS = ("citation", "product_rating", "scholarly_title")


def _users_file(task: str, tmp_path: Path) -> Path:
    if task in REAL_TASKS:
        path = SHARED / task / "users.json"
        if not path.is_file():
            pytest.skip(f"shared LaMP users for {task} not present at {path}")
        return path
    from mta.lamp_data import convert_official, save_users

    users = convert_official(FIXTURES / task / "questions.json", FIXTURES / task / "outputs.json")
    return save_users(users, tmp_path / f"{task}.json")


def _run(task: str, tmp_path: Path, tiny_model_dir: Path, *extra: str) -> dict:
    out = tmp_path / "result.json"
    args = [
        "--task", task, "--data", str(_users_file(task, tmp_path)),
        "--base-model", str(tiny_model_dir),
        "--limit", "2", "--anchors", "2", "--shots", "3", "--epochs", "1",
        "--user-epochs", "1", "--max-steps", "1", "--max-new-tokens", "4",
        "--resamples", "50", "--workdir", str(tmp_path / "reg"), "--json-out", str(out),
        *extra,
    ]  # fmt: skip
    result = CliRunner().invoke(eval_app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("task", REAL_TASKS + FIXTURE_TASKS)
def test_eval_runs_every_method_on_every_task(task, tmp_path, tiny_model_dir):
    from mta.tasks import get_task

    res = _run(task, tmp_path, tiny_model_dir)
    task_obj = get_task(task)
    expected = [m for m in DEFAULT_METHODS if task_obj.labels or m != "user-majority"]
    assert res["task"] == task and res["methods"] == expected
    assert res["skipped_methods"] == ([] if task_obj.labels else ["user-majority"])
    assert res["reference"] == "mta"
    assert res["metrics"] == list(task_obj.metrics)
    (split,) = res["splits"]
    assert split["test_entries"] == 2 and split["anchors"] == 2
    query, every = res["subsets"]["query"], res["subsets"]["all"]
    assert query["n_items"] == split["query_items"] == 2
    # Shots below the profile length: the non-shot profile items are scored too.
    assert every["n_items"] == split["query_items"] + split["profile_items"] > query["n_items"]
    for summary in (query, every):
        assert set(summary["methods"]) == set(expected)
        assert set(summary["differences"]) == set(expected) - {"mta"}
        for method in expected:
            for metric in task_obj.metrics:
                iv = summary["methods"][method][metric]
                assert iv["low"] <= iv["value"] <= iv["high"]
    assert len(res["items"]) == every["n_items"]
    for item in res["items"]:
        assert set(item["predictions"]) == set(expected)
        assert item["kind"] in {"query", "profile"}
    assert res["eval_run_id"] >= 1
    assert res["config"]["shots"] == 3 and res["timings_s"]["total"] > 0


@pytest.mark.slow
def test_eval_records_the_run_writes_a_plot_and_cleans_up_users(tmp_path, tiny_model_dir):
    from mta.registry import service
    from mta.registry.context import RegistryContext

    plot = tmp_path / "chart.png"
    res = _run(
        "product_rating", tmp_path, tiny_model_dir,
        "--methods", "base,mta,retrieved,user-majority", "--plot", str(plot),
    )  # fmt: skip
    assert plot.read_bytes()[:4] == b"\x89PNG"
    reg = tmp_path / "reg"
    with RegistryContext.open(f"sqlite:///{reg / 'registry.db'}", f"file://{reg / 'store'}") as ctx:
        runs = service.list_eval_runs(ctx)
        assert [r["id"] for r in runs] == [res["eval_run_id"]]
        assert set(runs[0]["results"]["subsets"]) == {"query", "all"}
        assert service.list_users(ctx) == []  # eval users are removed after scoring
        assert len(service.list_banks(ctx)) == 1
    # The trivial baselines are computed from the data alone, identically for every run.
    for item in res["items"]:
        assert item["predictions"]["user-majority"] in {"1", "2", "3", "4", "5"}


def test_eval_without_the_bank_needs_no_embedder_and_checkpoints(tmp_path, tiny_model_dir):
    checkpoint = tmp_path / "partial.json"
    res = _run(
        "citation", tmp_path, tiny_model_dir,
        "--methods", "base,task-lora,oppu,retrieved,user-majority",
        "--checkpoint", str(checkpoint),
    )  # fmt: skip
    assert res["reference"] == "base"
    assert "bank_version" not in res["splits"][0]
    partial = json.loads(checkpoint.read_text())
    assert partial["partial"] is True
    assert partial["methods_done"] == ["retrieved", "user-majority", "base", "task-lora", "oppu"]
    final = {(it["item_id"], it["user_id"]): it["predictions"] for it in res["items"]}
    for item in partial["items"]:
        assert item["predictions"] == final[(item["item_id"], item["user_id"])]


def test_eval_records_into_a_given_registry(tmp_path):
    from mta.registry import service
    from mta.registry.context import RegistryContext

    db, store = f"sqlite:///{tmp_path / 'r.db'}", f"file://{tmp_path / 'store'}"
    with RegistryContext.open(db, store, tmp_path / "cache") as ctx:
        service.init_registry(ctx)
    data = _users_file("product_rating", tmp_path)
    args = ["--task", "product_rating", "--data", str(data), "--methods", "retrieved,user-majority",
            "--resamples", "20", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, ["--db", db, "--store", store, "eval", *args])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "items" not in summary and summary["reference"] == "retrieved"
    with RegistryContext.open(db, store, tmp_path / "cache") as ctx:
        (run,) = service.list_eval_runs(ctx)
        assert run["id"] == summary["eval_run_id"] and run["task"] == "product_rating"
        assert run["config"]["methods"] == ["retrieved", "user-majority"]


def test_stack_only_isolates_the_merge_and_the_stack_format_reaches_the_registry(
    tmp_path, tiny_model_dir
):
    # `stack-only` trains the very stack `mta` trains (same request, shots and storage
    # format), on the base model alone; with fusion switched off the two would agree.
    res = _run(
        "movie_tagging", tmp_path, tiny_model_dir,
        "--methods", "base,mta-fuse,mta,stack-only",
        "--stack-dtype", "nf4", "--stack-modules", "attention",
    )  # fmt: skip
    assert res["methods"] == ["base", "mta-fuse", "mta", "stack-only"]
    assert res["config"]["stack_dtype"] == "nf4"
    assert res["config"]["stack_modules"] == "attention"
    assert all("stack-only" in item["predictions"] for item in res["items"])
    versus = res["per_user"]["versus"]
    assert set(versus) == {"mta-fuse", "mta", "stack-only"}
    for counts in versus.values():
        assert counts["better"] + counts["tie"] + counts["worse"] == len(res["per_user"]["users"])


def test_the_stack_ablations_share_the_mta_stack_and_score_what_they_name(tmp_path, tiny_model_dir):
    from mta.evaluation.bank import PoolBank

    trained: list[str] = []
    original = PoolBank._stack

    def counting(self, run, index, tag, variant):  # counts trainings, changes nothing
        if (index, tag) not in self._stacks:
            trained.append(tag)
        return original(self, run, index, tag, variant)

    methods = "base,mta,mta-int8,mta-nf4,mta-attention,mta-export,mta-export-r16"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PoolBank, "_stack", counting)
        res = _run("movie_tagging", tmp_path, tiny_model_dir, "--methods", methods)
    assert res["methods"] == methods.split(",")
    # Two entries: `mta` trains each once, `mta-attention` once more; the rest reuse.
    assert sorted(trained) == ["", "", "-attn", "-attn"]
    assert set(res["per_user"]["versus"]) == set(methods.split(",")) - {"base"}


def test_a_bad_stack_format_is_refused_before_any_work(tmp_path, tiny_model_dir):
    args = ["--task", "movie_tagging", "--base-model", str(tiny_model_dir)]
    for flag, value, message in (
        ("--stack-dtype", "int3", "unknown --stack-dtype 'int3'"),
        ("--stack-modules", " , ", "stack modules: give all, attention, mlp or a list"),
    ):
        result = CliRunner().invoke(eval_app, [*args, flag, value])
        assert result.exit_code == 1 and message in str(result.exception)
        assert not (tmp_path / "reg").exists()


def test_a_seed_beyond_k_means_is_refused_before_any_work(tmp_path, tiny_model_dir):
    from mta.evaluation.options import MAX_EVAL_SEED

    args = ["--task", "movie_tagging", "--base-model", str(tiny_model_dir)]
    for extra in (
        ["--seed", str(MAX_EVAL_SEED + 1)],
        ["--seed", str(MAX_EVAL_SEED), "--seeds", "2"],
    ):
        result = CliRunner().invoke(eval_app, [*args, *extra])
        assert result.exit_code == 1 and "k-means takes 32-bit seeds" in str(result.exception)


def test_resume_reuses_the_finished_methods_and_refuses_a_checkpoint_of_other_options(
    tmp_path, tiny_model_dir
):
    from mta.evaluation import methods as registry_of_methods
    from mta.evaluation.statistics import EvaluationError

    checkpoint = tmp_path / "partial.json"
    first = _run(
        "citation", tmp_path, tiny_model_dir,
        "--methods", "base,retrieved", "--checkpoint", str(checkpoint),
    )  # fmt: skip
    ran: list[str] = []
    original = registry_of_methods.get_method

    def recording(name):  # records which methods predict again, changes nothing
        method = original(name)
        predict = method.predict

        class Recorded:
            uses_model = method.uses_model

            def predict(self, run):
                ran.append(name)
                return predict(run)

        return Recorded()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("mta.evaluation.runner.get_method", recording)
        second = _run(
            "citation", tmp_path, tiny_model_dir,
            "--methods", "base,retrieved,user-majority",
            "--checkpoint", str(checkpoint), "--resume",
        )  # fmt: skip
    assert ran == ["user-majority"]
    before = {(it["item_id"], it["user_id"]): it["predictions"] for it in first["items"]}
    for item in second["items"]:
        assert item["predictions"]["base"] == before[(item["item_id"], item["user_id"])]["base"]
    done = json.loads(checkpoint.read_text())["methods_done"]
    assert sorted(done) == ["base", "retrieved", "user-majority"]
    # Other prediction options (here --shots) or another seed: refused, nothing overwritten.
    saved = checkpoint.read_text()
    for extra in (("--shots", "2"), ("--seed", "1")):
        with pytest.raises(EvaluationError, match="--resume"):
            _run(
                "citation", tmp_path, tiny_model_dir,
                "--methods", "base", "--checkpoint", str(checkpoint), "--resume", *extra,
            )  # fmt: skip
        assert checkpoint.read_text() == saved


def test_resume_replaces_the_users_an_interrupted_run_left_in_its_workdir(tmp_path, tiny_model_dir):
    from mta.registry import service
    from mta.registry.context import RegistryContext

    checkpoint = tmp_path / "partial.json"
    first = _run(
        "movie_tagging", tmp_path, tiny_model_dir,
        "--methods", "base,mta-fuse", "--checkpoint", str(checkpoint),
    )  # fmt: skip
    # A run killed mid-method leaves its registry users behind (close() never ran).
    left = f"eval-s0-{first['items'][0]['user_id']}"
    profile = json.loads(_users_file("movie_tagging", tmp_path).read_text())[0]["profile"]
    with RegistryContext.in_folder(tmp_path / "reg") as ctx:
        (bank,) = service.list_banks(ctx)
        service.add_user(
            ctx, user_id=left, task="movie_tagging", profile={"profile": profile},
            bank_ref=str(bank.version),
        )  # fmt: skip
    args = ("--methods", "base,mta-fuse,mta", "--checkpoint", str(checkpoint))
    with pytest.raises(Exception, match="already exists"):
        _run("movie_tagging", tmp_path, tiny_model_dir, *args)
    resumed = _run("movie_tagging", tmp_path, tiny_model_dir, *args, "--resume")
    assert all("mta" in item["predictions"] for item in resumed["items"])
    with RegistryContext.in_folder(tmp_path / "reg") as ctx:
        assert not [u for u in service.list_users(ctx) if u.user_id.startswith("eval-")]
