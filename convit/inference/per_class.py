"""Per-class evaluation: a confusion matrix, each class's top-1 and sample count, the worst classes, and the
files `python -m convit.evaluate --out` writes (CSV for programs, a PNG heat map for people).

The confusion matrix counts samples by (true class, top-1 predicted class): rows are true classes, columns
predictions, as scikit-learn's confusion_matrix and timm's users read it.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
from numpy.typing import NDArray

PER_CLASS_CSV = "per_class.csv"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
RESULT_JSON = "result.json"
WORST = 5  # classes named in the summary
_PNG_LABELS_UP_TO = 40  # class names on the heat map's axes for at most this many classes


def add_batch(confusion: NDArray[np.int64], labels: NDArray[Any], predicted: NDArray[Any]) -> None:
    """Count one batch into `confusion` (num_classes x num_classes) in place."""
    n = confusion.shape[0]
    np.add.at(confusion.reshape(-1), labels.astype(np.int64) * n + predicted.astype(np.int64), 1)


def per_class(confusion: NDArray[Any], names: list[str]) -> list[dict[str, Any]]:
    """One row per class, in label order: index, class, samples, correct, top1 (%; None without samples)."""
    samples = confusion.sum(axis=1)
    correct = np.diagonal(confusion)
    return [
        {
            "index": i,
            "class": names[i],
            "samples": int(samples[i]),
            "correct": int(correct[i]),
            "top1": round(100.0 * float(correct[i]) / float(samples[i]), 3) if samples[i] else None,
        }
        for i in range(len(names))
    ]


def worst(rows: list[dict[str, Any]], count: int = WORST) -> list[dict[str, Any]]:
    """The `count` classes with the lowest top-1 among those with samples (ties: fewer samples, then label)."""
    scored = [row for row in rows if row["top1"] is not None]
    scored.sort(key=lambda row: (row["top1"], row["samples"], row["index"]))
    return [{"class": row["class"], "top1": row["top1"], "samples": row["samples"]} for row in scored[:count]]


def worst_line(items: list[dict[str, Any]]) -> str:
    """`worst classes: <name> <top1> % (<n> samples), ...` (names quoted when they hold a comma)."""
    shown = [f"{_printable(item['class'])} {item['top1']:.1f} % ({item['samples']})" for item in items]
    return "worst classes: " + ", ".join(shown)


def _printable(name: str) -> str:
    text = name if name.isprintable() else name.encode("unicode_escape", "backslashreplace").decode("ascii")
    return repr(text) if "," in text else text


def per_class_csv(rows: list[dict[str, Any]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["index", "class", "samples", "correct", "top1"])
    for row in rows:
        top1 = "" if row["top1"] is None else f"{row['top1']:.3f}"
        writer.writerow([row["index"], row["class"], row["samples"], row["correct"], top1])
    return out.getvalue().encode()


def confusion_csv(confusion: NDArray[Any], names: list[str]) -> bytes:
    """Header `true \\ predicted` then the class names; one row per true class: its name, then its counts."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, confusion, strict=True):
        writer.writerow([name, *(int(v) for v in row)])
    return out.getvalue().encode()


def confusion_png(confusion: NDArray[Any], names: list[str], title: str) -> bytes:
    """A heat map of the row-normalised matrix (each true class's share of predictions), counts in the cells of
    small matrices and class names on the axes up to 40 classes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    n = len(names)
    totals = confusion.sum(axis=1, keepdims=True).astype(np.float64)
    share = np.divide(confusion, totals, out=np.zeros(confusion.shape, np.float64), where=totals > 0)
    side = min(16.0, max(4.0, 0.35 * n + 2.5)) if n <= _PNG_LABELS_UP_TO else 12.0
    figure = Figure(figsize=(side + 1.5, side), dpi=100, layout="constrained")
    axes = figure.subplots()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, label="share of the true class")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    if n <= _PNG_LABELS_UP_TO:
        labels = [name if len(name) <= 24 else name[:23] + "…" for name in names]
        axes.set_xticks(range(n), labels, rotation=90)
        axes.set_yticks(range(n), labels)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        dark = share[i, j] > 0.5
                        axes.text(j, i, str(int(confusion[i, j])), ha="center", va="center",
                                  color="white" if dark else "black", fontsize=8)  # fmt: skip
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
