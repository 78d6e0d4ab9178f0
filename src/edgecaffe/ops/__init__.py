"""Numpy kernels, one small module per family, registered by operator name."""

from edgecaffe.ops import (  # noqa: F401
    activation,
    binary,
    constant,
    conv,
    dense,
    hard,
    identity,
    logsoftmax,
    lrn,
    matmul,
    norm,
    pool,
    softmax,
    strided_slice,
    tensor,
)
from edgecaffe.ops.base import OPS, Op, OpError, Shape, get_op, register

__all__ = ["OPS", "Op", "OpError", "Shape", "get_op", "register"]
