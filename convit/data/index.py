"""Where every sample lives: an ImageFolder listing or a shard index, as one table per split.

A `SampleTable` holds, per sample, its label and its location: an object key (ImageFolder) or a
(shard, offset, length) range inside a large shard object (sharded layout). Order is fixed and
deterministic: sorted keys for ImageFolder, the writing order for shards.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.data.errors import DataError
from convit.storage import Storage, StorageError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
INDEX_KEY = "index.json"
FORMAT = "convit-shards/1"


@dataclass
class SampleTable:
    classes: list[str]
    labels: NDArray[Any]  # int32 (n,)
    keys: list[str]  # object keys (ImageFolder) or original keys (shards; for reporting)
    shard_keys: list[str]  # empty for ImageFolder
    shard: NDArray[Any] | None = None  # int32 (n,) index into shard_keys
    offset: NDArray[Any] | None = None  # int64 (n,)
    length: NDArray[Any] | None = None  # int64 (n,)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sharded(self) -> bool:
        return self.shard is not None

    def head(self, limit: int) -> SampleTable:
        """The first `limit` samples (0: all)."""
        if not limit or limit >= len(self):
            return self
        cut = slice(0, limit)
        return SampleTable(
            self.classes,
            self.labels[cut],
            self.keys[:limit],
            self.shard_keys,
            None if self.shard is None else self.shard[cut],
            None if self.offset is None else self.offset[cut],
            None if self.length is None else self.length[cut],
        )


def list_imagefolder(storage: Storage, split: str, classes: list[str] | None = None) -> SampleTable:
    """`<split>/<wnid>/<image>` below the storage root; class index = position of the wnid in sorted order."""
    try:
        keys = [k for k in storage.list(f"{split}/") if not k.rsplit("/", 1)[-1].startswith(".")]
    except StorageError as exc:
        raise DataError(str(exc)) from None
    by_class: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split("/")
        if len(parts) != 3:
            raise DataError(
                f"{storage.uri}/{key}: malformed ImageFolder tree: images belong in {split}/<class>/<image>"
            )
        if parts[2].lower().endswith(IMAGE_SUFFIXES):
            by_class.setdefault(parts[1], []).append(key)
    if not by_class:
        raise DataError(f"no images under {storage.uri}/{split}/ (expected {split}/<class>/<image>.JPEG)")
    if classes is None:
        classes = sorted(by_class)
    unknown = sorted(set(by_class) - set(classes))
    if unknown:
        raise DataError(f"{storage.uri}/{split}/: classes {unknown[:3]} do not appear in the training split")
    position = {name: i for i, name in enumerate(classes)}
    ordered = sorted((key, position[cls]) for cls, items in by_class.items() for key in items)
    return SampleTable(
        classes=classes,
        labels=np.array([label for _, label in ordered], dtype=np.int32),
        keys=[key for key, _ in ordered],
        shard_keys=[],
    )


def _pack_keys(keys: list[str]) -> NDArray[Any]:
    """Object keys as one NUL-separated UTF-8 buffer: a fifth of a fixed-width unicode array at ImageNet scale.
    (surrogateescape keeps non-UTF-8 file names of a local tree intact.)"""
    return np.frombuffer("\0".join(keys).encode("utf-8", "surrogateescape"), dtype=np.uint8)


def _unpack_keys(packed: NDArray[Any]) -> list[str]:
    return packed.tobytes().decode("utf-8", "surrogateescape").split("\0") if packed.size else []


def encode_table(table: SampleTable) -> bytes:
    """A sharded split's sample table as one .npz blob."""
    assert table.shard is not None and table.offset is not None and table.length is not None
    buffer = io.BytesIO()
    np.savez(buffer, labels=table.labels, shard=table.shard, offset=table.offset, length=table.length,
             keys=_pack_keys(table.keys))  # fmt: skip
    return buffer.getvalue()


def decode_table(blob: bytes) -> dict[str, NDArray[Any]]:
    arrays = np.load(io.BytesIO(blob), allow_pickle=False)
    return {name: arrays[name] for name in ("labels", "shard", "offset", "length", "keys")}


def write_shard_index(storage: Storage, classes: list[str], splits: dict[str, SampleTable]) -> None:
    """index.json (classes, counts, shards) plus one compact .npz table per split."""
    meta: dict[str, object] = {"format": FORMAT, "classes": classes, "splits": {}}
    for split, table in splits.items():
        storage.put(f"{split}.samples.npz", encode_table(table))
        meta["splits"][split] = {  # type: ignore[index]
            "num_samples": len(table),
            "shards": table.shard_keys,
            "table": f"{split}.samples.npz",
        }
    storage.put(INDEX_KEY, json.dumps(meta, indent=1).encode())


def read_shard_index(storage: Storage, split: str) -> SampleTable:
    try:
        meta = json.loads(storage.get(INDEX_KEY))
    except StorageError as exc:
        raise DataError(f"no shard index: {exc} (build one with: python -m convit.data prepare)") from None
    except ValueError:
        raise DataError(f"{storage.uri}/{INDEX_KEY} is not valid JSON") from None
    if meta.get("format") != FORMAT or split not in meta.get("splits", {}):
        raise DataError(f"{storage.uri}/{INDEX_KEY}: not a {FORMAT} index with a {split!r} split")
    info = meta["splits"][split]
    try:
        arrays = decode_table(storage.get(info["table"]))
    except (StorageError, ValueError, OSError) as exc:
        raise DataError(f"{storage.uri}/{info['table']}: unreadable sample table ({exc})") from None
    return SampleTable(
        classes=list(meta["classes"]),
        labels=arrays["labels"].astype(np.int32),
        keys=_unpack_keys(arrays["keys"]),
        shard_keys=list(info["shards"]),
        shard=arrays["shard"].astype(np.int32),
        offset=arrays["offset"].astype(np.int64),
        length=arrays["length"].astype(np.int64),
    )


def open_split(storage: Storage, layout: str, split: str) -> SampleTable:
    if layout == "shards":
        return read_shard_index(storage, split)
    classes = list_imagefolder(storage, "train").classes if split != "train" else None
    return list_imagefolder(storage, split, classes)
