"""Finding and loading the users files of `mta eval`: the pool and, optionally, the test users."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mta.evaluation.statistics import EvaluationError

# Folders searched for <task>/users.json after --data and $MTA_LAMP_DIR, relative to the
# current directory: where `mta data fetch` writes by default, then the shared folder
# beside a development checkout. Never the package's install path: an installed package
# has no checkout around it.
CWD_LAMP_DIRS = (Path("lamp"), Path("..") / "shared" / "lamp")


def resolve_data_path(task: str, data: Path | None) -> Path:
    """The users file: --data, else $MTA_LAMP_DIR/<task>/users.json, else ./lamp, ../shared/lamp.

    Raises:
        EvaluationError: none of them exists.
    """
    from mta.lamp_data import USERS_FILE, find_task_data

    if data is not None:
        if not Path(data).is_file():
            raise EvaluationError(f"--data {data}: no such file")
        return Path(data)
    found = find_task_data(task)
    if found is not None:
        return found
    for folder in CWD_LAMP_DIRS:
        candidate = Path.cwd() / folder / task / USERS_FILE
        if candidate.is_file():
            return candidate
    raise EvaluationError(
        f"no data for task {task!r}: pass --data FILE, set MTA_LAMP_DIR, "
        f"or run `mta data fetch --task {task}`"
    )


def load_test_users(path: Path, pool: list[dict], pool_path: Path, task: Any) -> list[dict]:
    """The users of --test-data, refused when one is the same real user as a pool user.

    Raises:
        EvaluationError: the file is missing, or shares a real user with the pool.
    """
    from mta.lamp_data import group_real_users, load_users

    if not Path(path).is_file():
        raise EvaluationError(f"--test-data {path}: no such file")
    test = load_users(path, task=task)
    # Entries of one real user share profile items: group both files together and refuse
    # any real user with entries on both sides (the bank would have seen the test user).
    for group in group_real_users([*pool, *test]):
        pooled = [i for i in group if i < len(pool)]
        tested = [i - len(pool) for i in group if i >= len(pool)]
        if pooled and tested:
            raise EvaluationError(
                f"--test-data {path}: user {test[tested[0]]['user_id']} is the same real user "
                f"as user {pool[pooled[0]]['user_id']} of --data {pool_path} (they share "
                "profile items); a test user must not be in the pool"
            )
    return test
