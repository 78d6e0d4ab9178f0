"""Winograd minimal filtering F(2x2, 3x3) for 3x3, stride-1, dilation-1, ungrouped convolutions.

Each output is cut into 2x2 tiles; a tile needs a 4x4 input patch d. With the standard matrices

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

the tile is  Y = A^T [ sum_c (G g_oc G^T) * (B^T d_c B) ] A,  where * is elementwise over the 4x4
"frequency" positions. So the convolution becomes 16 independent GEMMs, one per position
(O, C) @ (C, tiles), instead of one GEMM with 9 C rows per output pixel: 16 / (4 * 9 / 4) =
2.25x fewer multiplies, and the transformed input (16 C x tiles = 4 C x pixels floats) is less
than half of im2col's 9 C x pixels buffer.

The input and output transforms are separable (rows, then columns) and their matrices hold only
0 and +-1, so they are done as whole-image additions on strided slices: the tile row i of every
tile is `padded[:, i::2]`, and output position (a, b) of every tile lands on `out[:, a::2, b::2]`.
Partial tiles (odd output sizes) read zero padding and have their extra outputs dropped.

F(2x2, 3x3) keeps float32 rounding close to im2col's (the transforms only add, and G's halves are
exact); the larger F(4x4, 3x3) needs fractional input-transform coefficients that lose about one
decimal digit, which is outside the 1e-5 relative tolerance, so it is not used.

`conv2d` calls `winograd_conv3x3` when `use_winograd` says the shape pays off: the transforms are
memory-bound, so with few channels the GEMM saving does not cover them.
"""

from __future__ import annotations

import numpy as np

# Transform matrices of F(m x m, 3x3) with m = 2 (tile size T = m + 2 = 4).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
_M = _AT.shape[0]
_T = _BT.shape[0]

#: Fewest input channels for which the Winograd path beats im2col + GEMM (measured, see conv.py).
MIN_CHANNELS = 32


def use_winograd(
    channels: int,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    group: int,
) -> bool:
    return (kernel == (3, 3) and stride == (1, 1) and dilation == (1, 1) and group == 1
            and channels >= MIN_CHANNELS)


def transform_weight(weight: np.ndarray) -> np.ndarray:
    """(O, C, 3, 3) filters -> (T*T, O, C) float32, G g G^T computed in float64 for accuracy."""
    u = np.einsum("ki,ocij,lj->kloc", _G, weight.astype(np.float64), _G)
    return u.reshape(_T * _T, *weight.shape[:2]).astype(np.float32)


def _combine(coeffs: np.ndarray, terms: list[np.ndarray], out: np.ndarray) -> None:
    """out = sum_i coeffs[i] * terms[i], skipping zeros; coefficients are +-1 (checked)."""
    first = True
    for c, term in zip(coeffs, terms, strict=True):
        if c == 0:
            continue
        assert c in (1, -1), "the transforms of F(2x2, 3x3) only hold 0 and +-1"
        if first:
            np.copyto(out, term) if c == 1 else np.negative(term, out=out)
            first = False
        elif c == 1:
            np.add(out, term, out=out)
        else:
            np.subtract(out, term, out=out)


def _transform_input(image: np.ndarray, pad: tuple[int, int], tiles: tuple[int, int]) -> np.ndarray:
    """One CHW image -> (T*T, C, th*tw): B^T d B for every tile d (row pass, then column pass)."""
    c, h, w = image.shape
    (ph, pw), (th, tw) = pad, tiles
    # Zero border: the convolution's padding plus whatever the last (partial) tiles overhang.
    hp, wp = _M * th + 2, _M * tw + 2
    padded = np.zeros((c, hp, wp), dtype=np.float32)
    padded[:, ph : ph + h, pw : pw + w] = image

    # Row pass: tile row i of all tiles is padded[:, i::m][:th], a (C, th, wp) strided view.
    row_terms = [padded[:, i : i + _M * th : _M] for i in range(_T)]
    rowed = np.empty((_T, c, th, wp), dtype=np.float32)
    for k in range(_T):
        _combine(_BT[k], row_terms, rowed[k])

    v = np.empty((_T, _T, c, th, tw), dtype=np.float32)
    for k in range(_T):
        col_terms = [rowed[k][:, :, j : j + _M * tw : _M] for j in range(_T)]
        for l_ in range(_T):
            _combine(_BT[l_], col_terms, v[k, l_])
    return v.reshape(_T * _T, c, th * tw)


def _transform_output(
    m: np.ndarray, tiles: tuple[int, int], out: np.ndarray,
) -> None:
    """(T*T, O, th*tw) products -> A^T m A, written into out (O, oh, ow), dropping overhang."""
    (th, tw), (o, oh, ow) = tiles, out.shape
    m = m.reshape(_T, _T, o, th, tw)
    # Column pass: half[k][b] = sum_l m[k, l] A^T[b, l].
    half = np.empty((_T, _M, o, th, tw), dtype=np.float32)
    for k in range(_T):
        for b in range(_M):
            _combine(_AT[b], list(m[k]), half[k, b])
    scratch = np.empty((o, th, tw), dtype=np.float32)
    for a in range(_M):
        for b in range(_M):
            _combine(_AT[a], list(half[:, b]), scratch)
            target = out[:, a::_M, b::_M]  # partial tiles: fewer rows/columns than th, tw
            target[...] = scratch[:, : target.shape[1], : target.shape[2]]


def winograd_conv3x3(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    pad: tuple[int, int],
    u: np.ndarray | None = None,
) -> np.ndarray:
    """3x3 stride-1 convolution of NCHW x; `u` may pass a cached `transform_weight(weight)`."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    oh, ow = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    tiles = (-(-oh // _M), -(-ow // _M))
    if u is None:
        u = transform_weight(weight)
    out = np.empty((n, o, oh, ow), dtype=np.float32)
    for i in range(n):
        v = _transform_input(x[i], pad, tiles)
        m = np.matmul(u, v)  # (T*T, O, C) @ (T*T, C, tiles): the batched GEMMs
        del v  # free the transformed input before the output transform allocates
        _transform_output(m, tiles, out[i])
        if bias is not None:
            out[i] += bias[:, None, None]
    return out
