"""Numpy kernels, one small module per family, registered by operator name."""

from edgecaffe.ops import activation, conv, dense, lrn, norm, pool, softmax, tensor  # noqa: F401
from edgecaffe.ops.base import OPS, Op, OpError, Shape, get_op, register

__all__ = ["OPS", "Op", "OpError", "Shape", "get_op", "register"]
