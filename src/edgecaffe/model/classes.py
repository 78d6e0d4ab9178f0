"""A classifier's output read as ranked classes: what `edgecaffe run` prints and what the HTTP
service answers (`serve/results.py`)."""

from __future__ import annotations

from typing import Any


def top_classes(array: Any, labels: list[str], top: int, ranked: bool = True
                ) -> list[dict] | None:
    """The `top` highest scores of batch item 0 of `array` (a numpy array, N x C or
    N x C x 1 x 1) as {rank, index, label, score}, when the output is a vector of class
    scores: one non-unit axis after the batch, and `ranked` (a Softmax's output) or one label
    per value; None otherwise (a feature vector such as fc7 has no classes). Labels name
    the classes when there is one per value, else "class N"."""
    import numpy as np

    scores = array[0].reshape(-1) if array.ndim >= 2 else array.reshape(-1)
    squeezed = [d for d in array.shape[1:] if d != 1]
    ranked = ranked or len(labels) == scores.size
    if not (len(squeezed) == 1 and scores.size >= 2 and top > 0 and ranked):
        return None
    order = np.argsort(scores)[::-1][:top]
    return [{"rank": rank, "index": int(index),
             "label": labels[index] if len(labels) == scores.size else f"class {index}",
             "score": float(scores[index])} for rank, index in enumerate(order, 1)]
