"""`launcher plot`: a job's training curves as a PNG, for people without TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from launcher.progress import Curves


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
