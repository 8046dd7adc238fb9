"""Download the official LaMP files (questions + outputs) and convert them to the per-user format.

The files come from the LaMP authors' host. No checksums of them are published, so none
are pinned here (we do not invent any): the first download records the sha256 of every
file in ``manifest.json`` as *unpinned*, and later downloads into the same folder are
verified against that manifest (trust on first use). A digest added to ``KNOWN_SHA256``
is always verified.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mta.errors import MtaError, unknown_name
from mta.progress import ProgressFn

DEFAULT_BASE_URL = "https://ciir.cs.umass.edu/downloads/LaMP"
BASE_URL_ENV = "MTA_LAMP_BASE_URL"
LAMP_DIR_ENV = "MTA_LAMP_DIR"
MANIFEST = "manifest.json"
USERS_FILE = "users.json"

LAMP_NUMBERS = {
    "citation": 1,
    "movie_tagging": 2,
    "product_rating": 3,
    "news_headline": 4,
    "scholarly_title": 5,
}
# The test split has no public outputs, so it cannot be scored.
SPLITS = ("train", "dev")
# sha256 of official files, keyed by URL path below the base URL ("LaMP_2/dev/dev_outputs.json").
# Empty on purpose: the host publishes none, and a checksum we never verified would be a lie.
KNOWN_SHA256: dict[str, str] = {}

_CHUNK = 1 << 20
_TIMEOUT_S = 30.0


class FetchError(MtaError):
    """A download failed: offline, HTTP error, or a file that does not match its checksum."""


@dataclass(frozen=True)
class FetchedFile:
    """One downloaded file and how its integrity was established."""

    name: str
    url: str
    sha256: str
    bytes: int
    status: str  # "verified" (known or manifest digest matched) or "unpinned" (first seen)


@dataclass(frozen=True)
class FetchResult:
    """What `fetch_task` wrote."""

    task: str
    split: str
    folder: Path
    users_path: Path
    n_users: int
    files: list[FetchedFile]


def task_paths(task: str, split: str = "dev") -> list[str]:
    """URL paths (below the base URL) of a task split's questions and outputs files."""
    if task not in LAMP_NUMBERS:
        raise unknown_name("LaMP task", task, list(LAMP_NUMBERS))
    if split not in SPLITS:
        raise unknown_name("LaMP split", split, list(SPLITS))
    n = LAMP_NUMBERS[task]
    return [f"LaMP_{n}/{split}/{split}_questions.json", f"LaMP_{n}/{split}/{split}_outputs.json"]


def default_dest() -> Path:
    """Where fetched data goes by default: ``$MTA_LAMP_DIR``, else ``./lamp``."""
    return Path(os.environ.get(LAMP_DIR_ENV) or "lamp")


def fetch_task(
    task: str,
    dest: str | Path | None = None,
    *,
    split: str = "dev",
    base_url: str | None = None,
    progress: ProgressFn | None = None,
) -> FetchResult:
    """Download a task's official files into ``<dest>/<task>/`` and convert them.

    Args:
        task: task name, e.g. "movie_tagging".
        dest: data root (default ``default_dest()``).
        split: "dev" (default) or "train".
        base_url: host root (default env ``MTA_LAMP_BASE_URL``, else the LaMP host).
        progress: optional ``(file name, bytes done, bytes total or 0)`` callback.

    Returns:
        A ``FetchResult``; ``users_path`` holds the converted per-user file.

    Raises:
        FetchError: the host cannot be reached, answers an HTTP error, or a file does not
            match its known or previously recorded sha256.
    """
    paths = task_paths(task, split)
    base = (base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/")
    folder = Path(dest or default_dest()) / task
    folder.mkdir(parents=True, exist_ok=True)
    recorded = _read_manifest(folder / MANIFEST)
    fetched = []
    for rel in paths:
        url = f"{base}/{rel}"
        name = rel.rsplit("/", 1)[1]
        expected = KNOWN_SHA256.get(rel) or recorded.get(url)
        digest, size = _download(url, folder / name, expected, progress)
        fetched.append(FetchedFile(name, url, digest, size, "verified" if expected else "unpinned"))
    from mta.lamp_data import convert_official

    users = convert_official(folder / fetched[0].name, folder / fetched[1].name)
    users_path = folder / USERS_FILE
    tmp = users_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(users, ensure_ascii=False, indent=1))
    tmp.replace(users_path)
    _write_manifest(folder / MANIFEST, task, split, fetched, len(users))
    return FetchResult(task, split, folder, users_path, len(users), fetched)


def _download(
    url: str,
    target: Path,
    expected: str | None,
    progress: ProgressFn | None,
) -> tuple[str, int]:
    """Stream ``url`` to ``target`` atomically; return (sha256, size)."""
    host = urllib.parse.urlsplit(url).netloc or url
    tmp = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response, tmp.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                if progress:
                    progress(target.name, size, total)
    except urllib.error.HTTPError as exc:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        tmp.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FileNotFoundError):
            raise FetchError(f"{url}: no such file") from None
        raise FetchError(f"cannot reach {host}: are you offline? ({reason})") from None
    hexdigest = digest.hexdigest()
    if expected and hexdigest != expected:
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{url}: sha256 {hexdigest} does not match the expected {expected}")
    tmp.replace(target)
    return hexdigest, size


def _read_manifest(path: Path) -> dict[str, str]:
    """URL -> sha256 recorded by an earlier fetch into the same folder."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        return {f["url"]: f["sha256"] for f in data.get("files", [])}
    except (ValueError, KeyError, TypeError):
        raise FetchError(f"{path}: unreadable manifest; delete it to re-record checksums") from None


def _write_manifest(
    path: Path, task: str, split: str, files: list[FetchedFile], n_users: int
) -> None:
    """Record where every file came from and its digest."""
    data = {
        "task": task,
        "split": split,
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_users": n_users,
        "files": [f.__dict__ for f in files],
        "note": (
            "'unpinned': no published checksum exists; the sha256 is what was downloaded, "
            "and later fetches into this folder are verified against it."
        ),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
