"""Store URL schemes: one static registry from scheme name to store factory."""

from __future__ import annotations

import re
from collections.abc import Callable

from .base import BlobStore
from .errors import UnknownSchemeError
from .local import LocalBlobStore
from .s3 import S3BlobStore

StoreFactory = Callable[[str], BlobStore]

# Keyed by URL scheme; "file" also serves bare paths. Factories take the full URL.
STORE_SCHEMES: dict[str, StoreFactory] = {
    "file": LocalBlobStore.from_url,
    "s3": S3BlobStore.from_url,
}

_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_NAME_RE = re.compile(r"[a-z][a-z0-9+.-]*")


def url_scheme(url: str) -> str:
    """Lowercase scheme of a store URL; "file" for a bare path."""
    match = _SCHEME_RE.match(url)
    return match.group(1).lower() if match else "file"


def register_scheme(scheme: str, factory: StoreFactory) -> None:
    """Make `open_store` build stores for `scheme://...` URLs with `factory(url)`.

    Raises:
        ValueError: the name is not a lowercase URL scheme, or it is already registered.
    """
    if not isinstance(scheme, str) or _NAME_RE.fullmatch(scheme) is None:
        raise ValueError(f"invalid store scheme {scheme!r}: use a lowercase URL scheme name")
    if scheme in STORE_SCHEMES:
        raise ValueError(f"store scheme {scheme!r} is already registered")
    STORE_SCHEMES[scheme] = factory


def open_store(url: str, *, create: bool = False) -> BlobStore:
    """Open the blob store a URL names: `file:///abs`, `file://rel/path`, a bare path, `s3://b/p`.

    Args:
        url: the store URL.
        create: also create the folder or bucket if it is missing (`mta init`).

    Returns:
        The store; only `create=True` touches the filesystem or network here.

    Raises:
        UnknownSchemeError: no factory is registered for the URL's scheme.
        ValueError: the URL is empty or malformed for its scheme.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("store URL is empty; use file://<folder> or s3://<bucket>[/prefix]")
    scheme = url_scheme(url)
    factory = STORE_SCHEMES.get(scheme)
    if factory is None:
        known = ", ".join(f"{name}://" for name in sorted(STORE_SCHEMES))
        raise UnknownSchemeError(f"unknown store scheme {scheme!r} in {url!r}; registered: {known}")
    if _SCHEME_RE.match(url):
        url = scheme + url[len(scheme) :]  # factories may rely on a lowercase scheme
    store = factory(url)
    if create:
        store.ensure()
    return store
