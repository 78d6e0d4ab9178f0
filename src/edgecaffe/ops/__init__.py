"""Numpy kernels, one small module per family, registered by operator name."""

from edgecaffe.ops import (  # noqa: F401
    activation,
    binary,
    clip,
    constant,
    conv,
    conv_transpose,
    dense,
    hard,
    identity,
    logsoftmax,
    lrn,
    matmul,
    norm,
    pad,
    pool,
    reduce,
    resize,
    softmax,
    strided_slice,
    tensor,
    transpose,
)
from edgecaffe.ops.base import OPS, Op, OpError, Shape, get_op, register

__all__ = ["OPS", "Op", "OpError", "Shape", "get_op", "register"]
