"""`mta user recode`: ids or --all, one summary line or JSON, refusals exit 1."""

from __future__ import annotations

import json

from tests.support import TASK, CliEnv, Mta, movie_user, ok


def test_user_recode_cli(cli_env: CliEnv, mta: Mta, pushed_bank: dict) -> None:
    for user_id in ("a", "b", "c"):
        path = cli_env.root / f"{user_id}.json"
        path.write_text(json.dumps(movie_user(user_id, 6)))
        ok(mta("user", "add", user_id, "--bank", TASK, "--profile", path, "--json"))
    for user_id, dtype in (("a", "fp16"), ("b", "int8")):
        ok(
            mta(
                "user",
                "adapt",
                user_id,
                "--shots",
                "2",
                "--max-steps",
                "1",
                "--dtype",
                dtype,
                "--json",
            )
        )
    one = ok(mta("user", "recode", "a", "--dtype", "nf4", "--json"))
    assert [r["user_id"] for r in one["recoded"]] == ["a"] and one["bytes_after"] < one[
        "bytes_before"
    ]
    refused = mta("user", "recode", "--all", "--dtype", "nf4")
    assert refused.code == 1  # b is int8: refused; a is already nf4; c has no stack
    assert "b: a int8 stack cannot be recoded to nf4" in refused.stderr
    assert (
        "recoded 0 stack(s) to nf4" in refused.stdout
        and "1 already nf4, 1 refused" in refused.stdout
    )
    assert mta("user", "recode", "a", "--all", "--dtype", "nf4").code == 2
    assert mta("user", "recode", "a", "--dtype", "int3").code == 1
    assert ok(mta("storage", "report", "--json"))["current_stack_formats"] == {"int8": 1, "nf4": 1}
