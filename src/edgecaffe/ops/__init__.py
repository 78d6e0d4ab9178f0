"""Numpy kernels, one small module per family, registered by operator name."""

from edgecaffe.ops import (  # noqa: F401
    activation,
    argmax,
    clip,
    conv,
    conv_transpose,
    crop,
    dense,
    detection,
    lrn,
    mvn,
    norm,
    pad,
    pointwise,
    pool,
    reduce,
    resize,
    softmax,
    ssd,
    tensor,
    tile,
    transpose,
)
from edgecaffe.ops.base import (
    BACKENDS,
    OPS,
    BackendError,
    Op,
    OpError,
    Shape,
    backend_kernels,
    get_op,
    register,
)

__all__ = ["BACKENDS", "OPS", "BackendError", "Op", "OpError", "Shape", "backend_kernels",
           "get_op", "register"]
