"""Validation top-1/top-5, counted per rank and summed over all ranks."""

from __future__ import annotations

from typing import Any

import numpy as np

from convit.train.runtime import AllReduceSum


def evaluate(model: Any, val_loader: Any, batch_size: int, reduce: AllReduceSum) -> tuple[float, float, int]:
    """(top1 %, top5 %, samples). The last short batch is padded so the graph keeps one input shape."""
    import mindspore as ms

    model.set_train(False)
    correct1 = correct5 = count = 0.0
    for images, labels in val_loader.batches(batch_size):
        n = len(labels)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *images.shape[1:]), dtype=images.dtype)
            images = np.concatenate([images, pad])
        logits = model(ms.Tensor(images)).asnumpy()[:n]
        top5 = np.argsort(-logits, axis=1)[:, :5]
        correct1 += float((top5[:, 0] == labels).sum())
        correct5 += float((top5 == labels[:, None]).any(axis=1).sum())
        count += n
    model.set_train(True)
    correct1, correct5, count = reduce([correct1, correct5, count])
    if count == 0:
        return 0.0, 0.0, 0
    return 100.0 * correct1 / count, 100.0 * correct5 / count, int(count)
