"""The HTTP side of the resolver: one versioned adapter fetch from `mta serve`.

``GET /v1/users/{user_id}/adapter?version=<version>`` with the read token and, when a copy
is kept, ``If-None-Match``. The server answers the bytes of exactly that version (200, with
``X-MTA-Adapter-Name`` echoing the name and the archive's sha256 in ``Repr-Digest``), 304
for the kept copy, 410 when the version is no longer current, 404 when the user has no
adapter. A 200 is checked (`archive_check`) before it is returned.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote

import httpx

from mta.errors import one_line

from .archive_check import check_archive, digest_from_header
from .errors import ArchiveError, ResolverError
from .names import AdapterName

NAME_HEADER = "x-mta-adapter-name"
FetchStatus = Literal["fresh", "not_modified", "gone", "not_found"]


@dataclass(frozen=True)
class FetchOptions:
    """The export options every fetch of one cache uses (fixed per deployment)."""

    max_rank: int | None = None
    dtype: Literal["fp32", "fp16", "bf16"] = "fp32"

    @property
    def tag(self) -> str:
        """A folder-name tag for these options: ``fp32``, ``fp16-r16``."""
        return self.dtype + (f"-r{self.max_rank}" if self.max_rank is not None else "")

    def params(self) -> dict[str, str]:
        """The query parameters that ask the server for these options."""
        found = {"dtype": self.dtype}
        if self.max_rank is not None:
            found["max_rank"] = str(self.max_rank)
        return found


@dataclass(frozen=True)
class Fetched:
    """How the server answered one fetch; ``files`` only when ``status`` is "fresh"."""

    status: FetchStatus
    etag: str | None = None
    sha256: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)


@dataclass
class ClientStats:
    """What a client has sent and received (bodies of archives only)."""

    requests: int = 0
    archives: int = 0
    archive_bytes: int = 0
    not_modified: int = 0


class AdapterClient:
    """A thread-safe client of one `mta serve` (one connection pool, the read token)."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        options: FetchOptions | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        self.options = options or FetchOptions()
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def fetch(self, name: AdapterName, etag: str | None = None) -> Fetched:
        """Fetch one version of a user's adapter (revalidating ``etag`` when given).

        Raises:
            ArchiveError: a 200 whose archive or headers are not the named version's.
            ResolverError: the server is unreachable or answered an unexpected status.
        """
        headers = {"If-None-Match": etag} if etag else {}
        params = {"version": name.version, **self.options.params()}
        response = self._get(f"/v1/users/{quote(name.user_id, safe='')}/adapter", params, headers)
        status = response.status_code
        if status == 410:
            return Fetched("gone")
        if status == 404:
            return Fetched("not_found")
        if status not in (200, 304):
            raise ResolverError(f"{self.base_url}: {status} for {name}: {_message(response)}")
        echoed = response.headers.get(NAME_HEADER)
        if echoed != str(name):
            raise ArchiveError(f"asked for {name}, the server answered for {echoed!r}")
        if status == 304:
            if not etag:
                raise ResolverError(f"{self.base_url}: 304 for {name} without If-None-Match")
            self._count(not_modified=1)
            return Fetched("not_modified", etag=etag)
        new_etag = response.headers.get("etag")
        if not new_etag:
            raise ArchiveError(f"the archive of {name} came without an ETag")
        sha256 = digest_from_header(response.headers.get("repr-digest"))
        self._count(archives=1, archive_bytes=len(response.content))
        files = check_archive(response.content, sha256_hex=sha256)
        return Fetched("fresh", etag=new_etag, sha256=sha256, files=files)

    def current_name(self, user_id: str) -> AdapterName:
        """The user's current adapter name (``GET .../adapter-name``).

        Raises:
            ResolverError: unknown user, no adapter yet, or the server failed.
        """
        path = f"/v1/users/{quote(user_id, safe='')}/adapter-name"
        response = self._get(path, self.options.params(), {})
        if response.status_code != 200:
            raise ResolverError(f"{self.base_url}: {response.status_code}: {_message(response)}")
        name = AdapterName.parse(response.json().get("name", ""))
        if name is None or name.user_id != user_id:
            raise ResolverError(f"{self.base_url}: not an adapter name for {user_id!r}")
        return name

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _get(self, path: str, params: dict[str, str], headers: dict[str, str]) -> httpx.Response:
        try:
            response = self._http.get(path, params=params, headers=headers)
        except httpx.HTTPError as error:
            raise ResolverError(f"cannot fetch from {self.base_url}: {one_line(error)}") from error
        self._count(requests=1)
        return response

    def _count(self, **amounts: int) -> None:
        with self._stats_lock:
            for key, amount in amounts.items():
                setattr(self.stats, key, getattr(self.stats, key) + amount)


def _message(response: httpx.Response) -> str:
    """The server's one-line error message, or the start of the body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return one_line(ValueError(response.text[:200])) if response.text else "(no body)"
