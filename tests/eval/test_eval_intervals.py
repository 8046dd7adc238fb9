"""Real-user intervals by default, the per-real-user view, and `mta eval-report` pooling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mta.cli.app import app
from mta.evaluation.options import DEFAULTS
from mta.evaluation.per_user import per_user_breakdown
from mta.evaluation.summary import ScoredItem, summarize

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MTA_LAMP_DIR") or ROOT.parent / "shared" / "lamp")


def _accuracy(preds, golds):
    hits = sum(p == g for p, g in zip(preds, golds, strict=True))
    return {"accuracy": hits / len(golds)}


def _two_real_users() -> tuple[list[ScoredItem], dict[str, list[str]]]:
    """Two real users, three entries each, six items per entry: one user always right."""
    right, wrong = "comedy", "action"  # movie tags, so saved results are valid movie_tagging
    items, base, mta = [], [], []
    for user in ("alice", "bob"):
        for entry in range(3):
            for n in range(6):
                kind = "query" if n == 0 else "profile"
                items.append(ScoredItem(0, f"{user}-{entry}", user, f"i{n}", kind, right))
                base.append(right if n % 2 else wrong)
                mta.append(right if user == "alice" or n < 2 else wrong)
    return items, {"base": base, "mta": mta}


def _width(interval: dict) -> float:
    return interval["high"] - interval["low"]


def test_real_user_intervals_are_the_default_and_wider_than_item_intervals():
    items, preds = _two_real_users()
    assert DEFAULTS.item_bootstrap is False
    kwargs = {"subset": "all", "reference": "mta", "n_resamples": 400}
    users = summarize(_accuracy, ["accuracy"], items, preds, cluster_by_user=True, **kwargs)
    flat = summarize(_accuracy, ["accuracy"], items, preds, cluster_by_user=False, **kwargs)
    assert (users.resampled, users.n_groups) == ("real users", 2)
    assert flat.resampled == "items"
    u, f = users.to_dict(), flat.to_dict()
    assert _width(u["methods"]["mta"]["accuracy"]) > 2 * _width(f["methods"]["mta"]["accuracy"])
    assert _width(u["differences"]["base"]["accuracy"]) > _width(
        f["differences"]["base"]["accuracy"]
    )


def test_a_single_real_user_falls_back_to_items():
    items, preds = _two_real_users()
    alice = [n for n, it in enumerate(items) if it.group == "alice"]
    only = [items[n] for n in alice]
    sub = {m: [p[n] for n in alice] for m, p in preds.items()}
    summary = summarize(_accuracy, ["accuracy"], only, sub, cluster_by_user=True, n_resamples=50)
    assert (summary.resampled, summary.n_groups) == ("items", 1)


def test_per_user_breakdown_scores_each_real_user_and_counts_gains():
    items, preds = _two_real_users()
    view = per_user_breakdown(_accuracy, ["accuracy"], items, preds, gain_of="mta", over="base")
    rows = {u["user"]: u for u in view["users"]}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"]["entries"] == 3 and rows["alice"]["n_items"] == 18
    assert rows["alice"]["scores"]["mta"]["accuracy"] == 1.0
    assert rows["bob"]["scores"]["mta"]["accuracy"] == pytest.approx(6 / 18)
    assert rows["alice"]["scores"]["base"]["accuracy"] == pytest.approx(9 / 18)
    assert rows["alice"]["gain"]["accuracy"] == pytest.approx(0.5)
    assert rows["bob"]["gain"]["accuracy"] == pytest.approx(6 / 18 - 9 / 18)
    assert view["gain_counts"] == {"better": 1, "tie": 0, "worse": 1}
    queries = per_user_breakdown(_accuracy, ["accuracy"], items, preds, subset="query")
    assert queries["gain_counts"] is None and queries["users"][0]["n_items"] == 3


def test_a_lower_error_counts_as_a_gain():
    items = [ScoredItem(0, "e", "u", f"i{n}", "query", "3") for n in range(2)]

    def mae(preds, golds):
        return {
            "mae": sum(abs(int(p) - int(g)) for p, g in zip(preds, golds, strict=True)) / len(golds)
        }

    view = per_user_breakdown(
        mae, ["mae"], items, {"base": ["5", "5"], "mta": ["3", "4"]}, gain_of="mta", over="base"
    )
    assert view["users"][0]["gain"]["mae"] == pytest.approx(-1.5)
    assert view["gain_counts"] == {"better": 1, "tie": 0, "worse": 0}


def _movie_users() -> Path:
    path = SHARED / "movie_tagging" / "users.json"
    if not path.is_file():
        pytest.skip(f"shared LaMP users not present at {path}")
    return path


def _eval(tmp_path: Path, name: str, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    args = ["eval", "--task", "movie_tagging", "--data", str(_movie_users()),
            "--methods", "retrieved,user-majority", "--resamples", "200",
            "--workdir", str(tmp_path / f"reg-{name}"), "--json-out", str(out), *extra]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_eval_resamples_real_users_by_default_and_items_on_request(tmp_path):
    honest = _eval(tmp_path, "default")
    items = _eval(tmp_path, "items", "--item-bootstrap")
    assert honest["config"]["anchor_data"] == "cluster"
    for subset in ("query", "all"):
        h, i = honest["subsets"][subset], items["subsets"][subset]
        assert (h["resampled"], h["n_groups"]) == ("real users", 8)
        assert i["resampled"] == "items"
        assert h["methods"]["retrieved"]["accuracy"]["value"] == pytest.approx(
            i["methods"]["retrieved"]["accuracy"]["value"]
        )
    wide = _width(honest["subsets"]["all"]["methods"]["retrieved"]["accuracy"])
    assert wide > 1.5 * _width(items["subsets"]["all"]["methods"]["retrieved"]["accuracy"])
    per_user = honest["per_user"]
    assert len(per_user["users"]) == 8 and per_user["gain_of"] is None
    assert sum(u["n_items"] for u in per_user["users"]) == honest["subsets"]["all"]["n_items"]


def test_eval_report_pools_seeds_run_apart_into_the_tables_of_one_run(tmp_path):
    both = _eval(tmp_path, "both", "--seeds", "2")
    _eval(tmp_path, "s0")
    _eval(tmp_path, "s1", "--seed", "1")
    out, plot = tmp_path / "pooled.json", tmp_path / "pooled.png"
    args = ["eval-report", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"),
            "--resamples", "200", "--json-out", str(out), "--plot", str(plot)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "95% CIs resample real users" in result.output and "per real user" in result.output
    pooled = json.loads(out.read_text())
    assert pooled["subsets"] == both["subsets"]
    assert pooled["per_user"] == both["per_user"]
    assert pooled["config"]["seeds_pooled"] == [0, 1]
    assert plot.read_bytes()[:4] == b"\x89PNG"


def _saved(tmp_path: Path, name: str, doc: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def _rows(items: list[ScoredItem], preds: dict[str, list[str]], **change: object) -> list[dict]:
    """Saved-result item rows, with fields overridden by ``change``."""
    return [
        {**it.__dict__, "predictions": {m: preds[m][n] for m in preds}, **change}
        for n, it in enumerate(items)
    ]


def test_eval_report_refuses_bad_files_with_one_line(tmp_path, mta):
    items, preds = _two_real_users()
    good = {"task": "movie_tagging", "methods": ["base", "mta"], "items": _rows(items, preds)}
    cases = {
        "not-json": "{",
        "no-items": {"task": "movie_tagging"},
        "missing-field": {**good, "items": [{"seed": 1, "predictions": {}}]},
        "no-seed": {**good, "items": [{"predictions": {}}]},
        "other-task": {**good, "task": "news_headline"},
        "unknown-task": {**good, "task": "horoscopes"},
        "not-a-tag": {**good, "items": _rows(items, preds, seed=1, gold="a")},
        "same-seed": good,
    }
    first = _saved(tmp_path, "good.json", good)
    for name, doc in cases.items():
        result = mta("eval-report", first, _saved(tmp_path, f"{name}.json", doc))
        assert result.code == 1, (name, result.stderr)
        assert len(result.error_lines()) == 1 and not result.stdout, (name, result.stderr)
    assert "seed 0 is in both" in result.stderr
    assert mta("eval-report", first, "--resamples", "0").code == 1
    assert mta("eval-report").code == 2


def test_eval_report_pools_a_checkpoint_with_the_methods_it_finished(tmp_path, mta):
    items, preds = _two_real_users()
    full = {"task": "movie_tagging", "methods": ["base", "mta"], "items": _rows(items, preds)}
    partial = {
        "partial": True,
        "task": "movie_tagging",
        "methods_done": ["base"],
        "items": _rows(items, {"base": preds["base"]}, seed=1),
    }
    a, b = _saved(tmp_path, "a.json", full), _saved(tmp_path, "b.json", partial)
    result = mta("eval-report", a, b, "--resamples", "50", "--json")
    doc = result.json()
    assert result.code == 0 and doc["methods"] == ["base"]
    assert doc["subsets"]["all"]["n_items"] == 2 * len(items)
    assert doc["per_user"]["gain_of"] is None
    assert "leaving out mta" in result.stderr


def test_contradicting_bootstrap_flags_are_refused(tmp_path, mta):
    result = mta("eval", "--task", "movie_tagging", "--item-bootstrap", "--cluster-bootstrap",
                 "--workdir", tmp_path / "reg")  # fmt: skip
    assert result.code == 1 and len(result.error_lines()) == 1
    assert not (tmp_path / "reg").exists()
