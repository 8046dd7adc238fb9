"""`mta eval --decode rank`: label log-likelihoods (`mta.ranking`) and the eval that uses them.

The scoring tests run the tiny random Llama on real task prompts and check the batched,
prompt-sharing computation against a plain one-sequence-at-a-time reference; the CLI test
runs every method of `mta eval` on synthetic movie-tagging users with the tiny model and
embedder. One slow test ranks the 15 movie tags with the real SmolLM2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from mta.ranking import best_index, label_log_likelihoods, rank_labels
from mta.tasks import get_task
from mta.tasks.citation import QUESTION as CITATION_QUESTION
from mta.tasks.movie_tagging import MOVIE_TAGS
from tests.support import movie_user, write_users

TOL = 1e-4


def movie_prompts(n: int) -> list[str]:
    """Movie-tagging prompts as `mta eval` builds them: one history line, the question, "Tag:"."""
    task = get_task("movie_tagging")
    prompts = []
    for index in range(n):
        user = movie_user(f"u{index}", items=2, seed=index)
        # Histories of different lengths, so a batch needs padding.
        history = user["profile"][: index % 2 + 1]
        prompts.append(task.prompt(user["query"][0]["input"], history))
    return prompts


def citation_prompts() -> list[str]:
    """Two LaMP-1 questions of different lengths."""
    task = get_task("citation")
    questions = [
        CITATION_QUESTION.format(title="Robots on Mars", ref1="Planetary rovers", ref2="Jazz"),
        CITATION_QUESTION.format(
            title="A study of retrieval augmented generation for personalized language models",
            ref1="Dense passage retrieval for open-domain question answering",
            ref2="The migration of storks across the Mediterranean in autumn",
        ),
    ]
    return [task.prompt(question, []) for question in questions]


def reference_scores(
    model: object, tokenizer: object, prompts: Sequence[str], labels: Sequence[str]
) -> list[list[float]]:
    """Mean label-token log-prob from one unpadded forward pass per (prompt, label)."""
    import torch

    from mta.examples import continuation_ids

    out = []
    for prompt in prompts:
        prompt_ids = list(tokenizer(prompt)["input_ids"])
        row = []
        for label in labels:
            cont = continuation_ids(tokenizer, prompt, prompt_ids, label)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([prompt_ids + cont])).logits[0]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            # The token at position p is predicted by the logits at position p - 1.
            picked = [log_probs[len(prompt_ids) + j - 1, t].item() for j, t in enumerate(cont)]
            row.append(sum(picked) / len(picked))
        out.append(row)
    return out


def assert_close(got: list[list[float]], want: list[list[float]]) -> None:
    assert len(got) == len(want)
    for got_row, want_row in zip(got, want, strict=True):
        assert got_row == pytest.approx(want_row, abs=TOL)


@pytest.mark.parametrize(
    ("task_name", "prompts"),
    [("movie_tagging", movie_prompts(6)), ("citation", citation_prompts())],
)
def test_rank_answers_a_label_of_the_set_for_every_item(tiny_model, task_name, prompts):
    model, tokenizer = tiny_model
    labels = get_task(task_name).labels
    answers = rank_labels(model, tokenizer, prompts, labels, batch_size=4)
    assert len(answers) == len(prompts)
    assert all(answer in labels for answer in answers)


def test_rank_answers_the_argmax_of_the_scores(tiny_model):
    model, tokenizer = tiny_model
    prompts = movie_prompts(5)
    scores = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=2)
    answers = rank_labels(model, tokenizer, prompts, MOVIE_TAGS, batch_size=2)
    for row, answer in zip(scores, answers, strict=True):
        assert len(row) == len(MOVIE_TAGS)
        assert row[MOVIE_TAGS.index(answer)] == max(row)


def test_a_tie_goes_to_the_first_label_in_order():
    assert best_index([-2.0, -1.0, -1.0, -3.0]) == 1
    assert best_index([-1.0, -1.0]) == 0


def test_scores_equal_an_unbatched_reference(tiny_model):
    model, tokenizer = tiny_model
    prompts = movie_prompts(3)
    got = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=3)
    assert_close(got, reference_scores(model, tokenizer, prompts, MOVIE_TAGS))
    # Citation's labels are short and may be a single token: the label pass is then skipped.
    prompts = citation_prompts()
    labels = get_task("citation").labels
    got = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size=2)
    assert_close(got, reference_scores(model, tokenizer, prompts, labels))


def test_batching_gives_the_scores_of_one_at_a_time(tiny_model):
    model, tokenizer = tiny_model
    prompts = movie_prompts(7)
    alone = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=1)
    for size in (3, 8):
        batched = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=size)
        assert_close(batched, alone)


def test_padding_side_does_not_change_scores(tiny_model, tiny_model_dir):
    from transformers import AutoTokenizer

    model, _ = tiny_model
    prompts = movie_prompts(4)
    scores = []
    for side in ("left", "right"):
        # A fresh tokenizer each: the session's shared one must stay unchanged.
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side=side)
        scores.append(label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=4))
    assert_close(scores[1], scores[0])


def test_rank_scores_with_an_adapter_merged_differ_and_stay_consistent(
    tiny_model, random_adapter_factory
):
    from mta.inference import apply_adapter

    model, tokenizer = tiny_model
    prompts = movie_prompts(2)
    plain = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=2)
    with apply_adapter(model, random_adapter_factory(4, seed=3, std=0.2)):
        merged = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=2)
        assert_close(merged, reference_scores(model, tokenizer, prompts, MOVIE_TAGS))
    assert merged != plain


def test_bad_arguments_are_refused(tiny_model):
    from mta.errors import MtaError

    model, tokenizer = tiny_model
    with pytest.raises(MtaError, match="batch_size"):
        label_log_likelihoods(model, tokenizer, ["Tag:"], MOVIE_TAGS, batch_size=0)
    with pytest.raises(MtaError, match="no labels"):
        label_log_likelihoods(model, tokenizer, ["Tag:"], [])
    assert label_log_likelihoods(model, tokenizer, [], MOVIE_TAGS) == []


def test_eval_rank_answers_labels_for_every_model_method(
    mta, tmp_path: Path, tiny_model_dir: Path, tiny_embedder_dir: Path
):
    from mta.evaluation.methods import get_method
    from mta.evaluation.options import DEFAULT_METHODS

    data = write_users(
        tmp_path / "users.json", [movie_user(f"m{i}", items=8, seed=i) for i in range(6)]
    )
    out = tmp_path / "result.json"
    result = mta(
        "eval", "--task", "movie_tagging", "--data", str(data), "--decode", "rank",
        "--base-model", str(tiny_model_dir), "--embedder", str(tiny_embedder_dir),
        "--limit", "2", "--anchors", "2", "--shots", "3", "--epochs", "1",
        "--user-epochs", "1", "--max-steps", "1", "--resamples", "20",
        "--workdir", str(tmp_path / "reg"), "--json-out", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    res = json.loads(out.read_text())
    assert res["config"]["decode"] == "rank"
    model_methods = [m for m in DEFAULT_METHODS if get_method(m).uses_model]
    assert set(model_methods) <= set(res["methods"])
    assert res["items"]
    for item in res["items"]:
        for method in model_methods:
            assert item["predictions"][method] in MOVIE_TAGS, (method, item["predictions"])


def test_eval_rank_on_a_generation_task_is_one_error_line(mta):
    result = mta("eval", "--task", "news_headline", "--decode", "rank")
    assert result.code != 0 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines == result.error_lines()
    assert "--decode rank" in lines[0]


@pytest.mark.slow
def test_smollm2_ranks_the_movie_tags():
    from mta.base_model import load_base_model

    model, tokenizer = load_base_model("smollm2")
    prompts = movie_prompts(3)
    scores = label_log_likelihoods(model, tokenizer, prompts, MOVIE_TAGS, batch_size=3)
    answers = rank_labels(model, tokenizer, prompts, MOVIE_TAGS, batch_size=3)
    assert all(answer in MOVIE_TAGS for answer in answers)
    for row in scores:
        assert all(math.isfinite(score) and score < 0 for score in row)
        assert len(set(row)) == len(MOVIE_TAGS)
    assert_close(scores, reference_scores(model, tokenizer, prompts, MOVIE_TAGS))
