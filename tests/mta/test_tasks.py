"""LaMP tasks: registry, prompts, parsing, metrics, BM25 retrieval, leave-one-out examples."""

import math

import pytest

from mta.errors import UnknownNameError
from mta.lamp_data import DataFormatError, convert_official, load_users
from mta.tasks import (
    TASKS,
    Task,
    get_task,
    item_example,
    profile_examples,
    query_example,
    retrieve_history,
)
from mta.tasks.base import truncate_words
from mta.tasks.metrics import accuracy_f1, higher_is_better, mae_rmse, rouge
from mta.tasks.movie_tagging import MOVIE_TAGS
from tests.mta.lamp_env import FIXTURES, shared_users_path

FIXTURE_TASKS = ("citation", "product_rating", "scholarly_title")
SHARED_TASKS = ("movie_tagging", "news_headline")


def task_users(name: str) -> list[dict]:
    """Users of a task: converted fixtures, or the real LaMP users (skip when absent)."""
    if name in FIXTURE_TASKS:
        folder = FIXTURES / name
        return convert_official(folder / "questions.json", folder / "outputs.json")
    return load_users(shared_users_path(name), task=name)


# --- registry --------------------------------------------------------------------------


def test_the_five_lamp_tasks_are_registered() -> None:
    assert sorted(TASKS) == sorted(FIXTURE_TASKS + SHARED_TASKS)
    assert [get_task(n).lamp_id for n in ("citation", "movie_tagging", "scholarly_title")] == [
        "LaMP-1",
        "LaMP-2",
        "LaMP-5",
    ]
    for task in TASKS.values():
        assert isinstance(task, Task)


def test_unknown_task_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="unknown task 'lamp9'; valid: citation, movie"):
        get_task("lamp9")
    with pytest.raises(KeyError):
        get_task("")


# --- metrics ---------------------------------------------------------------------------


def test_rouge_of_identical_and_disjoint_strings() -> None:
    assert rouge(["a quiet night in paris"], ["a quiet night in paris"]) == {
        "rouge1": 1.0,
        "rougeL": 1.0,
    }
    assert rouge(["red apples"], ["blue skies"]) == {"rouge1": 0.0, "rougeL": 0.0}


def test_rouge_partial_overlap_matches_hand_computation() -> None:
    # 2 of 3 predicted words appear in the 4-word gold, in order: P=2/3, R=1/2, F=4/7.
    scores = rouge(["cats chase mice"], ["cats quietly chase birds"])
    assert scores["rouge1"] == pytest.approx(4 / 7)
    assert scores["rougeL"] == pytest.approx(4 / 7)


def test_mae_rmse_on_known_lists_and_worst_case_for_unparseable() -> None:
    scores = mae_rmse(["1", "2", "3"], ["1", "4", "5"])
    assert scores["mae"] == pytest.approx(4 / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt(8 / 3))
    # "" against gold 2 counts as 5 (the farthest rating), against gold 4 as 1.
    assert mae_rmse(["", ""], ["2", "4"]) == {"mae": 3.0, "rmse": 3.0}


def test_accuracy_and_macro_f1_on_known_lists() -> None:
    golds = ["[1]", "[1]", "[2]", "[2]"]
    scores = accuracy_f1(["[1]", "[2]", "[2]", "[2]"], golds, ("[1]", "[2]"))
    assert scores["accuracy"] == 0.75
    # class [1]: P=1, R=1/2, F=2/3; class [2]: P=2/3, R=1, F=4/5.
    assert scores["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert accuracy_f1(["", "?"], ["[1]", "[2]"], ("[1]", "[2]")) == {"accuracy": 0.0, "f1": 0.0}


def test_metrics_reject_bad_lists() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1 golds"):
        rouge(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        mae_rmse([], [])
    with pytest.raises(ValueError, match="not one of"):
        accuracy_f1(["comedy"], ["horror"], MOVIE_TAGS)
    assert higher_is_better("rouge1") and not higher_is_better("mae")


# --- parsing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("dark comedy", "dark comedy"),
        ("Tag: Dark Comedy.", "dark comedy"),
        ("I think this is sci-fi, maybe action", "sci-fi"),
        ("based on a book\nsomething else", "based on a book"),
        ("a classical piece", ""),
        ("no idea", ""),
    ],
)
def test_movie_tagging_parse(generated: str, expected: str) -> None:
    assert get_task("movie_tagging").parse(generated, "") == expected


