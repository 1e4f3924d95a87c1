"""ImageNet from object storage: ImageFolder or sharded layouts, a deterministic per-rank plan, transforms."""

from convit.data.errors import DataError
from convit.data.loader import TrainLoader, ValLoader, build_train_loader, build_val_loader

__all__ = ["DataError", "TrainLoader", "ValLoader", "build_train_loader", "build_val_loader"]
