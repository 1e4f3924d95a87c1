"""The storage interface: keys are '/'-separated paths below the URI's root."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from pathlib import Path

from convit.errors import ConvitError


class StorageError(ConvitError):
    """Object storage failed in a way retries did not fix, or the addressed data is missing."""


class Storage(abc.ABC):
    """A rooted view of a bucket prefix or a local directory."""

    uri: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The whole object; StorageError if it is missing."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from offset `start`."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write an object; readers see either the old or the whole new object."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart where the backend has it)."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys below `prefix`, in lexicographic order."""

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; missing objects are not an error."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    @abc.abstractmethod
    def check_root(self) -> None:
        """Raise StorageError when the root (bucket or directory) does not exist."""

    def child(self, prefix: str) -> Storage:
        """A storage rooted at `prefix` below this one."""
        return open_storage(join_uri(self.uri, prefix))


def join_uri(uri: str, *parts: str) -> str:
    out = uri.rstrip("/")
    for part in parts:
        part = part.strip("/")
        if part:
            out += "/" + part
    return out


def check_key(key: str) -> str:
    if key.startswith("/") or any(p in ("..", ".") for p in key.split("/")):
        raise StorageError(f"invalid object key {key!r}")
    return key


def open_storage(uri: str) -> Storage:
    """file:///abs/path or s3://bucket[/prefix]."""
    if uri.startswith("file://"):
        from convit.storage.local import LocalStorage

        return LocalStorage(uri)
    if uri.startswith("s3://"):
        from convit.storage.s3 import S3Storage

        return S3Storage(uri)
    raise StorageError(f"unsupported storage URI {uri!r}: use s3://bucket/prefix or file:///path")
