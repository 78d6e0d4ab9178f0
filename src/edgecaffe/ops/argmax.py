"""ArgMax: the indices (and optionally values) of the top-k entries (Caffe's argmax_layer.cpp).

Caffe's rules, reproduced: without `axis`, each example (everything after axis 0) is one
vector and the output is N x (1 or 2) x top_k, padded with 1s to the input's rank (at least 3);
with `out_max_val` that second channel holds the values after the indices. With `axis`, the
output replaces that axis by top_k and holds indices, or values when `out_max_val`. Ties go to
the larger index (std::greater on (value, index) pairs). Indices are stored as floats.
"""

from __future__ import annotations

import numpy as np

from edgecaffe.ops.base import Op, OpError, normalize_axis, register


def _top_k(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of `vectors` (M x D) -> (indices, values), each M x k, by (value, index) desc."""
    d = vectors.shape[1]
    # Sorting ascending on (value, index) and reversing gives descending on both.
    order = np.lexsort((np.broadcast_to(np.arange(d), vectors.shape), vectors), axis=1)
    top = order[:, ::-1][:, :k]
    return top, np.take_along_axis(vectors, top, axis=1)


@register
class ArgMax(Op):
    """attrs: top_k, out_max_val (bool), axis (None: per example, Caffe's default)."""
    integers = ('axis', 'top_k')

    name = "ArgMax"

    def output_shapes(self, inputs, attrs):
        shape = tuple(inputs[0])
        k = attrs["top_k"]
        if attrs.get("axis") is not None:
            axis = normalize_axis(attrs["axis"], len(shape))
            if not 1 <= k <= shape[axis]:
                raise OpError(f"argmax top_k {k} must be in 1..{shape[axis]} (axis {axis})")
            return [(*shape[:axis], k, *shape[axis + 1 :])]
        per_example = int(np.prod(shape[1:]))
        if not 1 <= k <= per_example:
            raise OpError(f"argmax top_k {k} must be in 1..{per_example}")
        out = [1] * max(3, len(shape))
        out[0], out[1], out[2] = shape[0], 2 if attrs["out_max_val"] else 1, k
        return [tuple(out)]

    def run(self, inputs, weights, attrs, inplace=False):
        x = inputs[0]
        k = attrs["top_k"]
        (shape,) = self.output_shapes([x.shape], attrs)
        if attrs.get("axis") is not None:
            axis = normalize_axis(attrs["axis"], x.ndim)
            moved = np.moveaxis(x, axis, -1)
            index, value = _top_k(moved.reshape(-1, x.shape[axis]), k)
            picked = value if attrs["out_max_val"] else index
            out = np.moveaxis(picked.reshape(*moved.shape[:-1], k), -1, axis)
            return [np.ascontiguousarray(out, dtype=np.float32)]
        index, value = _top_k(x.reshape(x.shape[0], -1), k)
        parts = [index, value] if attrs["out_max_val"] else [index]
        return [np.stack(parts, axis=1).astype(np.float32).reshape(shape)]
