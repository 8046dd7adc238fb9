"""The resolver's archive checks, names and settings, on crafted inputs (no server)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from mta.engines.archive_check import check_archive, digest_from_header
from mta.engines.errors import ArchiveError
from mta.engines.names import AdapterName
from mta.engines.settings import ResolverConfigError, ResolverSettings

CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}


def _weights(names: tuple[str, ...] = ("base_model.model.q.lora_A.weight",)) -> bytes:
    import torch
    from safetensors.torch import save

    return save({name: torch.zeros(2, 4) for name in names})


def _tar(*members: tuple[str, bytes | None]) -> bytes:
    """A tar of (name, data) members; None data makes a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _good(config: dict | None = None, weights: bytes | None = None) -> list[tuple[str, bytes]]:
    return [
        ("adapter_config.json", json.dumps(config or CONFIG).encode()),
        ("adapter_model.safetensors", weights if weights is not None else _weights()),
    ]


def _check(data: bytes) -> dict[str, bytes]:
    return check_archive(data, sha256_hex=hashlib.sha256(data).hexdigest())


def test_a_good_archive_passes_and_its_files_come_back() -> None:
    members = _good()
    assert _check(_tar(*members)) == dict(members)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([*_good(), ("extra.txt", b"x")], "unexpected archive member 'extra.txt'"),
        ([_good()[0]], "lacks adapter_model.safetensors"),
        ([*_good(), _good()[0]], "appears twice"),
        ([_good()[0], ("adapter_model.safetensors", None)], "unexpected archive member"),
        ([("../adapter_config.json", b"{}"), _good()[1]], "unexpected archive member"),
        (_good(config={"peft_type": "PROMPT_TUNING", "r": 2}), "only LORA"),
        (_good(config={"peft_type": "LORA", "r": 0}), "r must be a positive integer"),
        ([("adapter_config.json", b"{not json"), _good()[1]], "is not JSON"),
        (_good(weights=b"\x08\x00\x00\x00\x00\x00\x00\x00{}"), "does not parse"),
        (_good(weights=_weights(("lm_head.weight",))), "non-LoRA tensors"),
    ],
)
def test_a_malformed_archive_is_refused(members: list, message: str) -> None:
    with pytest.raises(ArchiveError, match=message.replace("(", r"\(")):
        _check(_tar(*members))


def test_bytes_that_differ_from_the_announced_digest_are_refused() -> None:
    data = _tar(*_good())
    with pytest.raises(ArchiveError, match="is not the announced"):
        check_archive(data, sha256_hex=hashlib.sha256(data + b"x").hexdigest())
    with pytest.raises(ArchiveError, match="not a tar archive"):
        _check(b"not a tar at all" * 64)


def test_the_repr_digest_header_is_read_strictly() -> None:
    raw = hashlib.sha256(b"x").digest()
    value = f"sha-256=:{base64.b64encode(raw).decode()}:"
    assert digest_from_header(value) == raw.hex()
    assert digest_from_header(f"sha-512=:AAAA:, {value}") == raw.hex()
    for bad in (None, "", "sha-256=abc", "sha-256=:AAAA:", "sha-256=:!!!!:"):
        with pytest.raises(ArchiveError, match="Repr-Digest"):
            digest_from_header(bad)


def test_names_are_user_ids_then_twelve_hex() -> None:
    assert AdapterName.parse("bob@example.org~0123456789ab") == AdapterName(
        "bob@example.org", "0123456789ab"
    )
    assert str(AdapterName("a", "0123456789ab")) == "a~0123456789ab"
    for name in ("a", "a~0123456789a", "a~0123456789abc", "a~0123456789AB", "a/b~0123456789ab"):
        assert AdapterName.parse(name) is None
    # "@" is a user-id character, not the separator: such a name is not ours.
    assert AdapterName.parse("a@0123456789ab") is None
    assert AdapterName.parse("..~0123456789ab") is None


def test_settings_come_from_the_environment(tmp_path: Path) -> None:
    assert ResolverSettings.from_env({}) is None
    settings = ResolverSettings.from_env(
        {
            "MTA_SERVE_URL": "http://127.0.0.1:8080/",
            "MTA_SERVE_TOKEN": "t" * 20,
            "MTA_RESOLVER_CACHE_DIR": str(tmp_path),
            "MTA_RESOLVER_CACHE_BYTES": "1000",
            "MTA_RESOLVER_DTYPE": "fp16",
            "MTA_RESOLVER_MAX_RANK": "16",
        }
    )
    assert settings is not None and settings.cache_bytes == 1000
    assert settings.options.tag == "fp16-r16" and settings.token == "t" * 20
    cache = settings.open_cache()
    assert cache.root == tmp_path / "fp16-r16" and not cache.root.exists()  # no I/O yet
    for variable, bad in [
        ("MTA_SERVE_URL", "ftp://x"),
        ("MTA_RESOLVER_DTYPE", "int8"),
        ("MTA_RESOLVER_CACHE_BYTES", "-1"),
        ("MTA_RESOLVER_MAX_RANK", "x"),
    ]:
        env = {"MTA_SERVE_URL": "http://h", variable: bad}
        with pytest.raises(ResolverConfigError, match=variable):
            ResolverSettings.from_env(env)
