"""Winograd minimal filtering F(4x4, 3x3) for 3x3, stride-1, undilated, ungrouped convolutions.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016): an output tile
of 4x4 needs a 6x6 input patch d, and with the interpolation points 0, +-1, +-2 and infinity

    Y = A^T [ sum_c (G g_oc G^T) * (B^T d_c B) ] A        (* elementwise over 6x6 positions)

so one layer becomes 36 independent GEMMs (O, C) @ (C, tiles), 36 / (9 * 16) = 4x fewer
multiplies than im2col's one GEMM with 9 C rows per output pixel. Every transform is one GEMM
too, with the Kronecker product of the 1-d matrices: vec(B^T d B) = (B^T kron B^T) vec(d), a
(36, 36) @ (36, C * tiles) product, so numpy runs all of it in BLAS (and our threads split it,
`ops.gemm`), with no Python loop over tiles or positions.

Where it pays (measured, benchmarks/conv_layers.py): the transforms are memory-bound passes, the
filter transform a (36, 9) @ (9, O * C) product every execution (weights are loaded and dropped
per layer, so nothing is kept between runs), so it wins on maps of at least ~24x24 pixels with
16 or more input and output channels (`applies`): 0.6-0.8x im2col's time on VGG-19's layers
(CPU time, one thread). Small maps (VGG's conv5 at 14x14: 1.4x; 13x13 with 1024 channels:
2x), RGB inputs and few outputs (an SSD head's 8) stay on im2col. Accuracy: 3e-6 - 1.4e-5 of
the output's scale against a float64 direct convolution (tests/test_winograd.py; also pycaffe
and OpenCV on the zoo networks).

Layout: the padded image is cut into 6x6 patches at stride 4 (a strided view copied once per
band of tile rows: 2.25 floats per output pixel and channel against im2col's 9), transformed,
multiplied per position, transformed back with the output as (O * tiles, 16) rows (so the
scatter into the NCHW output writes runs of 4 pixels, not single floats).

Layers over `ops.base.CHUNK_MIN_BYTES` (those `ops/block.py` can split) compute their outputs
`CHUNK_ROWS` channels at a time, each chunk's filter transform and products one `np.matmul`
call of the same shape whether the whole layer or a block of it runs: bit-exact blocks.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edgecaffe.blas import available_cores
from edgecaffe.ops import gemm
from edgecaffe.ops.gemm import run_blocks

_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], np.float64)
#: Two-dimensional transforms as one matrix each (row-major vec of the 6x6 / 3x3 / 4x4 tile).
BT, AT = _BT.astype(np.float32), _AT.astype(np.float32)
KRON_G = np.kron(_G, _G).astype(np.float32)  # (36, 9): filter -> positions

TILE, OUT_TILE, POSITIONS = 6, 4, 36

#: Smallest input and output channels and output pixels (oh * ow) for which Winograd beats
#: im2col here
#: (measured on the 2-core test machine, CPU time on one thread, against im2col: 24x24 maps
#: 0.67-0.79x, 20x20 0.82-0.87x, 19x19 0.90-1.03x, 17x17 1.26-1.46x, 14x14 1.3-1.5x).
MIN_CHANNELS = 16
MIN_PIXELS = 576
#: Floats of transformed input per band of tile rows: 2 MB, a core's L2 here, so that the
#: transforms' passes run from cache (measured on VGG's 224-px layers: 26 ms against 38 with
#: 8 MB bands, 1 thread). Layers computed in chunks take 16 MB bands: each band transforms
#: each chunk's filters again (their maps are small: usually one band).
BAND_FLOATS = 512 * 1024
CHUNKED_BAND_FLOATS = 4 * 1024 * 1024


def applies(channels: int, kernel, stride, dilation, group: int, out_size: tuple[int, int],
            out_channels: int, chunked: bool = False) -> bool:
    """Whether `conv.conv2d` runs a layer as F(4x4, 3x3): 3x3, stride 1, dilation 1, group 1,
    at least MIN_CHANNELS inputs and outputs and MIN_PIXELS output pixels. A chunked layer
    (`chunked`: over `ops.base.CHUNK_MIN_BYTES`, so far more outputs) takes it whatever
    `out_channels`: a block of it (`ops/block.py`, a slice of the outputs) must take the
    whole layer's path to stay bit-exact. (128 -> 8 channels on 38x38, an SSD head, ran 4.7x
    slower than im2col: too few outputs to pay for the input transform.)"""
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and group == 1 and channels >= MIN_CHANNELS
            and (out_channels >= MIN_CHANNELS or chunked)
            and out_size[0] * out_size[1] >= MIN_PIXELS)


def _layout(c: int, out_size: tuple[int, int], chunk: int | None) -> tuple[int, int, int]:
    """(tile rows, tile columns, tile rows per band)."""
    th, tw = -(-out_size[0] // OUT_TILE), -(-out_size[1] // OUT_TILE)
    floats = CHUNKED_BAND_FLOATS if chunk else BAND_FLOATS
    rows = max(1, min(th, floats // (POSITIONS * c * tw)))
    bands = -(-th // rows)
    return th, tw, -(-th // bands)


def workspace_floats(c: int, o: int, out_size: tuple[int, int], chunk: int | None,
                     threads: int) -> int:
    """Floats `conv3x3` allocates besides its output when it computes `o` output channels
    on up to `threads` threads: a band's rows of the padded image, its patches and the
    scratch of their transform, the filter transform (the whole layer's; with `chunk`, one
    chunk's per chunk running at once: a thread each, no more than there are chunks), a
    band's products (their inverse transform reuses them), the inverse transform's scratch,
    and the tile-aligned staging of a band whose output is not a multiple of 4 pixels.
    Checked against tracemalloc (tests/test_memory_truth.py, tests/test_winograd.py)."""
    _, tw, band = _layout(c, out_size, chunk)
    tiles = band * tw
    padded = c * (OUT_TILE * band + 2) * (OUT_TILE * tw + 2)
    rows = min(chunk, o) if chunk else o
    per_chunk = POSITIONS * rows * (c + tiles) + OUT_TILE * TILE * rows * tiles
    if out_size[0] % OUT_TILE or out_size[1] % OUT_TILE:
        per_chunk += rows * 16 * tiles
    at_once = min(max(1, threads), -(-o // chunk)) if chunk else 1
    return padded + 2 * POSITIONS * c * tiles + per_chunk * at_once


def _transform(matrix: np.ndarray, source: np.ndarray, out: np.ndarray, scratch: np.ndarray,
               fixed: bool, threads: int | None = None) -> None:
    """out (q*q, X) = (M kron M) source (p*p, X) for M (q, p): M along the first tile axis
    into `scratch` (q*p*X floats at least), then along the second into `out` (which may be
    `source`'s buffer: it is not read any more). Two thin products (K = p) rather than one
    with K = p*p: a third of the FLOPs, measured 1.3-4x faster. `fixed`: fixed column
    chunks, the same calls whatever the thread count (bit-exact blocks)."""
    q, p = matrix.shape
    x = source.shape[1]
    first = scratch.reshape(-1)[: q * p * x].reshape(q, p * x)
    _product(matrix, source.reshape(p, p * x), first, fixed, threads)
    second = first.reshape(q, p, x)
    out = out.reshape(-1)[: q * q * x].reshape(q, q, x)
    if fixed:
        for i in range(q):
            _product(matrix, second[i], out[i], fixed, threads)
    else:
        _product(matrix, second, out, fixed, threads)


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray, fixed: bool,
             threads: int | None) -> None:
    if fixed:
        gemm.matmul_chunks(a, b, out, 8192, rows=False, threads=threads)
    else:
        gemm.matmul(a, b, out, threads)


def transform_filters(weight: np.ndarray, out: np.ndarray, threads: int | None = None) -> None:
    """(O, C, 3, 3) filters -> out (36, O, C): G g G^T for every filter, one product."""
    o, c = weight.shape[:2]
    gemm.matmul(KRON_G, weight.reshape(o * c, 9).T, out.reshape(POSITIONS, o * c), threads)


def conv3x3(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, pad: tuple[int, int],
            out: np.ndarray, chunk: int | None = None) -> None:
    """out (N, O, oh * ow) = the 3x3 stride-1 convolution of x (N, C, H, W) with `weight`
    (O, C, 3, 3), zero padding `pad`, plus `bias` (O,), by F(4x4, 3x3).

    `chunk`: output channels per filter transform and product (see the module docstring on
    blocks); None: all at once, every product split across the execution's threads."""
    n, c, h, w = x.shape
    o = weight.shape[0]
    oh, ow = h + 2 * pad[0] - 2, w + 2 * pad[1] - 2
    th, tw, band = _layout(c, (oh, ow), chunk)
    # At most the cores `Conv.workspace_bytes` declares a chunk's buffers for (a fixed
    # `blas_threads` may ask for more threads than there are cores).
    threads = min(gemm.BlasHold.split_threads(), available_cores())
    # The padded image (zeros around it and past it up to whole tiles), a band of tile rows
    # at a time: a padded copy of the whole image would be 12.5 MiB for VGG-19's conv1_2.
    padded = np.zeros((c, OUT_TILE * band + 2, OUT_TILE * tw + 2), np.float32)
    patches = np.empty(POSITIONS * c * band * tw, np.float32)
    spectra = np.empty_like(patches)
    filters = None
    if not chunk:
        filters = np.empty((POSITIONS, o, c), np.float32)
        transform_filters(weight, filters)
    result = out.reshape(n, o, oh, ow)
    for i in range(n):
        for t0 in range(0, th, band):
            rows = min(band, th - t0)
            tiles = rows * tw
            _pad_rows(x[i], padded, OUT_TILE * t0 - pad[0], OUT_TILE * rows + 2, pad[1])
            d = patches[: POSITIONS * c * tiles].reshape(POSITIONS, c * tiles)
            sc, sy, sx = padded.strides
            window = as_strided(padded, (TILE, TILE, c, rows, tw),
                                (sy, sx, sc, OUT_TILE * sy, OUT_TILE * sx), writeable=False)
            d5 = d.reshape(TILE, TILE, c, rows, tw)
            _sliced(lambda s, d5=d5, window=window: np.copyto(d5[:, :, s], window[:, :, s]),
                    c, threads)
            # B^T d B (via `spectra`) back into the patches' buffer: d is not needed after.
            _transform(BT, d, d, spectra, chunk is not None)
            v = d.reshape(POSITIONS, c, tiles)
            target = result[i, :, OUT_TILE * t0 : min(oh, OUT_TILE * (t0 + rows))]
            if chunk:
                blocks = [partial(_outputs, weight[lo : lo + chunk], None, v, tw,
                                  target[lo : lo + chunk],
                                  None if bias is None else bias[lo : lo + chunk], 1)
                          for lo in range(0, o, chunk)]
                run_blocks(blocks, threads) if threads > 1 else [b() for b in blocks]
            else:
                _outputs(weight, filters, v, tw, target, bias, threads)


def _pad_rows(image: np.ndarray, padded: np.ndarray, top: int, height: int, left: int) -> None:
    """padded[:, :height] = rows top .. top + height of the zero-padded image (C, H, W),
    its first column at `left`. The columns around the image are zeros from the start and
    never written; rows above or below the image are zeroed (an earlier band wrote there)."""
    h, w = image.shape[1:]
    lo, hi = max(0, top), max(max(0, top), min(h, top + height))
    padded[:, : lo - top] = 0
    padded[:, lo - top : hi - top, left : left + w] = image[:, lo:hi]
    padded[:, hi - top : height] = 0


def _sliced(work, size: int, threads: int) -> None:
    """work(slice) over `threads` equal slices of range(size), on our threads (the copies
    and bias passes around the products, which numpy runs on one thread each)."""
    if threads <= 1 or size < 2 * threads:
        work(slice(0, size))
        return
    step = -(-size // threads)
    run_blocks([partial(work, slice(lo, lo + step)) for lo in range(0, size, step)], threads)


def _outputs(weight: np.ndarray, filters: np.ndarray | None, v: np.ndarray, tw: int,
             target: np.ndarray, bias: np.ndarray | None, threads: int) -> None:
    """target (O, band rows, ow) = A^T [filters (36, O, C) @ v (36, C, tiles)] A + bias,
    computing the filter transform first when `filters` is None. `threads` 1: every product
    one call on this thread (a chunk, bit-exact); else split across that many."""
    o, c = weight.shape[:2]
    tiles = v.shape[2]
    if filters is None:
        filters = np.empty((POSITIONS, o, c), np.float32)
        transform_filters(weight, filters, threads)
    products = np.empty((POSITIONS, o, tiles), np.float32)
    gemm.matmul(filters, v, products, threads)
    tile_rows = tiles // tw
    half = np.empty((OUT_TILE, TILE * o * tiles), np.float32)
    # A^T m A back into the products' buffer (they are not read after the first pass).
    _transform(AT, products.reshape(POSITIONS, -1), products, half, False, threads)
    spatial = products.reshape(-1)[: 16 * o * tiles]
    # (4, 4, o, tile row, tile column) -> (o, tile row, 4, tile column, 4)
    source = spatial.reshape(OUT_TILE, OUT_TILE, o, tile_rows, tw).transpose(2, 3, 0, 4, 1)
    oh, ow = target.shape[1:]
    whole = oh == OUT_TILE * tile_rows and ow == OUT_TILE * tw
    # Ragged edge: whole tiles staged, then what lies inside the output kept.
    staged = None if whole else np.empty((o, tile_rows, OUT_TILE, tw, OUT_TILE), np.float32)

    def scatter(s: slice) -> None:
        if whole:
            np.copyto(target[s].reshape(-1, tile_rows, OUT_TILE, tw, OUT_TILE), source[s])
        else:
            np.copyto(staged[s], source[s])
            np.copyto(target[s], staged[s].reshape(-1, OUT_TILE * tile_rows,
                                                   OUT_TILE * tw)[:, :oh, :ow])
        if bias is not None:  # while the slice is in cache
            target[s] += bias[s, None, None]
    _sliced(scatter, o, threads)
