"""Checking a fetched adapter archive before anything of it reaches an engine.

An archive passes when its sha256 is the one the server sent (``Repr-Digest``), it is a
plain tar of exactly ``adapter_config.json`` and ``adapter_model.safetensors`` (regular
files, each once), the config is a PEFT LoRA config the method core accepts, and the
weights parse as safetensors holding only LoRA factors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import tarfile
from typing import Any

from mta.errors import AdapterFormatError
from mta.peft_config import CONFIG_NAME, check_supported

from .errors import ArchiveError

WEIGHTS_NAME = "adapter_model.safetensors"
ARCHIVE_FILES = (CONFIG_NAME, WEIGHTS_NAME)
_SHA256 = re.compile(r"sha-256=:(?P<b64>[A-Za-z0-9+/]+=*):")
_FACTOR = re.compile(r"\.lora_[AB](\.[^.]+)?\.weight$")


def digest_from_header(value: str | None) -> str:
    """The sha256 hex a ``Repr-Digest`` header value (RFC 9530) announces.

    Raises:
        ArchiveError: no header, or no well-formed ``sha-256`` entry in it.
    """
    for entry in (value or "").split(","):
        match = _SHA256.fullmatch(entry.strip())
        if match is None:
            continue
        try:
            raw = base64.b64decode(match["b64"], validate=True)
        except binascii.Error:
            break
        if len(raw) == 32:
            return raw.hex()
        break
    raise ArchiveError(f"the response has no usable sha-256 Repr-Digest (got {value!r})")


def check_archive(data: bytes, *, sha256_hex: str) -> dict[str, bytes]:
    """The archive's two files, by name, once every check passed.

    Args:
        data: the archive's bytes as received.
        sha256_hex: the sha256 the server announced for them.

    Raises:
        ArchiveError: the bytes differ from the announced digest, or the archive is not a
            PEFT LoRA folder of exactly the two files with a valid config and weights.
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256_hex:
        raise ArchiveError(f"archive sha256 {actual[:16]}… is not the announced {sha256_hex[:16]}…")
    files = _members(data)
    _check_config(files[CONFIG_NAME])
    _check_weights(files[WEIGHTS_NAME])
    return files


def _members(data: bytes) -> dict[str, bytes]:
    """The tar's regular files; exactly `ARCHIVE_FILES`, each once, nothing else."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.name not in ARCHIVE_FILES or not member.isreg():
                    raise ArchiveError(f"unexpected archive member {member.name!r}")
                if member.name in files:
                    raise ArchiveError(f"archive member {member.name!r} appears twice")
                handle = tar.extractfile(member)
                files[member.name] = handle.read() if handle is not None else b""
    except tarfile.TarError as error:
        raise ArchiveError(f"not a tar archive: {error}") from error
    missing = [name for name in ARCHIVE_FILES if name not in files]
    if missing:
        raise ArchiveError(f"archive lacks {', '.join(missing)}")
    return files


def _check_config(raw: bytes) -> dict[str, Any]:
    """A LoRA adapter_config.json the method core accepts, with a positive integer ``r``."""
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{CONFIG_NAME} is not JSON: {error}") from error
    if not isinstance(config, dict):
        raise ArchiveError(f"{CONFIG_NAME} is not a JSON object")
    try:
        check_supported(config, CONFIG_NAME)
    except AdapterFormatError as error:
        raise ArchiveError(str(error)) from error
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise ArchiveError(f"{CONFIG_NAME}: r must be a positive integer, got {rank!r}")
    return config


def _check_weights(raw: bytes) -> None:
    """Safetensors that parse (header, offsets, sizes) and hold only LoRA A/B factors."""
    from safetensors import SafetensorError, deserialize

    try:
        tensors = deserialize(raw)
    except SafetensorError as error:
        raise ArchiveError(f"{WEIGHTS_NAME} does not parse: {error}") from error
    if not tensors:
        raise ArchiveError(f"{WEIGHTS_NAME} holds no tensors")
    strangers = [name for name, _ in tensors if not _FACTOR.search(name)]
    if strangers:
        raise ArchiveError(f"{WEIGHTS_NAME} holds non-LoRA tensors, e.g. {strangers[0]!r}")
