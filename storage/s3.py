"""S3BlobStore: blobs as objects in an S3-compatible bucket (AWS, MinIO, R2, moto)."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from .base import (
    BLOB_PREFIX,
    BlobInfo,
    BlobStore,
    blob_key,
    check_digest,
    is_digest,
    sha256_bytes,
    sha256_file,
)
from .errors import BlobCorruptedError, BlobNotFoundError, StorageError, StoreNotFoundError

ENDPOINT_ENV = "MTA_S3_ENDPOINT_URL"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED_CODES = frozenset(
    {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
)


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/some/prefix` into ("bucket", "some/prefix"); the prefix may be empty."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"store URL {url!r} names no bucket; expected s3://bucket[/prefix]")
    return bucket, prefix.strip("/")


def _checksum_b64(digest: str) -> str:
    # S3's ChecksumSHA256 is the base64 of the raw 32-byte digest, not of its hex string.
    return base64.b64encode(bytes.fromhex(digest)).decode("ascii")


def put_checked(client: Any, bucket: str, key: str, body: Any, digest: str) -> None:
    """PUT one object with its SHA256 checksum, which the server verifies before storing.

    Args:
        body: bytes or a readable file.
        digest: the sha256 hex of the body.

    Raises:
        botocore errors as they come (each caller maps them to its own messages).
    """
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=_checksum_b64(digest),
    )


# The client is keyed on what boto3 reads from the env, so tests and tools that switch
# credentials get a fresh one; and on the pid, as connection pools must not cross a fork.
_CLIENT_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


def s3_client(endpoint_url: str | None) -> Any:
    """A boto3 S3 client for `endpoint_url` (None: AWS), shared while the env is unchanged."""
    env = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    return _cached_client(endpoint_url, env, os.getpid())


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint_url: str | None, env: tuple[str | None, ...], pid: int) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        # Path-style keeps bucket names out of DNS, which MinIO and local servers need.
        s3={"addressing_style": "path"} if endpoint_url else {},
        # botocore's default extra CRC32 checksums break some S3-compatible servers; we send
        # our own SHA256 on every put instead.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A private session: boto3's default session is not safe to share across threads.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3BlobStore(BlobStore):
    """Blobs at `<prefix>/blobs/sha256/ab/<digest>` in one bucket.

    The endpoint comes from `endpoint_url` or the env var MTA_S3_ENDPOINT_URL (unset means
    AWS); credentials and region come from boto3's usual chain (env, profile, role).
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        """Address `bucket`/`prefix`; no request is made until the first operation."""
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client: Any = None

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """Open the store named by `s3://bucket[/prefix]`."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix)

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use (boto3 is imported only then)."""
        if self._client is None:
            self._client = s3_client(self.endpoint_url)
        return self._client

    def key_for(self, digest: str) -> str:
        """Object key of the blob with this digest."""
        key = blob_key(digest)
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure(self) -> None:
        """Create the bucket if it does not exist."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except Exception as exc:
            if error_code(exc) not in {"404", "NoSuchBucket", "NotFound"}:
                self._raise(exc, "checking bucket")
        region = self.client.meta.region_name
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except Exception as exc:
            # Another process may have created it in between.
            if error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                self._raise(exc, "creating bucket")

    def check_exists(self) -> None:
        """HEAD the bucket; a 403 means it exists but this key may not list it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            # A key allowed to read objects but not to list the bucket gets a 403 here.
            if error_code(exc) not in {"403", "AccessDenied", "Forbidden"}:
                self._raise(exc, "checking bucket")

    def put_bytes(self, data: bytes) -> str:
        """Upload `data` unless already stored; the server checks the SHA256 we send."""
        digest = sha256_bytes(data)
        if not self._refresh(digest):
            self._put(digest, data)
        return digest

    def put_file(self, path: str | Path) -> str:
        """Upload a file unless already stored; hashed in chunks, streamed from disk."""
        digest = sha256_file(path)
        if not self._refresh(digest):
            with open(path, "rb") as handle:
                self._put(digest, handle)
        return digest

    def get_bytes(self, digest: str) -> bytes:
        """Download a blob and check its digest."""
        key = self.key_for(digest)
        try:
            data = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            self._raise(exc, "reading", digest)
        check_digest(digest, sha256_bytes(data), self.url)
        return data

    def exists(self, digest: str) -> bool:
        """HEAD the object."""
        try:
            self._head(digest)
        except BlobNotFoundError:
            return False
        return True

    def size(self, digest: str) -> int:
        """Content length from a HEAD request."""
        return int(self._head(digest)["ContentLength"])

    def modified(self, digest: str) -> datetime:
        """LastModified from a HEAD request."""
        return self._head(digest)["LastModified"].astimezone(timezone.utc)

    def delete(self, digest: str) -> None:
        """Delete the object (S3 deletes silently, so existence is checked first)."""
        self._head(digest)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key_for(digest))
        except Exception as exc:
            self._raise(exc, "deleting", digest)

    def check_deletable(self, digests: Iterable[str]) -> None:
        """Delete a probe key that does not exist: S3 answers 204, or AccessDenied."""
        del digests  # one permission covers the whole prefix
        probe = (
            f"{self.prefix}/{BLOB_PREFIX}/.mta-delete-probe"
            if self.prefix
            else (f"{BLOB_PREFIX}/.mta-delete-probe")
        )
        try:
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except Exception as exc:
            self._raise(exc, "probing deletes in")

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """List the blob keys page by page, skipping keys that are not blobs."""
        root = f"{self.prefix}/{BLOB_PREFIX}/" if self.prefix else f"{BLOB_PREFIX}/"
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=root
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    fanout, _, name = obj["Key"][len(root) :].partition("/")
                    if len(fanout) != 2 or not is_digest(name) or not name.startswith(fanout):
                        continue
                    modified = obj["LastModified"].astimezone(timezone.utc)
                    yield BlobInfo(digest=name, size=int(obj["Size"]), modified=modified)
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            self._raise(exc, "listing")

    def verify(self, digest: str) -> None:
        """Stream the object through sha256 without holding it in memory."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key_for(digest))["Body"]
            hasher = hashlib.sha256()
            for chunk in body.iter_chunks(chunk_size=1 << 20):
                hasher.update(chunk)
        except Exception as exc:
            self._raise(exc, "reading", digest)
        check_digest(digest, hasher.hexdigest(), self.url)

    def _put(self, digest: str, body: Any) -> None:
        try:
            put_checked(self.client, self.bucket, self.key_for(digest), body, digest)
        except Exception as exc:
            self._raise(exc, "writing", digest)

    def _refresh(self, digest: str) -> bool:
        """Bump an existing object's LastModified (copy onto itself); False when it is missing.

        Makes a re-put blob young again for `gc`, like the file store's utime. One request
        either way: the copy's NoSuchKey is the existence check.
        """
        key = self.key_for(digest)
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=key,
                CopySource={"Bucket": self.bucket, "Key": key},
                MetadataDirective="REPLACE",
            )
        except Exception as exc:
            if error_code(exc) in _NOT_FOUND_CODES:
                return False
            self._raise(exc, "writing", digest)
        return True

    def _head(self, digest: str) -> dict[str, Any]:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self.key_for(digest))
        except Exception as exc:
            self._raise(exc, "reading", digest)

    def _raise(self, exc: Exception, action: str, digest: str | None = None) -> NoReturn:
        """Re-raise a boto error as ours, with a message that names the store and the blob."""
        from botocore.exceptions import BotoCoreError, ClientError

        what = f"blob {digest} in {self.url}" if digest else self.url
        if isinstance(exc, ClientError):
            code = error_code(exc)
            message = exc.response.get("Error", {}).get("Message") or code
            if code in _NOT_FOUND_CODES and digest:
                raise BlobNotFoundError(f"{what} not found") from exc
            if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and not digest):
                raise StoreNotFoundError(
                    f"bucket {self.bucket!r} of {self.url} does not exist at {self._where()}; "
                    "create it (mta init) or fix the store URL"
                ) from exc
            if code in _DENIED_CODES:
                raise StorageError(
                    f"access denied {action} {what}: {message} (check the S3 credentials)"
                ) from exc
            if code in {"BadDigest", "XAmzContentSHA256Mismatch", "InvalidDigest"}:
                raise BlobCorruptedError(
                    f"upload of {what} failed its checksum: {message}"
                ) from exc
            raise StorageError(f"S3 error {code} {action} {what}: {message}") from exc
        if isinstance(exc, BotoCoreError):
            raise StorageError(f"S3 failure {action} {what} at {self._where()}: {exc}") from exc
        raise exc

    def _where(self) -> str:
        return self.endpoint_url or "AWS S3"


def error_code(exc: Exception) -> str:
    """The S3 error code of a botocore ClientError ("NoSuchKey", "404", ...); "" otherwise."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    return str(response.get("Error", {}).get("Code", ""))
