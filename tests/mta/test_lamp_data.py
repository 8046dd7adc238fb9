"""LaMP data files: validation, official-format conversion, real-user grouping."""

import json
from pathlib import Path

import pytest

from mta.lamp_data import (
    DataFormatError,
    convert_official,
    find_task_data,
    group_real_users,
    load_user,
    load_users,
    save_users,
    validate_user,
)
from tests.mta.lamp_env import FIXTURES, REPO, shared_users_path

EXAMPLES = REPO / "examples" / "data"


def user(**overrides: object) -> dict:
    """A valid movie-tagging user record, with fields replaced by `overrides`."""
    record = {
        "user_id": 7,
        "profile": [{"tag": "comedy", "description": "A clown loses his nose.", "id": 70}],
        "query": [
            {"id": 71, "input": "Which tag ... description: A mime speaks.", "gold": "comedy"}
        ],
    }
    record.update(overrides)
    return record


def write_json(path: Path, data: object) -> Path:
    """Write `data` as JSON to `path`."""
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("task", ["citation", "product_rating", "scholarly_title"])
def test_official_fixtures_convert_to_one_user_per_question(task: str, tmp_path: Path) -> None:
    folder = FIXTURES / task
    questions = json.loads((folder / "questions.json").read_text())
    users = convert_official(folder / "questions.json", folder / "outputs.json")

    assert len(users) == len(questions) == 6
    golds = json.loads((folder / "outputs.json").read_text())["golds"]
    for record, question, gold in zip(users, questions, golds, strict=True):
        assert record["user_id"] == question["id"]
        assert record["profile"] == question["profile"]
        assert 8 <= len(record["profile"]) <= 10
        assert record["query"] == [
            {"id": question["id"], "input": question["input"], "gold": gold["output"]}
        ]
    # Round trip through the per-user format, validated against the task's fields.
    assert load_users(save_users(users, tmp_path / "users.json"), task=task) == users


def test_convert_without_outputs_leaves_queries_without_gold() -> None:
    folder = FIXTURES / "citation"
    users = convert_official(folder / "questions.json")
    assert all("gold" not in q for u in users for q in u["query"])


def test_convert_reports_a_question_without_gold(tmp_path: Path) -> None:
    folder = FIXTURES / "product_rating"
    outputs = json.loads((folder / "outputs.json").read_text())
    outputs["golds"] = outputs["golds"][1:]
    missing = write_json(tmp_path / "outputs.json", outputs)
    with pytest.raises(DataFormatError, match="no gold output for question '300'"):
        convert_official(folder / "questions.json", missing)


def test_validate_normalizes_ids_to_strings() -> None:
    record = validate_user(user())
    assert record["user_id"] == "7"
    assert record["profile"][0]["id"] == "70"
    assert record["query"][0]["id"] == "71"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([1, 2], "user record: expected a JSON object, got list"),
        ({"profile": []}, "user record: missing 'user_id'"),
        (user(user_id=""), "'user_id' is empty"),
        (user(user_id=None), "must be a string or integer"),
        (user(profile=[]), "user '7': 'profile' must be a non-empty list"),
        (user(profile=["text"]), "user '7': profile item #0 is not a JSON object"),
        (user(query=[{"id": 1, "gold": "x"}]), "user '7': query #0 has no 'input'"),
        (user(query=[{"id": 1, "input": "q"}]), "user '7': query '1' has no 'gold'"),
        (user(query=[]), "user '7': no 'query' to evaluate"),
        (user(query="q"), "'query' must be a list"),
    ],
)
def test_validate_rejects_bad_records_in_one_line(record: object, message: str) -> None:
    with pytest.raises(DataFormatError, match=message) as caught:
        validate_user(record)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_gold_is_optional_for_registering_a_user() -> None:
    record = validate_user(user(query=[{"id": 1, "input": "q"}]), require_gold=False)
    assert record["query"] == [{"id": "1", "input": "q"}]
    assert validate_user(user(query=None), require_gold=False)["query"] == []


