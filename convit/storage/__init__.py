"""Object storage addressed by URI (s3://bucket/prefix, file:///path): one interface for data and checkpoints."""

from convit.storage.base import Storage, StorageError, open_storage

__all__ = ["Storage", "StorageError", "open_storage"]
