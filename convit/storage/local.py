"""file:// storage: a directory tree, written atomically (temporary file, fsync, rename)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from convit.storage.base import Storage, StorageError, check_key


class LocalStorage(Storage):
    def __init__(self, uri: str) -> None:
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise StorageError(f"{uri!r}: file URIs need an absolute path (file:///...)")
        self.uri = uri.rstrip("/")
        self.root = Path(path)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key) if key else self.root

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{self.uri}/{key} does not exist") from None
        except OSError as exc:
            raise StorageError(f"{self.uri}/{key}: {exc.strerror}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self._path(key), "rb") as handle:
                handle.seek(start)
                return handle.read(length)
        except FileNotFoundError:
            raise StorageError(f"{self.uri}/{key} does not exist") from None

    def _atomic_write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda h: h.write(data))

    def put_file(self, key: str, path: Path) -> None:
        def copy(handle: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, handle, 8 << 20)

        self._atomic_write(key, copy)

    def list(self, prefix: str = "") -> Iterator[str]:
        if not self.root.is_dir():
            return iter(())
        keys = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # an unfinished atomic write
                rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                if rel.startswith(prefix):
                    keys.append(rel)
        return iter(sorted(keys))

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"{self.uri} does not exist or is not a directory")
