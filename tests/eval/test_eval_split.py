"""Splitting LaMP entries by real user, and finding the data file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mta.evaluation.data import resolve_data_path
from mta.evaluation.protocol import build_items, split_users
from mta.evaluation.statistics import EvaluationError
from mta.lamp_data import group_real_users

SHARED_MOVIES = Path(__file__).resolve().parents[3] / "shared" / "lamp" / "movie_tagging"


def _entries(n_users: int, per_user: int) -> list[dict]:
    """Entries shaped like the shared files: each real user's entries share 10 of 11 items."""
    out = []
    for u in range(n_users):
        items = [
            {"tag": "comedy", "description": f"user {u} movie {j}", "id": str(j)} for j in range(11)
        ]
        for e in range(per_user):
            query, profile = items[e], [it for j, it in enumerate(items) if j != e]
            out.append(
                {
                    "user_id": f"{u}{e}",
                    "profile": profile,
                    "query": [
                        {
                            "id": query["id"],
                            "input": f"description: {query['description']}",
                            "gold": "comedy",
                        }
                    ],
                }
            )
    return out


def test_split_never_puts_a_real_user_on_both_sides():
    users = _entries(6, 3)
    groups = group_real_users(users)
    assert len(groups) == 6
    for seed in range(5):
        split = split_users(users, seed=seed, test_fraction=0.5, limit=None)
        pool_ids = {u["user_id"] for u in split.pool}
        test_ids = {u["user_id"] for u in split.test}
        for group in groups:
            ids = {users[i]["user_id"] for i in group}
            assert not (ids & pool_ids and ids & test_ids)
        assert (split.n_pool_groups, split.n_test_groups) == (3, 3)
        assert len(split.pool) == 3  # one entry per pool user
        assert len(split.test) == 9  # every entry of every test user


def test_split_is_seeded_and_limit_keeps_distinct_users():
    users = _entries(6, 3)
    a = split_users(users, seed=1, test_fraction=0.5, limit=3)
    b = split_users(users, seed=1, test_fraction=0.5, limit=3)
    assert [u["user_id"] for u in a.test] == [u["user_id"] for u in b.test]
    assert len({a.group_of[u["user_id"]] for u in a.test}) == 3


def test_split_needs_two_real_users():
    with pytest.raises(EvaluationError, match="at least 2 real users"):
        split_users(_entries(1, 3), seed=0, test_fraction=0.5, limit=None)


def test_items_are_the_query_plus_the_non_shot_profile_items():
    from mta.tasks import get_task

    entry = _entries(1, 1)[0]
    items = build_items(
        get_task("movie_tagging"), entry, seed=0, group="g", shots=[0, 2], history_k=1
    )
    assert [it.item.kind for it in items].count("query") == 1
    assert len(items) == 1 + 10 - 2
    profile_ids = {it.item.item_id for it in items if it.item.kind == "profile"}
    assert not profile_ids & {entry["profile"][0]["id"], entry["profile"][2]["id"]}
    # A profile item's history never contains the item itself.
    for it in items:
        if it.item.kind == "profile":
            assert all(h["id"] != it.item.item_id for h in it.history)


def test_data_path_prefers_the_flag_then_the_env(tmp_path, monkeypatch):
    users = tmp_path / "u.json"
    users.write_text(json.dumps(_entries(2, 1)))
    assert resolve_data_path("movie_tagging", users) == users
    with pytest.raises(EvaluationError, match="no such file"):
        resolve_data_path("movie_tagging", tmp_path / "missing.json")
    (tmp_path / "lamp" / "citation").mkdir(parents=True)
    (tmp_path / "lamp" / "citation" / "users.json").write_text("[]")
    monkeypatch.setenv("MTA_LAMP_DIR", str(tmp_path / "lamp"))
    assert resolve_data_path("citation", None) == tmp_path / "lamp" / "citation" / "users.json"


def test_data_falls_back_to_the_current_directory_not_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("MTA_LAMP_DIR", raising=False)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    shared = tmp_path / "shared" / "lamp" / "citation" / "users.json"
    shared.parent.mkdir(parents=True)
    shared.write_text("[]")
    assert resolve_data_path("citation", None).resolve() == shared.resolve()
    fetched = checkout / "lamp" / "citation" / "users.json"  # where `mta data fetch` writes
    fetched.parent.mkdir(parents=True)
    fetched.write_text("[]")
    assert resolve_data_path("citation", None).resolve() == fetched.resolve()


def test_missing_data_names_every_way_to_provide_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MTA_LAMP_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EvaluationError, match="mta data fetch --task scholarly_title"):
        resolve_data_path("scholarly_title", None)


@pytest.mark.skipif(not SHARED_MOVIES.is_dir(), reason="shared LaMP users not present")
def test_shared_movie_users_split_into_16_real_users():
    from mta.lamp_data import load_users

    users = load_users(SHARED_MOVIES / "users.json")
    split = split_users(users, seed=0, test_fraction=0.5, limit=None)
    assert split.n_pool_groups + split.n_test_groups == 16
    assert len(split.test) == 3 * split.n_test_groups