@pytest.mark.parametrize(
    ("generated", "expected"),
    [("4", "4"), ("Score: 5 stars", "5"), ("I'd say 3.5", "3"), ("10/10", ""), ("great", "")],
)
def test_product_rating_parse(generated: str, expected: str) -> None:
    assert get_task("product_rating").parse(generated, "") == expected


CITATION_QUERY = (
    'For an author who has written the paper with the title "Graph Sparsifiers", which '
    "reference is related? Just answer with [1] or [2] without explanation. "
    '[1]: "Spectral Sparsification of Graphs" [2]: "Deep Speech Recognition"'
)


@pytest.mark.parametrize(
    ("generated", "expected"),
    [
        ("[2]", "[2]"),
        ("Answer: [ 1 ]", "[1]"),
        ("2", "[2]"),
        ("spectral sparsification of graphs", "[1]"),
        ("neither", ""),
    ],
)
def test_citation_parse(generated: str, expected: str) -> None:
    assert get_task("citation").parse(generated, CITATION_QUERY) == expected


@pytest.mark.parametrize("name", ["news_headline", "scholarly_title"])
def test_generation_parse_takes_the_first_clean_line(name: str) -> None:
    task = get_task(name)
    assert (
        task.parse('\n  "Cruise Lines Face New Rules"\nExtra text', "")
        == "Cruise Lines Face New Rules"
    )
    assert task.parse("Headline: Storm Hits Coast", "") == "Storm Hits Coast"
    assert task.parse("Title: A Study of Things", "") == "A Study of Things"
    assert task.parse("   ", "") == ""


# --- prompts and retrieval -------------------------------------------------------------


def movie(tag: str, description: str, item_id: str) -> dict:
    """A movie-tagging profile item."""
    return {"tag": tag, "description": description, "id": item_id}


PROFILE = [
    movie("romance", "Two bakers fall in love during a snowy winter in Vienna.", "1"),
    movie("sci-fi", "A starship crew wakes up orbiting a frozen alien moon.", "2"),
    movie("comedy", "A clumsy waiter ruins a royal wedding banquet.", "3"),
]


def test_bm25_picks_the_obviously_matching_item() -> None:
    task = get_task("movie_tagging")
    query = task.item_input(
        movie("?", "Astronauts land on an alien moon and the starship fails.", "q")
    )
    assert retrieve_history(task, PROFILE, query)[0]["id"] == "2"
    assert [i["id"] for i in retrieve_history(task, PROFILE, query, k=2, exclude_id="2")][0] != "2"
    assert len(retrieve_history(task, PROFILE, query, k=10)) == 3
    assert retrieve_history(task, PROFILE, query, k=0) == []


def test_bm25_ties_keep_profile_order() -> None:
    task = get_task("movie_tagging")
    query = task.item_input(movie("?", "zzz unmatched words", "q"))
    assert [i["id"] for i in retrieve_history(task, PROFILE, query, k=3)] == ["1", "2", "3"]


def test_prompt_holds_history_query_and_cue_and_truncates_long_text() -> None:
    task = get_task("movie_tagging")
    long_description = " ".join(f"word{n}" for n in range(400))
    query = task.item_input(movie("?", long_description, "q"))
    prompt = task.prompt(query, [PROFILE[1]])
    assert (
        "Description: A starship crew wakes up orbiting a frozen alien moon. Tag: sci-fi" in prompt
    )
    assert "description: word0" in prompt and "word399" not in prompt
    assert prompt.endswith("Tag:")
    assert len(prompt.split()) < 200
    bare = task.prompt(query, [])
    assert task.history_intro not in bare and bare.startswith("Which tag")


def test_truncate_words_marks_the_cut() -> None:
    assert truncate_words("a b c", 3) == "a b c"
    assert truncate_words("a  b\nc d", 2) == "a b ..."


def test_leave_one_out_examples_never_show_the_target_in_its_history() -> None:
    task = get_task("movie_tagging")
    examples = profile_examples(task, PROFILE, k=2)
    assert [target for _, target in examples] == ["romance", "sci-fi", "comedy"]
    for (prompt, _), item in zip(examples, PROFILE, strict=True):
        history_part = prompt.split("\n\n")[0]
        assert item["description"] not in history_part
        assert prompt.count("Description:") == 2
    assert item_example(task, PROFILE, 1, k=1) == profile_examples(task, PROFILE, k=1)[1]


