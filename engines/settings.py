"""The resolver's configuration, read once from environment variables.

| variable | default | meaning |
|---|---|---|
| ``MTA_SERVE_URL`` | unset: the resolver stays off | where `mta serve` listens |
| ``MTA_SERVE_TOKEN`` | none | a read token of that server |
| ``MTA_RESOLVER_CACHE_DIR`` | ``~/.cache/mta/resolver`` | the local folder cache |
| ``MTA_RESOLVER_CACHE_BYTES`` | 8 GiB | its bound (least recently resolved go first) |
| ``MTA_RESOLVER_DTYPE`` | ``fp32`` | fp32, fp16 or bf16 files |
| ``MTA_RESOLVER_MAX_RANK`` | none | compress to this rank (truncated SVD) |
| ``MTA_RESOLVER_TIMEOUT`` | 60 | seconds per HTTP request |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .adapter_cache import AdapterCache
from .client import AdapterClient, FetchOptions
from .errors import ResolverError

URL_ENV = "MTA_SERVE_URL"
TOKEN_ENV = "MTA_SERVE_TOKEN"
CACHE_DIR_ENV = "MTA_RESOLVER_CACHE_DIR"
CACHE_BYTES_ENV = "MTA_RESOLVER_CACHE_BYTES"
DTYPE_ENV = "MTA_RESOLVER_DTYPE"
MAX_RANK_ENV = "MTA_RESOLVER_MAX_RANK"
TIMEOUT_ENV = "MTA_RESOLVER_TIMEOUT"
DEFAULT_CACHE_BYTES = 8 * 2**30
DTYPES = ("fp32", "fp16", "bf16")


class ResolverConfigError(ResolverError, ValueError):
    """An environment variable of the resolver has a value it cannot use."""


@dataclass(frozen=True)
class ResolverSettings:
    """Where to fetch adapters from, with which token and options, and where to keep them."""

    url: str
    token: str | None
    cache_dir: Path
    cache_bytes: int = DEFAULT_CACHE_BYTES
    options: FetchOptions = FetchOptions()
    timeout: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ResolverSettings | None:
        """The settings the variables give, or None when ``MTA_SERVE_URL`` is unset.

        Raises:
            ResolverConfigError: a variable's value is unusable (the message names it).
        """
        url = env.get(URL_ENV, "").strip()
        if not url:
            return None
        if not url.startswith(("http://", "https://")):
            raise ResolverConfigError(f"{URL_ENV}={url!r} is not an http(s) URL")
        dtype = env.get(DTYPE_ENV, "fp32").strip()
        if dtype not in DTYPES:
            raise ResolverConfigError(f"{DTYPE_ENV}={dtype!r}: use one of {', '.join(DTYPES)}")
        max_rank = env.get(MAX_RANK_ENV, "").strip()
        default_dir = Path.home() / ".cache" / "mta" / "resolver"
        return cls(
            url=url,
            token=env.get(TOKEN_ENV, "").strip() or None,
            cache_dir=Path(env.get(CACHE_DIR_ENV, "").strip() or default_dir),
            cache_bytes=_positive(env, CACHE_BYTES_ENV, DEFAULT_CACHE_BYTES),
            options=FetchOptions(
                max_rank=_positive(env, MAX_RANK_ENV, 0) if max_rank else None,
                dtype=dtype,  # type: ignore[arg-type]  # one of DTYPES, checked above
            ),
            timeout=float(_positive(env, TIMEOUT_ENV, 60)),
        )

    def open_cache(self) -> AdapterCache:
        """The folder cache and its client (no I/O until the first resolve)."""
        client = AdapterClient(self.url, self.token, options=self.options, timeout=self.timeout)
        return AdapterCache(self.cache_dir, client, max_bytes=self.cache_bytes)


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ResolverConfigError(f"{name}={text!r} is not a positive integer")
    return value
