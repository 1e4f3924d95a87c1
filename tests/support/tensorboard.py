"""Read training curves the way TensorBoard shows them: a synced copy of `<checkpoint.uri>/tensorboard/` loaded by
TensorBoard's own EventAccumulator (which applies the purge markers a resumed writer leaves)."""

from __future__ import annotations

from pathlib import Path


def sync_copy(uri: str, dst: Path) -> Path:
    """Download every event file under `<uri>/tensorboard/` (what `aws s3 sync` would do); returns the folder."""
    from convit.storage import open_storage

    store = open_storage(uri).child("tensorboard")
    dst.mkdir(parents=True, exist_ok=True)
    for key in store.list():
        (dst / key).write_bytes(store.get(key))
    return dst


def shown(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard displays it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def raw_steps(logdir: Path, tag: str) -> list[int]:
    """Every step written for `tag`, in every file, before TensorBoard's purge (duplicates included)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return steps
