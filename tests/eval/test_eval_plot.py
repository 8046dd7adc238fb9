"""The PNG chart of an evaluation."""

from __future__ import annotations

from mta.evaluation.plot import plot_results
from mta.evaluation.summary import ScoredItem, summarize


def _score(preds, golds):
    return {
        "accuracy": sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds),
        "mae": sum(abs(int(p) - int(g)) for p, g in zip(preds, golds, strict=True)) / len(golds),
    }


def test_plot_writes_a_png(tmp_path):
    items = [
        ScoredItem(0, f"u{i}", f"u{i}", "q", "query" if i < 4 else "profile", str(i % 3))
        for i in range(12)
    ]
    preds = {"base": ["0"] * 12, "mta": [it.gold for it in items]}
    results = {
        "task": "product_rating",
        "subsets": {
            s: summarize(
                _score, ["accuracy", "mae"], items, preds, subset=s, n_resamples=50
            ).to_dict()
            for s in ("query", "all")
        },
    }
    out = plot_results(results, tmp_path / "sub" / "chart.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000
