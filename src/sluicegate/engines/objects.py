"""The object-store engine: blobs by key, on the local disk or any S3-compatible endpoint.

``SLUICEGATE_OBJECT_STORE_URL`` picks it:

- ``file://<folder>`` (default ``<data dir>/objects``): files under that folder;
- ``s3://<bucket>?endpoint=http://127.0.0.1:9000&region=us-east-1``: any S3 API
  (AWS, MinIO, moto...). Credentials come from the usual ``AWS_ACCESS_KEY_ID`` /
  ``AWS_SECRET_ACCESS_KEY`` variables, or ``access_key_id`` / ``secret_access_key``
  query parameters.

Both go through obstore, one API over both. Keys are validated before any I/O
(:func:`check_key`): relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no
backslash or control character, so nothing can escape the store's root. Errors of the
library are translated here, once: :class:`ObjectNotFound` and :class:`ObjectStoreUnavailable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import LocalStore, S3Store

from sluicegate.errors import ConfigurationError, SluicegateError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = [
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreUnavailable",
    "check_key",
    "object_store_from_url",
]

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_STREAM_CHUNK = 256 * 1024


class InvalidKey(SluicegateError, ValueError):
    """A key that could escape the store's root or is not a plain relative path."""


class ObjectNotFound(SluicegateError, KeyError):
    """No object has this key."""


class ObjectStoreUnavailable(SluicegateError, ConnectionError):
    """The store could not be reached or refused the operation."""


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key.

    Raises:
        InvalidKey: absolute, empty, with ``.``/``..``/empty segments, a backslash or a
            control character.
    """
    if not key or key.startswith("/") or _BAD_CHARS.search(key) or len(key.encode()) > 1024:
        raise InvalidKey(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidKey(f"invalid object key {key!r}: empty, '.' or '..' segment")
    return key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A listed object."""

    key: str
    size: int
    last_modified: datetime


class ObjectStore:
    """Blobs by key over an obstore store (local folder or S3).

    Args:
        store: the obstore store.
        description: what it is, for logs and readiness (never with credentials).
    """

    name = "objects"

    def __init__(self, store: Any, *, description: str) -> None:
        self._store = store
        self.description = description

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check(self) -> None:
        """List one key to prove the store answers.

        Raises:
            ObjectStoreUnavailable: it does not.
        """
        try:
            stream = obstore.list(self._store, chunk_size=1)
            async for _ in stream:
                break
        except (BaseError, OSError) as exc:
            raise ObjectStoreUnavailable(f"{self.description}: {type(exc).__name__}") from exc

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what was there (a whole object appears at once).

        Raises:
            InvalidKey, ObjectStoreUnavailable
        """
        check_key(key)
        try:
            await obstore.put_async(self._store, key, data)
        except (BaseError, OSError) as exc:
            raise ObjectStoreUnavailable(f"put {key} on {self.description} failed: {exc}") from exc

    async def get(self, key: str) -> bytes:
        """The whole object.

        Raises:
            InvalidKey, ObjectNotFound, ObjectStoreUnavailable
        """
        check_key(key)
        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except (NotFoundError, FileNotFoundError):
            raise ObjectNotFound(key) from None
        except (BaseError, OSError) as exc:
            raise ObjectStoreUnavailable(f"get {key} on {self.description} failed: {exc}") from exc

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """The object in chunks, without holding it whole in memory.

        Raises:
            InvalidKey, ObjectNotFound, ObjectStoreUnavailable
        """
        check_key(key)
        try:
            result = await obstore.get_async(self._store, key)
            async for chunk in result.stream(min_chunk_size=_STREAM_CHUNK):
                yield bytes(chunk)
        except (NotFoundError, FileNotFoundError):
            raise ObjectNotFound(key) from None
        except (BaseError, OSError) as exc:
            raise ObjectStoreUnavailable(f"get {key} on {self.description} failed: {exc}") from exc

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix`` (a folder, ending with ``/``, or empty).

        Raises:
            InvalidKey, ObjectStoreUnavailable
        """
        if prefix:
            check_key(prefix.removesuffix("/"))
        found: list[ObjectInfo] = []
        try:
            async for batch in obstore.list(self._store, prefix=prefix or None):
                found.extend(ObjectInfo(m["path"], m["size"], m["last_modified"]) for m in batch)
        except (BaseError, OSError) as exc:
            raise ObjectStoreUnavailable(f"list {prefix} on {self.description} failed: {exc}") from exc
        return sorted(found, key=lambda info: info.key)

    async def delete(self, key: str) -> None:
        """Remove an object; removing a missing one is not an error.

        Raises:
            InvalidKey, ObjectStoreUnavailable
        """
        check_key(key)
        try:
            await obstore.delete_async(self._store, key)
        except (NotFoundError, FileNotFoundError):
            return
        except (BaseError, OSError) as exc:
            try:  # a key that names no object (a folder on disk, say) is not an error either
                await obstore.head_async(self._store, key)
            except (NotFoundError, FileNotFoundError):
                return
            except (BaseError, OSError):
                pass
            raise ObjectStoreUnavailable(f"delete {key} on {self.description} failed: {exc}") from exc


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def object_store_from_url(url: str) -> ObjectStore:
    """The store named by ``SLUICEGATE_OBJECT_STORE_URL``.

    Raises:
        ConfigurationError: an unknown scheme or a malformed URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        root = Path(parts.netloc + parts.path).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return ObjectStore(LocalStore(root), description=f"file://{root}")
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigurationError("SLUICEGATE_OBJECT_STORE_URL: s3:// needs a bucket, as in s3://my-bucket")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        options: dict[str, Any] = {}
        for name in ("endpoint", "region", "access_key_id", "secret_access_key"):
            if name in query:
                options[name] = query.pop(name)
        if query:
            raise ConfigurationError(f"SLUICEGATE_OBJECT_STORE_URL: unknown options {sorted(query)}")
        endpoint = options.get("endpoint", "")
        store = S3Store(
            parts.netloc,
            prefix=parts.path.strip("/") or None,
            client_options={"allow_http": endpoint.startswith("http://"), "connect_timeout": timedelta(seconds=5)},
            retry_config={"max_retries": 2, "retry_timeout": timedelta(seconds=20)},
            **options,
        )
        where = f" at {_without_userinfo(endpoint)}" if endpoint else ""
        return ObjectStore(store, description=f"s3://{parts.hostname or ''}{parts.path}{where}")
    raise ConfigurationError(
        f"SLUICEGATE_OBJECT_STORE_URL has an unsupported scheme {parts.scheme!r}; use file:// or s3://"
    )
