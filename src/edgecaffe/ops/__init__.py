"""Numpy kernels, one small module per family, registered by operator name."""

from edgecaffe.ops import (  # noqa: F401
    activation,
    argmax,
    binary,
    clip,
    constant,
    conv,
    conv_transpose,
    crop,
    dense,
    detection,
    hard,
    identity,
    logsoftmax,
    lrn,
    matmul,
    mvn,
    norm,
    pad,
    pointwise,
    pool,
    reduce,
    resize,
    softmax,
    ssd,
    strided_slice,
    tensor,
    tile,
    transpose,
)
from edgecaffe.ops.base import OPS, Op, OpError, Shape, get_op, register

__all__ = ["OPS", "Op", "OpError", "Shape", "get_op", "register"]