def test_task_fields_are_checked_and_named() -> None:
    bad_tag = user(profile=[{"tag": "horror", "description": "Boo.", "id": "9"}])
    with pytest.raises(DataFormatError, match="user '7': profile item #0: .*'horror'.*not one of"):
        validate_user(bad_tag, task="movie_tagging")
    with pytest.raises(DataFormatError, match="product_rating item '70' has no 'text'"):
        validate_user(user(), task="product_rating")
    bad_score = user(profile=[{"text": "Fine.", "score": "6", "id": "1"}])
    with pytest.raises(DataFormatError, match="score '6', not an integer from 1 to 5"):
        validate_user(bad_score, task="product_rating")


def test_load_users_reports_file_problems(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"user_id": 1,\n "profile": [}]')
    with pytest.raises(DataFormatError, match=r"broken.json: invalid JSON at line 2"):
        load_users(broken)
    with pytest.raises(DataFormatError, match="file not found"):
        load_users(tmp_path / "absent.json")
    twice = write_json(tmp_path / "twice.json", [user(), user()])
    with pytest.raises(DataFormatError, match="user '7' appears twice"):
        load_users(twice)
    with pytest.raises(DataFormatError, match="non-empty list"):
        load_users(write_json(tmp_path / "empty.json", []))
    nested = write_json(tmp_path / "nested.json", [user(), user(user_id=8, profile=[])])
    with pytest.raises(DataFormatError, match=r"nested.json: user '8': 'profile'"):
        load_users(nested)


def test_load_user_accepts_one_object(tmp_path: Path) -> None:
    record = load_user(write_json(tmp_path / "one.json", user(query=None)))
    assert record["user_id"] == "7"
    with pytest.raises(DataFormatError, match="expected one user record, found 2"):
        load_user(write_json(tmp_path / "two.json", [user(), user(user_id=8)]))


def test_demo_data_is_valid_movie_tagging() -> None:
    users = load_users(EXAMPLES / "movie_tagging_demo.json", task="movie_tagging")
    assert len(users) == 10
    assert all(len(u["profile"]) == 10 and len(u["query"]) == 1 for u in users)
    tags = {item["tag"] for u in users for item in u["profile"]}
    assert len(tags) >= 12
    newcomer = load_user(EXAMPLES / "new_user.json", task="movie_tagging")
    assert len(newcomer["profile"]) == 6
    # Each demo user is a distinct real user.
    assert group_real_users(users) == [[n] for n in range(10)]


def test_group_real_users_joins_entries_sharing_five_items() -> None:
    items = [{"tag": "comedy", "description": f"movie {n}"} for n in range(12)]

    def entry(uid: str, rows: range) -> dict:
        # Ids are renumbered per entry, as in the real files: grouping must ignore them.
        return {"user_id": uid, "profile": [dict(items[r], id=f"{uid}{r}") for r in rows]}

    users = [
        entry("a", range(0, 6)),
        entry("b", range(7, 12)),
        entry("c", range(1, 6)),  # shares 5 with a
        entry("d", range(8, 12)),  # shares only 4 with b
    ]
    assert group_real_users(users) == [[0, 2], [1], [3]]
    assert group_real_users(users, min_shared=4) == [[0, 2], [1, 3]]


@pytest.mark.parametrize(
    ("task", "entries", "real_users"), [("movie_tagging", 48, 16), ("news_headline", 70, 35)]
)
def test_real_lamp_entries_group_into_real_users(task: str, entries: int, real_users: int) -> None:
    users = load_users(shared_users_path(task), task=task)
    groups = group_real_users(users)
    assert (len(users), len(groups)) == (entries, real_users)
    # Entries of one user have consecutive ids (PROVENANCE.md).
    for group in groups:
        ids = [int(users[n]["user_id"]) for n in group]
        assert ids == list(range(ids[0], ids[0] + len(ids)))


def test_find_task_data_follows_the_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTA_LAMP_DIR", raising=False)
    assert find_task_data("citation") is None
    monkeypatch.setenv("MTA_LAMP_DIR", str(tmp_path))
    assert find_task_data("citation") is None
    target = tmp_path / "citation" / "users.json"
    target.parent.mkdir()
    target.write_text("[]")
    assert find_task_data("citation") == target
