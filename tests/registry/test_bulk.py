"""Bulk adapt in one process: selection, skip rules, failures, re-runs."""

from __future__ import annotations

import pytest
import torch

from mta.registry.errors import InvalidInputError
from mta.registry.jobs.bulk import (
    WorkSpec,
    adapt_one,
    fuse_one,
    read_id_file,
    run_local,
    select_users,
)
from mta.registry.jobs.outcomes import ADAPTED, FAILED, SKIPPED
from mta.registry.requests import AdaptRequest, FuseRequest
from mta.registry.service import add_user, get_user
from tests.support import TASK, movie_user

REQUEST = AdaptRequest(shots=2, max_steps=1)


def _add(ctx, *user_ids: str) -> None:
    for user_id in user_ids:
        add_user(ctx, user_id=user_id, task=TASK, profile=movie_user(user_id, 6))


def test_selection_all_missing_stale_and_explicit(bank_registry, push_bank_fn, tmp_path):
    _add(bank_registry, "u1", "u2", "u3")
    adapt_one(bank_registry, "u1", REQUEST)
    assert select_users(bank_registry, all_users=True) == ["u1", "u2", "u3"]
    assert select_users(bank_registry, missing=True) == ["u2", "u3"]
    assert select_users(bank_registry, stale=True) == []
    push_bank_fn(bank_registry, seed=1)  # v2: u1's stack is now stale
    assert select_users(bank_registry, stale=True) == ["u1"]
    assert select_users(bank_registry, ids=["u3", "u1", "u3"], missing=True) == ["u3", "u1", "u2"]
    assert select_users(bank_registry, all_users=True, task="citation") == []
    ids = tmp_path / "ids.txt"
    ids.write_text("# today's users\nu2\n\nu3\n")
    assert read_id_file(ids) == ["u2", "u3"]
    with pytest.raises(InvalidInputError, match="--all"):
        select_users(bank_registry)


def test_idempotent_skip_force_and_refresh_of_stale_users(bank_registry, push_bank_fn):
    _add(bank_registry, "v1")
    first = adapt_one(bank_registry, "v1", REQUEST)
    assert first.status == ADAPTED and set(first.phases) == {"fuse", "train", "commit"}
    again = adapt_one(bank_registry, "v1", REQUEST)
    assert again.status == SKIPPED
    assert adapt_one(bank_registry, "v1", AdaptRequest(shots=3, max_steps=1)).status == ADAPTED
    assert adapt_one(bank_registry, "v1", REQUEST, force=True).status == ADAPTED
    push_bank_fn(bank_registry, seed=1)
    refreshed = adapt_one(bank_registry, "v1", REQUEST, refresh=True)
    detail = get_user(bank_registry, "v1")
    assert refreshed.status == ADAPTED and detail.recipe.bank_version == 2
    assert not detail.stack.stale and detail.num_stacks == 4


def test_a_failing_user_is_reported_and_the_job_goes_on(bank_registry):
    _add(bank_registry, "w1", "w2")
    seen = []
    summary = run_local(
        bank_registry,
        ["w1", "nobody", "w2"],
        WorkSpec.adapt_users(REQUEST),
        on_outcome=lambda outcome, done, total: seen.append((outcome.status, done, total)),
    )
    assert summary.done == ("w1", "w2") and summary.skipped == ()
    assert summary.failed == (("nobody", "no user 'nobody'; add one with `mta user add`"),)
    assert [s for s, _, _ in seen] == [ADAPTED, FAILED, ADAPTED] and seen[-1][1:] == (3, 3)
    assert summary.seconds_p50 > 0 and summary.users_per_minute > 0
    rerun = run_local(bank_registry, ["w1", "w2"], WorkSpec.adapt_users(REQUEST))
    assert rerun.skipped == ("w1", "w2") and rerun.done == ()


def test_bulk_fuse_skips_users_with_a_recipe(bank_registry):
    _add(bank_registry, "x1")
    assert fuse_one(bank_registry, "x1", FuseRequest(top_k=2)).status == "fused"
    assert fuse_one(bank_registry, "x1", FuseRequest(top_k=2)).status == SKIPPED
    assert fuse_one(bank_registry, "x1", FuseRequest(top_k=3), force=True).status == "fused"
    assert get_user(bank_registry, "x1").num_recipes == 2


