"""`launcher plot`: a job's training curves as a PNG, for people without TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.progress import Curves

# The scalars the trainer writes (convit/train/curves.py), as plot draws them.
LOSS, LR, TOP1, TOP5 = "train/loss", "train/lr", "val/top1", "val/top5"


def tensorboard_curves(uri: str) -> Curves:
    """The curves of a whole run from its TensorBoard event files (`<uri>/tensorboard/`, every start of the job, on
    s3:// or file://), as TensorBoard shows them: its own EventAccumulator applies the purge markers a resumed start
    leaves, so each step counts once, with the values of the start that kept it."""
    import tempfile

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from convit.storage import open_storage

    store = open_storage(uri).child("tensorboard")
    with tempfile.TemporaryDirectory(prefix="convit-plot-") as tmp:
        for key in store.list():
            if "/" not in key and key.startswith("events.out.tfevents."):
                (Path(tmp) / key).write_bytes(store.get(key))
        acc = EventAccumulator(tmp, size_guidance={"scalars": 0})  # 0: every point
        acc.Reload()
        tags = set(acc.Tags()["scalars"])

        def series(tag: str) -> dict[int, float]:
            return {e.step: e.value for e in acc.Scalars(tag)} if tag in tags else {}

        loss, lr, top1, top5 = (series(t) for t in (LOSS, LR, TOP1, TOP5))
    steps = sorted(loss)
    val_steps = sorted(top1)
    return Curves(
        steps=steps,
        loss=[loss[s] for s in steps],
        lr=[lr.get(s, float("nan")) for s in steps],
        val_steps=val_steps,
        top1=[top1[s] for s in val_steps],
        top5=[top5.get(s, float("nan")) for s in val_steps],
    )


def draw(curves: Curves, title: str) -> Any:
    """Loss and LR (right axis) against steps above, top-1/top-5 against steps below; returns the Figure."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(9, 7), layout="constrained")
    train, val = fig.subplots(2, 1, sharex=True)
    train.plot(curves.steps, curves.loss, color="tab:blue", label="loss")
    train.set_ylabel("loss")
    train.set_title(title)
    lr = train.twinx()
    lr.plot(curves.steps, curves.lr, color="tab:orange", linestyle="--", label="lr")
    lr.set_ylabel("learning rate")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    train.legend(handles=[*train.get_lines(), *lr.get_lines()], loc="upper right")
    val.plot(curves.val_steps, curves.top1, marker="o", label="top-1")
    val.plot(curves.val_steps, curves.top5, marker="s", label="top-5")
    val.set_ylabel("validation accuracy (%)")
    val.set_xlabel("step")
    val.legend(loc="lower right")
    for ax in (train, val):
        ax.grid(alpha=0.3)
    return fig


def points(fig: Any) -> dict[str, int]:
    """Label -> number of points drawn, read back from the figure."""
    return {line.get_label(): len(line.get_xdata()) for ax in fig.axes for line in ax.get_lines()}


def save_png(fig: Any, path: Path) -> None:
    """Written next to its final name and renamed: an interrupted plot never leaves half a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    fig.savefig(partial, format="png", dpi=100)
    partial.replace(path)
