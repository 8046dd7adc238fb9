"""Which base-model weights a bank's adapters belong to: a name, the files, and their sha256.

A bank records its base model as a name (`smollm2`, a hub id, a local path). An adapter is
only right on the weights it was trained on, so exports and `mta publish` also record what
that name resolves to on this machine and a digest of those files: the sha256 of the one
weights file (a GGUF, one safetensors file), or of the sorted `"<file> <sha256>"` lines of
several. Hashing a 100 MB GGUF takes about half a second, so digests are kept in
`<cache dir>/base-weights.json` by path, size and mtime, and rehashed only when one changes.

The registry keeps no digest from training time: this is what the bank's base model names
*here and now*, the same resolution training used (`mta.base_model.resolve_base_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mta.storage.base import sha256_file

DIGEST_CACHE_FILE = "base-weights.json"
# Weight files of a model folder, by preference: the first pattern that matches is hashed.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.gguf")
_memo: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, this process
_memo_lock = threading.Lock()


@dataclass(frozen=True)
class BaseWeights:
    """A bank's base model and the weights it resolves to on this machine."""

    name: str  # as the bank records it: "smollm2", a hub id, or a local path
    weights: str | None  # the GGUF file or model folder it resolves to; None: not here
    format: str  # "gguf" (dequantized when loaded), "safetensors", "bin", or "unknown"
    sha256: str | None  # digest of the weight files; None when they are not on this machine

    @property
    def dequantized_gguf(self) -> bool:
        """Whether training used weights dequantized from a GGUF (not the hub's originals)."""
        return self.format == "gguf"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)


def base_weights(base_model: str, cache_dir: Path) -> BaseWeights:
    """Resolve a bank's base model to its weight files here and digest them (cached).

    A hub id is looked up in the local Hugging Face cache only (no download); when it is not
    there, `weights` and `sha256` are None.
    """
    from mta.base_model import resolve_base_model
    from mta.errors import MtaError

    try:
        resolved = resolve_base_model(base_model)
    except MtaError:
        return BaseWeights(base_model, None, "unknown", None)
    path = Path(resolved)
    if not path.is_absolute():  # a hub id: only a copy already in the local cache counts
        found = _hub_snapshot(resolved)
        if found is None:
            return BaseWeights(base_model, None, "unknown", None)
        path = found
    files = [path] if path.is_file() else _weight_files(path)
    if not files:
        return BaseWeights(base_model, str(path), "unknown", None)
    kind = files[0].suffix.lstrip(".") or "unknown"
    cache = _DigestCache(Path(cache_dir) / DIGEST_CACHE_FILE)
    digests = [(file, cache.sha256(file)) for file in files]
    cache.save()
    if len(digests) == 1:
        digest = digests[0][1]
    else:
        lines = "".join(f"{file.relative_to(path)} {sha}\n" for file, sha in digests)
        digest = hashlib.sha256(lines.encode()).hexdigest()
    return BaseWeights(base_model, str(path), kind, digest)


def _weight_files(folder: Path) -> list[Path]:
    """The model folder's weight files of the first pattern that has any, sorted."""
    for pattern in WEIGHT_PATTERNS:
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if files:
            return files
    return []


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub model, when its config is in the HF cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id the hub library refuses is simply not cached here
        return None
    return Path(found).parent if isinstance(found, str) else None


class _DigestCache:
    """sha256 of files by (path, size, mtime_ns): in this process, then in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, Any] | None = None
        self._dirty = False

    def sha256(self, file: Path) -> str:
        """The file's sha256, hashed only when its size or mtime changed since last time."""
        real = os.path.realpath(file)  # hub snapshots are symlinks into blobs/
        stat = os.stat(real)
        key = (real, stat.st_size, stat.st_mtime_ns)
        with _memo_lock:
            if key in _memo:
                return _memo[key]
        entry = self._load().get(real)
        if isinstance(entry, dict) and [entry.get("size"), entry.get("mtime_ns")] == [
            stat.st_size,
            stat.st_mtime_ns,
        ]:
            digest = str(entry["sha256"])
        else:
            digest = sha256_file(real)
            self._load()[real] = {
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "sha256": digest,
            }
            self._dirty = True
        with _memo_lock:
            _memo[key] = digest
        return digest

    def save(self) -> None:
        """Write the file back (temp + rename) when a digest was computed; best effort."""
        if not self._dirty or self._entries is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self._entries, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only cache costs a rehash next time, no more

    def _load(self) -> dict[str, Any]:
        if self._entries is None:
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, ValueError):
                loaded = {}
            self._entries = loaded if isinstance(loaded, dict) else {}
        return self._entries
