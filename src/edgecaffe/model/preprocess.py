"""Images -> network input, as the original EdgeCaffe prepared them.

Resize to the input size (bilinear), keep OpenCV's BGR channel order, subtract the per-channel
mean, multiply by the scale; no /255 unless the scale says so. A built-in sample image means
nothing has to be downloaded to try a network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgecaffe.model.errors import ModelError


class ImageError(ModelError):
    """An input image that cannot be read or does not fit the network."""


def sample_image(size: int = 256) -> np.ndarray:
    """A deterministic synthetic test picture (H x W x 3 uint8, BGR): a face-like figure on a
    gradient, so classifiers see structure rather than noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.stack([180 * (1 - y) + 40, 120 + 60 * x, 90 + 120 * y * x], axis=-1)
    centre = ((x - 0.5) / 0.32) ** 2 + ((y - 0.48) / 0.4) ** 2
    image[centre < 1] = (140, 170, 220)  # skin tone, in BGR
    for eye_x in (0.38, 0.62):
        image[((x - eye_x) ** 2 + (y - 0.4) ** 2) < 0.0016] = (60, 40, 30)
    mouth = (np.abs(y - 0.66) < 0.02) & (np.abs(x - 0.5) < 0.12)
    image[mouth] = (70, 60, 170)
    image[y < 0.18 - 0.25 * (x - 0.5) ** 2] = (30, 50, 80)  # hair
    return np.clip(image, 0, 255).astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 in BGR order (as OpenCV's imread gives)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageError(f"{path}: cannot read image: {error}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of an H x W x C image with OpenCV's pixel-centre convention, in float32.

    The four neighbours are gathered from the image as it is (uint8) and only they are
    converted: a photo's full-size float copy cost ~8x the resize itself (same values)."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)

    def axis(out: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(out, dtype=np.float64) + 0.5) * (size / out) - 0.5
        pos = np.clip(pos, 0, size - 1)
        low = np.floor(pos).astype(np.intp)
        high = np.minimum(low + 1, size - 1)
        return low, high, (pos - low).astype(np.float32)

    y0, y1, wy = axis(height, h)
    x0, x1, wx = axis(width, w)
    wx = wx[None, :, None]
    rows0, rows1 = image[y0], image[y1]
    f32 = np.float32
    top = rows0[:, x0].astype(f32) * (1 - wx) + rows0[:, x1].astype(f32) * wx
    bottom = rows1[:, x0].astype(f32) * (1 - wx) + rows1[:, x1].astype(f32) * wx
    wy = wy[:, None, None]
    return top * (1 - wy) + bottom * wy


def preprocess(
    image: np.ndarray,
    input_shape: Sequence[int],
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    scale: float = 1.0,
    channel_order: str = "BGR",
    layout: str = "NCHW",
) -> np.ndarray:
    """An H x W x 3 BGR uint8 image -> float32 of `input_shape`, every batch slot filled.

    `mean` is given in the network's channel order (`channel_order`, 'BGR' or 'RGB');
    `layout` is the network input's: NCHW (Caffe, PyTorch) or NHWC (TensorFlow exports).
    """
    if len(input_shape) != 4:
        raise ImageError(f"image input needs a 4-d {layout} network input, not "
                         f"{tuple(input_shape)}")
    if layout == "NHWC":
        n, h, w, c = input_shape
        nchw = preprocess(image, (n, c, h, w), mean, scale, channel_order)
        return np.ascontiguousarray(nchw.transpose(0, 2, 3, 1))
    if layout != "NCHW":
        raise ImageError(f"unknown input layout {layout!r}; use NCHW or NHWC")
    n, c, h, w = input_shape
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an H x W x 3 image, got shape {image.shape}")
    resized = resize_bilinear(image, h, w)
    if c == 1:
        resized = resized @ np.array([0.114, 0.587, 0.299], np.float32)[:, None]
    elif c == 3:
        if channel_order.upper() == "RGB":
            resized = resized[:, :, ::-1]
    else:
        raise ImageError(f"network input has {c} channels; images give 1 or 3")
    means = np.asarray(mean, dtype=np.float32).reshape(-1)
    if means.size not in (1, c, 3):  # 3 for a 1-channel net: the first value is used
        raise ImageError(f"mean has {means.size} values; the network's input has {c} channels "
                         "(give 1 or one per channel)")
    means = means[:c]
    planes = (resized - means) * np.float32(scale)
    chw = np.ascontiguousarray(planes.transpose(2, 0, 1), dtype=np.float32)
    return np.broadcast_to(chw, (n, c, h, w)).copy()


def preprocess_for(image: np.ndarray, input_shape: Sequence[int], meta: dict) -> np.ndarray:
    """`preprocess` with a network's own settings (`Network.meta` / a package's preprocess):
    mean, scale, channel_order, layout."""
    return preprocess(image, input_shape, mean=meta.get("mean", (0.0, 0.0, 0.0)),
                      scale=meta.get("scale", 1.0),
                      channel_order=meta.get("channel_order", "BGR"),
                      layout=meta.get("layout", "NCHW"))
