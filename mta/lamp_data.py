"""LaMP user files: the per-user format, its validation, and conversion from the official files.

Per-user format (one JSON list)::

    [{"user_id": "310", "profile": [{...item...}, ...],
      "query": [{"id": "3100", "input": "<official LaMP question>", "gold": "<answer>"}]}]

Profile items carry the task's fields (e.g. movie tagging: tag, description, id).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mta.errors import DataFormatError

LAMP_DIR_ENV = "MTA_LAMP_DIR"
USERS_FILE = "users.json"

# The largest value a profile item or query field may hold, in UTF-8 bytes. The embedder and
# training read ~256 tokens (about 1-2 KB) of an item, and real LaMP fields stay under a few
# KB; a multi-megabyte field only costs time (the tokenizers encode all of it first: a 5 MB
# description took minutes in `mta user add`), so it is refused in one line up front.
MAX_FIELD_BYTES = 64 * 1024

# Entries of one real LaMP user repeat the same items with a different one held out;
# unrelated users rarely share this many (see ../shared/lamp/PROVENANCE.md).
SAME_USER_MIN_SHARED = 5


def _user_label(obj: Any, position: int | None) -> str:
    """How to name a user record in an error message."""
    if isinstance(obj, dict) and "user_id" in obj:
        return f"user {obj['user_id']!r}"
    return f"user #{position}" if position is not None else "user record"


def _normalize_id(value: Any, what: str) -> str:
    """Return an id as a non-empty string (LaMP ids are strings, some files use ints)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(f"{what} must be a string or integer, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataFormatError(f"{what} is empty")
    return text


def _field_bytes(value: Any) -> int:
    """Size of a field value: UTF-8 bytes of a string, of its JSON otherwise."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, (dict, list)):
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return 0


def _check_field_sizes(label: str, where: str, record: dict) -> None:
    """DataFormatError naming the user, the field and the limit when a field is too large."""
    for name, value in record.items():
        size = _field_bytes(value)
        if size > MAX_FIELD_BYTES:
            raise DataFormatError(
                f"{label}: {where} field {str(name)[:64]!r} holds {size} bytes, over the "
                f"limit of {MAX_FIELD_BYTES} bytes per field"
            )


def validate_user(
    obj: Any,
    *,
    require_gold: bool = True,
    task: Any = None,
    position: int | None = None,
) -> dict:
    """Validate one per-user record and return a normalized copy.

    Args:
        obj: the parsed JSON object.
        require_gold: demand a non-empty `query` list whose items all have `gold` (evaluation);
            False accepts a record without queries or golds (registering a new user).
        task: a task name or Task; when given, every profile item must hold its fields.
        position: index of the record in its file, used in messages when it has no id.

    Returns:
        A copy with `user_id` and item/query ids as strings and `query` always present.

    Raises:
        DataFormatError: with a one-line message naming the user and the problem (e.g. a
            field over `MAX_FIELD_BYTES`).
    """
    label = _user_label(obj, position)
    if not isinstance(obj, dict):
        raise DataFormatError(f"{label}: expected a JSON object, got {type(obj).__name__}")
    if "user_id" not in obj:
        raise DataFormatError(f"{label}: missing 'user_id'")
    user_id = _normalize_id(obj["user_id"], f"{label}: 'user_id'")
    label = f"user {user_id!r}"

    profile = obj.get("profile")
    if not isinstance(profile, list) or not profile:
        raise DataFormatError(f"{label}: 'profile' must be a non-empty list of items")
    items = _validate_items(label, profile, _task_checker(task))

    queries = obj.get("query", [])
    if queries is None:
        queries = []
    if not isinstance(queries, list):
        raise DataFormatError(f"{label}: 'query' must be a list of {{id, input, gold}}")
    if require_gold and not queries:
        raise DataFormatError(f"{label}: no 'query' to evaluate")
    normalized_queries: list[dict] = []
    for n, query in enumerate(queries):
        if not isinstance(query, dict):
            raise DataFormatError(f"{label}: query #{n} is not a JSON object")
        query = dict(query)
        _check_field_sizes(label, f"query #{n}", query)
        for field in ("id", "input"):
            if field not in query:
                raise DataFormatError(f"{label}: query #{n} has no {field!r}")
        query["id"] = _normalize_id(query["id"], f"{label}: query #{n} 'id'")
        if not isinstance(query["input"], str) or not query["input"].strip():
            raise DataFormatError(f"{label}: query {query['id']!r} has an empty 'input'")
        if "gold" in query and query["gold"] is not None:
            query["gold"] = str(query["gold"])
        elif require_gold:
            raise DataFormatError(f"{label}: query {query['id']!r} has no 'gold'")
        normalized_queries.append(query)

    record = dict(obj)
    record.update(user_id=user_id, profile=items, query=normalized_queries)
    return record


def _validate_items(label: str, profile: list, checker: Any) -> list[dict]:
    """Normalized copies of the profile items (DataFormatError naming the item)."""
    items: list[dict] = []
    for n, item in enumerate(profile):
        if not isinstance(item, dict):
            raise DataFormatError(f"{label}: profile item #{n} is not a JSON object")
        item = dict(item)
        _check_field_sizes(label, f"profile item #{n}", item)
        if "id" in item:
            item["id"] = _normalize_id(item["id"], f"{label}: profile item #{n} 'id'")
        if checker is not None:
            try:
                checker(item)
            except ValueError as exc:
                raise DataFormatError(f"{label}: profile item #{n}: {exc}") from None
        items.append(item)
    return items


def _task_checker(task: Any) -> Any:
    """The item validator of a task (name or object), or None."""
    if task is None:
        return None
    if isinstance(task, str):
        from mta.tasks import get_task

        task = get_task(task)
    return task.check_item


def parse_json(text: str, source: str | Path) -> Any:
    """Parse JSON text read from `source` (a path, or "stdin"); errors are one line naming it.

    Raises:
        DataFormatError: invalid JSON, or JSON nested deeper than Python can parse.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{source}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        # json.loads recurses once per nesting level; "[[[[..." 100k deep exhausts the stack.
        raise DataFormatError(f"{source}: JSON nested too deeply to read") from None


def read_json_file(path: str | Path) -> Any:
    """Read and parse a UTF-8 JSON file; every I/O, encoding and syntax problem is one line.

    Raises:
        DataFormatError: naming the file: missing, a folder, unreadable, not UTF-8, bad JSON.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a folder, not a JSON file") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_json(text, path)


def load_users(path: str | Path, *, require_gold: bool = True, task: Any = None) -> list[dict]:
    """Load and validate a per-user file (a list of records; a single record is accepted too).

    Raises:
        DataFormatError: on unreadable JSON, a bad record, or a repeated user_id.
    """
    path = Path(path)
    data = read_json_file(path)
    records = [data] if isinstance(data, dict) else data
    if not isinstance(records, list) or not records:
        raise DataFormatError(f"{path}: expected a non-empty list of user records")
    users: list[dict] = []
    seen: set[str] = set()
    for position, obj in enumerate(records):
        try:
            user = validate_user(obj, require_gold=require_gold, task=task, position=position)
        except DataFormatError as exc:
            raise DataFormatError(f"{path}: {exc}") from None
        if user["user_id"] in seen:
            raise DataFormatError(f"{path}: user {user['user_id']!r} appears twice")
        seen.add(user["user_id"])
        users.append(user)
    return users


def load_user(path: str | Path, *, task: Any = None) -> dict:
    """Load one user record (for `mta user add`): a JSON object or a list holding exactly one."""
    users = load_users(path, require_gold=False, task=task)
    if len(users) != 1:
        raise DataFormatError(f"{path}: expected one user record, found {len(users)}")
    return users[0]


def save_users(users: Sequence[dict], path: str | Path) -> Path:
    """Write users in the per-user format (UTF-8, indented)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(list(users), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def convert_official(
    questions_path: str | Path, outputs_path: str | Path | None = None
) -> list[dict]:
    """Convert official LaMP files into the per-user format.

    Each official question ({id, input, profile}) becomes one user entry (user_id = the
    question id) with that question as its single query; golds come from the outputs file
    ({task, golds: [{id, output}]}). Without an outputs file (LaMP's hidden test split)
    queries have no gold.

    Raises:
        DataFormatError: on malformed files or a question without a gold.
    """
    questions_path = Path(questions_path)
    questions = read_json_file(questions_path)
    if not isinstance(questions, list) or not questions:
        raise DataFormatError(f"{questions_path}: expected a non-empty list of questions")
    golds: dict[str, str] | None = None
    if outputs_path is not None:
        golds = _read_golds(Path(outputs_path))

    users: list[dict] = []
    for n, question in enumerate(questions):
        if not isinstance(question, dict):
            raise DataFormatError(f"{questions_path}: question #{n} is not a JSON object")
        for field in ("id", "input", "profile"):
            if field not in question:
                raise DataFormatError(f"{questions_path}: question #{n} has no {field!r}")
        qid = _normalize_id(question["id"], f"{questions_path}: question #{n} 'id'")
        query: dict[str, Any] = {"id": qid, "input": question["input"]}
        if golds is not None:
            if qid not in golds:
                raise DataFormatError(f"{outputs_path}: no gold output for question {qid!r}")
            query["gold"] = golds[qid]
        record = {"user_id": qid, "profile": question["profile"], "query": [query]}
        try:
            users.append(validate_user(record, require_gold=golds is not None))
        except DataFormatError as exc:
            raise DataFormatError(f"{questions_path}: {exc}") from None
    return users


def _read_golds(path: Path) -> dict[str, str]:
    """Read an official outputs file into {question id: gold output}."""
    data = read_json_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("golds"), list):
        raise DataFormatError(f"{path}: expected an object with a 'golds' list")
    golds: dict[str, str] = {}
    for n, entry in enumerate(data["golds"]):
        if not isinstance(entry, dict) or "id" not in entry or "output" not in entry:
            raise DataFormatError(f"{path}: gold #{n} needs 'id' and 'output'")
        golds[_normalize_id(entry["id"], f"{path}: gold #{n} 'id'")] = str(entry["output"])
    return golds


def _item_key(item: dict) -> str:
    """Identity of a profile item by content without its id.

    Ids are renumbered per entry (entry 102's items are 1020..1029) and repeat across
    real users, so only the content tells that two entries hold the same item.
    """
    content = {key: value for key, value in item.items() if key != "id"}
    return json.dumps(content, sort_keys=True, ensure_ascii=False)


def group_real_users(
    users: Sequence[dict], *, min_shared: int = SAME_USER_MIN_SHARED
) -> list[list[int]]:
    """Group entries that belong to the same real user.

    Two entries are the same user when their profiles share at least `min_shared`
    identical items; the relation is closed transitively.

    Args:
        users: per-user records.
        min_shared: shared items that make two entries one user.

    Returns:
        Groups of entry indices; each group sorted, groups ordered by their first index.
    """
    holders: dict[str, set[int]] = defaultdict(set)
    for index, user in enumerate(users):
        for item in user.get("profile", []):
            holders[_item_key(item)].add(index)
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for entries in holders.values():
        ordered = sorted(entries)
        for a_pos, a in enumerate(ordered):
            for b in ordered[a_pos + 1 :]:
                shared[(a, b)] += 1

    parent = list(range(len(users)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (a, b), count in shared.items():
        if count >= min_shared:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = defaultdict(list)
    for index in range(len(users)):
        groups[root(index)].append(index)
    return sorted(groups.values(), key=lambda group: group[0])


def lamp_dir() -> Path | None:
    """The folder named by `MTA_LAMP_DIR`, or None when unset."""
    value = os.environ.get(LAMP_DIR_ENV)
    return Path(value).expanduser() if value else None


def find_task_data(task: str) -> Path | None:
    """Path of `$MTA_LAMP_DIR/<task>/users.json` when it exists, else None."""
    root = lamp_dir()
    if root is None:
        return None
    path = root / task / USERS_FILE
    return path if path.is_file() else None
