"""Numpy kernels, one small module per family, registered by operator name."""

from edgecaffe.ops import (  # noqa: F401
    activation,
    clip,
    conv,
    conv_transpose,
    dense,
    lrn,
    norm,
    pad,
    pool,
    reduce,
    resize,
    softmax,
    tensor,
    transpose,
)
from edgecaffe.ops.base import OPS, Op, OpError, Shape, get_op, register

__all__ = ["OPS", "Op", "OpError", "Shape", "get_op", "register"]
