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

The transforms' matrices hold only 0 and +-1, so they are whole-array adds and subtracts
(`_combine`). To make those adds run over long contiguous rows, the padded input is stored split
by row and column parity (see `_transform_input`); the image is processed in bands of tile rows
and the transforms in blocks of channels, to keep the intermediates cache-sized. Partial tiles
(odd output sizes) read zero padding and have their extra outputs dropped.

Accuracy: the transforms only add and G's halves are exact, so the result stays within ~1e-6 of
im2col's relative to the output's scale. F(4x4, 3x3) was not tried.

Status: NOT dispatched by `conv.conv2d`. Measured with 2 BLAS threads, the 16 batched GEMMs take
about half of im2col's GEMM time, but the transforms (single-threaded numpy ufuncs, ~0.5 ns per
element touched) cost about as much as that saves: VGG-19 and Tiny YOLO 3x3 layers came out
between 0.4x and 1.15x of banded im2col + GEMM, within run-to-run noise at best. Kept as a
tested starting point (e.g. for running the transforms on several threads).
"""

from __future__ import annotations

import numpy as np

# Transform matrices of F(m x m, 3x3) with m = 2 (tile size T = m + 2 = 4).
_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=np.float64)
_G32 = _G.astype(np.float32)
_M = _AT.shape[0]
_T = _BT.shape[0]

#: Floats per channel block in the transforms (~256 KB: a share of a typical L2 cache).
_BLOCK_FLOATS = 64 * 1024

#: Floats of transformed input per band (~2 MB) and the fewest tiles a band's GEMM should get.
_BAND_FLOATS = 2 * 1024 * 1024
_MIN_GEMM_COLUMNS = 256

def transform_weight(weight: np.ndarray) -> np.ndarray:
    """(O, C, 3, 3) filters -> (T*T, O, C): G g G^T for every filter g, as two small GEMMs.

    G's entries (0, +-1/2, 1) are exact in float32, so float32 loses nothing worth float64's cost.
    """
    o, c = weight.shape[:2]
    # Kernel taps first so each pass is one (T, 3) @ (3, many) GEMM over all filters at once.
    taps = np.ascontiguousarray(weight.reshape(o * c, 3, 3).transpose(1, 2, 0))  # (i, j, oc)
    rows = np.matmul(_G32, taps.reshape(3, -1)).reshape(_T, 3, o * c)  # sum_i G[k, i] g[i, j]
    u = np.matmul(_G32, rows)  # (T, T, oc) after broadcasting: sum_j G[l, j] rows[k, j]
    return u.reshape(_T * _T, o, c)


def _combine(coeffs: np.ndarray, terms: list[np.ndarray], out: np.ndarray) -> None:
    """out = sum_i coeffs[i] * terms[i] for coefficients in {0, +-1}, in as few passes as possible.

    Every row of B^T and A^T has at least two nonzero entries, so the first two terms go through
    one binary ufunc straight into `out` (no copy pass), the rest accumulate in place.
    """
    nonzero = [(c, t) for c, t in zip(coeffs, terms, strict=True) if c != 0]
    assert len(nonzero) >= 2 and all(c in (1, -1) for c, _ in nonzero)
    (c0, t0), (c1, t1) = nonzero[:2]
    if c0 == c1:
        np.add(t0, t1, out=out)
    else:
        np.subtract(t0, t1, out=out) if c0 == 1 else np.subtract(t1, t0, out=out)
    if c0 == -1 and c1 == -1:
        np.negative(out, out=out)
    for c, term in nonzero[2:]:
        np.add(out, term, out=out) if c == 1 else np.subtract(out, term, out=out)


def _blocks(channels: int, plane_floats: int) -> tuple[range, int]:
    """Channel block starts so a block's plane (and its transformed copies) stays in cache.

    The transforms are a chain of whole-array adds; done on the full image each add would stream
    tens of MB through memory, done per block the intermediates are reused from L2.
    """
    per_block = max(1, _BLOCK_FLOATS // max(1, plane_floats))
    return range(0, channels, per_block), per_block


def _transform_input(image: np.ndarray, pad: tuple[int, int], tiles: tuple[int, int]) -> np.ndarray:
    """One CHW image -> (T*T, C, th*(tw+1)): B^T d B for every tile d.

    The padded image is stored split by row and column parity, (C, 2, 2, (th+2)*(tw+1)) flat:
    element [rp, cp, R*(tw+1) + Q] is padded[2R + rp, 2Q + cp]. Then input d[i][j] of tile
    (t, s) sits at flat index t*(tw+1) + s + (i//2)*(tw+1) + j//2 of plane (i%2, j%2), so the
    d[i][j] of all tiles is one contiguous run, and every transform step is an add of long
    contiguous rows (numpy adds strided 2-d views several times slower). The price is one
    garbage tile column (s = tw, wrapping to the next row) that the output transform drops.
    """
    c, h, w = image.shape
    (ph, pw), (th, tw) = pad, tiles
    stride = tw + 1
    n_tiles = th * stride
    v = np.empty((_T, _T, c, n_tiles), dtype=np.float32)
    starts, size = _blocks(c, 4 * (th + 2) * stride)
    split = np.zeros((min(size, c), 2, 2, th + 2, stride), dtype=np.float32)
    flat = split.reshape(len(split), 2, 2, -1)
    # After the column pass: for each row parity and B^T row l, all (th + 1) tile rows.
    colled = np.empty((_T, 2, min(size, c), (th + 1) * stride), dtype=np.float32)
    # Where the image goes in each parity plane (the rest is zero padding, written once).
    spans = []
    for rp in range(2):
        for cp in range(2):
            r0, c0_ = (rp - ph) % 2, (cp - pw) % 2  # first image row / column of this parity
            spans.append((rp, cp, r0, (r0 + ph) // 2, len(range(r0, h, 2)),
                          c0_, (c0_ + pw) // 2, len(range(c0_, w, 2))))
    for c0 in starts:
        c1 = min(c, c0 + size)
        block, planes, cols = split[: c1 - c0], flat[: c1 - c0], colled[:, :, : c1 - c0]
        for rp, cp, r0, rq, rn, q0, cq, cn in spans:
            block[:, rp, cp, rq : rq + rn, cq : cq + cn] = image[c0:c1, r0::2, q0::2]
        for rp in range(2):
            col_terms = [planes[:, rp, j % 2, j // 2 : j // 2 + (th + 1) * stride]
                         for j in range(_T)]
            for l_ in range(_T):
                _combine(_BT[l_], col_terms, cols[l_, rp])
        for l_ in range(_T):
            row_terms = [cols[l_, i % 2, :, (i // 2) * stride : (i // 2) * stride + n_tiles]
                         for i in range(_T)]
            for k in range(_T):
                _combine(_BT[k], row_terms, v[k, l_, c0:c1])
    return v.reshape(_T * _T, c, n_tiles)


def _transform_output(m: np.ndarray, tiles: tuple[int, int], out: np.ndarray) -> None:
    """(T*T, O, th*(tw+1)) products -> A^T m A into out (O, oh, ow), dropping the overhang."""
    (th, tw), o = tiles, out.shape[0]
    m = m.reshape(_T, _T, o, th, tw + 1)
    starts, size = _blocks(o, _T * th * (tw + 1))
    half = np.empty((_T, _M, min(size, o), th, tw + 1), dtype=np.float32)
    tile = np.empty((min(size, o), th, tw + 1), dtype=np.float32)
    for o0 in starts:
        o1 = min(o, o0 + size)
        part = half[:, :, : o1 - o0]
        # Column pass: part[k, b] = sum_l m[k, l] A^T[b, l].
        for k in range(_T):
            for b in range(_M):
                _combine(_AT[b], [m[k, l_, o0:o1] for l_ in range(_T)], part[k, b])
        # Row pass into a contiguous plane, then one strided copy to the output's (a, b)
        # positions; partial tiles at the bottom / right edge have fewer rows / columns there.
        for a in range(_M):
            for b in range(_M):
                _combine(_AT[a], [part[k, b] for k in range(_T)], tile[: o1 - o0])
                target = out[o0:o1, a::_M, b::_M]
                target[...] = tile[: o1 - o0, : target.shape[1], : target.shape[2]]


def _band_rows(channels: int, tiles: tuple[int, int]) -> int:
    """Tile rows per band: enough tiles for an efficient GEMM, few enough to stay in cache."""
    per_row = (tiles[1] + 1) * channels * _T * _T  # floats of one tile row, transformed
    return max(1, _BAND_FLOATS // per_row, -(-_MIN_GEMM_COLUMNS // (tiles[1] + 1)))


def winograd_conv3x3(
    x: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray | None,
    pad: tuple[int, int],
    u: np.ndarray | None = None,
) -> np.ndarray:
    """3x3 stride-1 convolution of NCHW x; `u` may pass a cached `transform_weight(weight)`.

    The image is done in bands of tile rows, so the transformed input and the GEMM products
    (16 floats per tile and channel, 4x the image) stay small and cache-warm instead of being
    whole-image buffers bigger than im2col's.
    """
    n, c, h, w = x.shape
    o = weight.shape[0]
    ph, pw = pad
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 2
    th, tw = -(-oh // _M), -(-ow // _M)
    if u is None:
        u = transform_weight(weight)
    band = _band_rows(max(c, o), (th, tw))
    out = np.empty((n, o, oh, ow), dtype=np.float32)
    for i in range(n):
        for t0 in range(0, th, band):
            t1 = min(th, t0 + band)
            # Padded rows 2 t0 .. 2 t1 + 1 feed these tiles; map them back to image rows.
            top = _M * t0 - ph
            rows = x[i, :, max(0, top) : max(0, _M * t1 + 2 - ph)]
            v = _transform_input(rows, (max(0, -top), pw), (t1 - t0, tw))
            m = np.matmul(u, v)  # (T*T, O, C) @ (T*T, C, tiles): the batched GEMMs
            _transform_output(m, (t1 - t0, tw), out[i, :, _M * t0 : _M * t1])
        if bias is not None:
            out[i] += bias[:, None, None]
    return out