def test_query_example_uses_the_profile_and_needs_a_gold() -> None:
    task = get_task("movie_tagging")
    query = {
        "id": "q",
        "input": task.item_input(movie("?", "A starship above an alien moon.", "q")),
    }
    user = {"user_id": "u1", "profile": PROFILE, "query": [query]}
    prompt, gold = query_example(task, user, {**query, "gold": "sci-fi"})
    assert gold == "sci-fi" and "frozen alien moon" in prompt
    with pytest.raises(DataFormatError, match="user 'u1': query 'q' has no 'gold'"):
        query_example(task, user, query)


def test_citation_items_become_two_option_questions_about_the_authors_work() -> None:
    task = get_task("citation")
    profile = task_users("citation")[0]["profile"]
    examples = profile_examples(task, profile)
    assert len(examples) == len(profile)
    answers = {target for _, target in examples}
    assert answers == {"[1]", "[2]"}
    titles = {item["title"] for item in profile}
    for prompt, target in examples:
        options = prompt.split("[1]: ")[1]
        assert options.count('"') == 4
        assert any(title in options for title in titles)
        assert task.parse(target, prompt) == target
    with pytest.raises(DataFormatError, match="prepare_profile"):
        task.item_input(profile[0])
    with pytest.raises(DataFormatError, match="too few other items"):
        item_example(task, profile[:2], 0)


# --- all five tasks end to end on real users and fixtures ------------------------------


@pytest.mark.parametrize("name", FIXTURE_TASKS + SHARED_TASKS)
def test_every_task_builds_examples_and_scores_golds_perfectly(name: str) -> None:
    task = get_task(name)
    users = task_users(name)
    golds, prompts = [], []
    for user in users:
        examples = profile_examples(task, user["profile"])
        assert len(examples) == len(user["profile"])
        for query in user["query"]:
            prompt, gold = query_example(task, user, query)
            prompts.append(prompt)
            golds.append(gold)
    for prompt in prompts:
        # Compact prompts: SmolLM2 sees at most ~300 tokens (~1.4 tokens per word).
        assert len(prompt.split()) <= 230
    parsed = [task.parse(gold, prompt) for gold, prompt in zip(golds, prompts, strict=True)]
    assert parsed == golds
    # Macro-F1 averages over every label (as LaMP's evaluation): absent labels count 0.
    f1 = len(set(golds)) / len(task.labels) if task.labels else None
    best = {"accuracy": 1.0, "f1": f1, "mae": 0.0, "rmse": 0.0, "rouge1": 1.0, "rougeL": 1.0}
    assert task.score(parsed, golds) == pytest.approx({m: best[m] for m in task.metrics})


@pytest.mark.parametrize("name", FIXTURE_TASKS + SHARED_TASKS)
def test_profile_items_read_like_queries(name: str) -> None:
    task = get_task(name)
    user = task_users(name)[0]
    query_input = user["query"][0]["input"]
    item = task.prepare_profile(user["profile"])[0]
    item_input = task.item_input(item)
    marker = task.input_marker or '"'  # citation: the text before the quoted title
    assert item_input.split(marker)[0] == query_input.split(marker)[0]


@pytest.mark.parametrize("name", FIXTURE_TASKS + SHARED_TASKS)
def test_retrieved_baseline_answers_in_the_label_space(name: str) -> None:
    task = get_task(name)
    predictions, golds = [], []
    for user in task_users(name):
        for query in user["query"]:
            history = retrieve_history(task, user["profile"], query["input"])
            predictions.append(task.answer_from_history(query["input"], history))
            golds.append(query["gold"])
    if task.labels is not None:
        assert set(predictions) <= set(task.labels)
    scores = task.score(predictions, golds)
    assert set(scores) == set(task.metrics)


def test_retrieved_baseline_is_strong_on_real_movie_tagging() -> None:
    task = get_task("movie_tagging")
    users = task_users("movie_tagging")
    predictions = [
        task.answer_from_history(q["input"], retrieve_history(task, u["profile"], q["input"]))
        for u in users
        for q in u["query"]
    ]
    golds = [q["gold"] for u in users for q in u["query"]]
    # Chance over 15 tags is ~7%; copying the retrieved item's tag does far better.
    assert task.score(predictions, golds)["accuracy"] > 0.2
