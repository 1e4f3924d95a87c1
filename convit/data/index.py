"""Where every sample lives: an ImageFolder listing or a shard index, as one table per split.

A `SampleTable` holds, per sample, its label and its location: an object key (ImageFolder) or a
(shard, offset, length) range inside a large shard object (sharded layout). Order is fixed and
deterministic: sorted keys for ImageFolder, the writing order for shards.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.data.errors import DataError
from convit.storage import Storage, StorageError, open_storage

log = logging.getLogger("convit.data")
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


def read_class_map(uri: str) -> list[str]:
    """A class map as timm's `--class-map` takes it: a text file, one class (folder) name per line, in label order."""
    parent, _, key = uri.rpartition("/")
    try:
        raw = open_storage("file:///" if parent == "file://" else parent).get(key)
    except (StorageError, OSError) as exc:
        raise DataError(f"data.class_map {uri}: cannot read it ({exc})") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise DataError(f"data.class_map {uri}: not UTF-8 text (one class name per line)") from None
    while lines and not lines[-1].strip():  # a final blank line is no class
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise DataError(f"data.class_map {uri}: names no class (one class name per line)")
    for number, name in enumerate(names, 1):
        if not name:
            raise DataError(f"data.class_map {uri}: line {number} is empty (one class name per line)")
        if names.index(name) != number - 1:
            raise DataError(f"data.class_map {uri}: {name!r} is on lines {names.index(name) + 1} and {number}")
    return names


def apply_class_map(table: SampleTable, names: list[str], where: str) -> SampleTable:
    """`table` labelled by `names` (label = line of the class map); as timm does, the samples of classes the map
    does not name are left out (with a warning naming them)."""
    position = {name: i for i, name in enumerate(names)}
    remap = np.array([position.get(name, -1) for name in table.classes] or [-1], dtype=np.int32)
    labels = remap[table.labels]
    keep = np.flatnonzero(labels >= 0)
    if len(table) and not len(keep):
        raise DataError(f"{where}: none of its classes ({', '.join(table.classes[:3])} ...) is in data.class_map")
    unmapped = [name for name in table.classes if name not in position]
    if unmapped:
        log.warning(
            "data: %s: classes %s are not in data.class_map: their %d images are left out",
            where, unmapped[:5], len(table) - len(keep),
        )  # fmt: skip
    return SampleTable(
        names,
        labels[keep],
        [table.keys[i] for i in keep],
        table.shard_keys,
        None if table.shard is None else table.shard[keep],
        None if table.offset is None else table.offset[keep],
        None if table.length is None else table.length[keep],
    )


def open_split(storage: Storage, layout: str, split: str, class_map: str = "") -> SampleTable:
    """One split's table; with `class_map` (a URI, see read_class_map) labelled by that file's lines."""
    if layout == "shards":
        table = read_shard_index(storage, split)
    else:
        classes = list_imagefolder(storage, "train").classes if split != "train" else None
        table = list_imagefolder(storage, split, classes)
    if class_map:
        table = apply_class_map(table, read_class_map(class_map), f"{storage.uri}/{split}")
    return table


def checked_class_names(table: SampleTable, num_classes: int, where: str) -> list[str]:
    """The names of the data's classes as they are shown (convit.inference.classes.readable_names), after
    checking that the model's head has one output per class: one DataError naming the fix otherwise."""
    from convit.inference.classes import readable_names

    if len(table.classes) != num_classes:
        raise DataError(
            f"model.num_classes is {num_classes} but {where} has {len(table.classes)} classes: "
            f"set model.num_classes={len(table.classes)}"
        )
    return readable_names(table.classes)