def test_bulk_fuse_refresh_moves_old_recipes_to_the_latest_bank(bank_registry, push_bank_fn):
    _add(bank_registry, "y1")
    assert fuse_one(bank_registry, "y1", FuseRequest()).status == "fused"
    assert (
        fuse_one(bank_registry, "y1", FuseRequest(), refresh=True).status == SKIPPED
    )  # on the latest
    push_bank_fn(bank_registry, seed=1)
    assert fuse_one(bank_registry, "y1", FuseRequest(), refresh=True).status == "fused"
    assert get_user(bank_registry, "y1").recipe.bank_version == 2


def test_one_work_spec_runs_adapt_and_fuse_and_validates_its_request(bank_registry):
    _add(bank_registry, "z1")
    spec = WorkSpec.adapt_users(AdaptRequest(shots=2, max_steps=1))
    assert (spec.kind, spec.verb) == ("adapt", ADAPTED)
    assert spec.run(bank_registry, "z1").status == ADAPTED
    assert spec.run(bank_registry, "z1").status == SKIPPED
    assert WorkSpec.fuse_users(FuseRequest()).run(bank_registry, "z1").status == SKIPPED
    with pytest.raises(InvalidInputError, match="shots must be at least 1"):
        WorkSpec.adapt_users(AdaptRequest(shots=0))
    with pytest.raises(InvalidInputError, match="seed must be between"):
        WorkSpec.adapt_users(AdaptRequest(seed=10**23))
    with pytest.raises(KeyError, match="unknown fusion method 'magic'"):
        WorkSpec.fuse_users(FuseRequest(method="magic"))


def test_add_users_embeds_in_batches_and_reports_each_record(bank_registry):
    from mta.registry.jobs.outcomes import ADDED
    from mta.registry.users.add_many import add_users, only_task_with_bank

    assert only_task_with_bank(bank_registry) == TASK
    _add(bank_registry, "old")
    records = [movie_user("n1", 5), movie_user("old", 5), {"user_id": "n2"}, movie_user("n3", 5)]
    seen = []
    outcomes = add_users(
        bank_registry, records, task=TASK, chunk=2, on_outcome=lambda o, d, t: seen.append((d, t))
    )
    assert [(o.user_id, o.status) for o in outcomes] == [
        ("n1", ADDED), ("old", SKIPPED), ("n2", FAILED), ("n3", ADDED),
    ]  # fmt: skip
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert get_user(bank_registry, "n3").profile_items == 5


def test_users_trained_two_per_pass_get_the_stacks_they_would_get_alone(bank_registry):
    from mta.adapter_blob import adapter_from_bytes

    _add(bank_registry, "b1", "b2", "b3")
    request = AdaptRequest(shots=3, epochs=1)
    one_by_one = run_local(bank_registry, ["b1", "b2", "b3"], WorkSpec.adapt_users(request))
    first = {u: get_user(bank_registry, u).stack for u in ("b1", "b2", "b3")}
    spec = WorkSpec.adapt_users(request, force=True, batch_users=2)
    seen = []
    batched = run_local(
        bank_registry, ["b1", "nobody", "b2", "b3"], spec, on_outcome=lambda o, d, t: seen.append(d)
    )
    assert one_by_one.done == ("b1", "b2", "b3") and batched.done == ("b1", "b2", "b3")
    assert batched.failed[0][0] == "nobody" and seen == [1, 2, 3, 4]
    assert set(batched.phase_means) == {"fuse", "train", "commit"}
    for user_id, old in first.items():
        new = get_user(bank_registry, user_id).stack
        assert new.stack_id != old.stack_id and new.train_config == {
            **old.train_config,
            "losses": new.train_config["losses"],
        }
        a = adapter_from_bytes(bank_registry.store.get_bytes(old.blob))
        b = adapter_from_bytes(bank_registry.store.get_bytes(new.blob))
        for path, module in a.modules.items():
            assert torch.allclose(b.modules[path].B, module.B, rtol=1e-3, atol=1e-6), path
    skipped = run_local(bank_registry, ["b1", "b2"], WorkSpec.adapt_users(request, batch_users=2))
    assert skipped.skipped == ("b1", "b2")
    with pytest.raises(InvalidInputError, match="batch_users must be at least 1"):
        WorkSpec.adapt_users(request, batch_users=0)
