"""What a `POST /v1/infer` call asks for: networks, inputs and options, read from the request.

Three body forms (the content type says which):

* `multipart/form-data`: every file part is one image; text parts are options;
* `image/*` or `application/octet-stream`: the body is one image;
* `application/json`: `{"networks": [...], "inputs": [tensor, ...]}` (nested lists of a
  network's input shape, float), or `"input": tensor`, or `"images": [base64, ...]`.

Options (query string, form fields or JSON keys): `networks` (comma-separated or a JSON list)
or `pipeline` (one pipeline's name; its inputs must be images), `top_k`, `timeout_ms`, `raw`
(raw outputs for classifiers too; a pipeline's full probabilities). Every problem is a `CallError`
with the HTTP status and a one-line reason; nothing here reaches the engine.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class CallError(Exception):
    """A call the service refuses: `status` (4xx, or 503) and a one-line `reason`."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = " ".join(reason.split())  # one line, whatever the cause's message held
        self.headers = dict(headers or {})


@dataclass
class Limits:
    """`max_upload_bytes`: the whole body; `max_pixels`: one image's width x height (checked
    from its header, before it is decoded); `max_inputs`: inputs in one call."""

    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = 40_000_000
    max_inputs: int = 64


@dataclass
class Call:
    """One inference call: its inputs (name, array) and options."""

    networks: list[str]
    inputs: list[tuple[str, np.ndarray]] = field(default_factory=list)
    pipeline: str | None = None
    top_k: int | None = None
    timeout_ms: float | None = None
    raw: bool = False


async def read_limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, raising `CallError(413)` as soon as more than `limit` bytes came."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise CallError(413, f"request body larger than the limit of {limit} bytes "
                             "(--max-upload)")
        yield chunk


def decode_image(data: bytes, what: str, max_pixels: int) -> np.ndarray:
    """An encoded image (JPEG, PNG, ...) -> H x W x 3 uint8 BGR, as `model.preprocess.load_image`
    reads files. The size is checked from the header before decoding (`CallError(413)`); an
    unreadable image is `CallError(422)`."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise CallError(422, f"{what}: empty image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise CallError(413, f"{what}: image of {width} x {height} pixels exceeds the "
                                 f"limit of {max_pixels} pixels (--max-pixels)")
            rgb = np.asarray(image.convert("RGB"))
    except CallError:
        raise
    except Image.DecompressionBombError as error:  # over twice Pillow's own limit: not opened
        raise CallError(413, _bomb_reason(what, str(error), max_pixels)) from None
    except UnidentifiedImageError:
        raise CallError(422, f"{what}: not an image in a format Pillow reads (JPEG, PNG, BMP, "
                         "GIF, TIFF, WebP, ...)") from None
    except Exception as error:  # Pillow raises many types for a damaged file; all mean this
        raise CallError(422, f"{what}: cannot read image: {type(error).__name__}: "
                         f"{error}") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _bomb_reason(what: str, message: str, max_pixels: int) -> str:
    """The 413 reason for an image Pillow refuses to open at all (its decompression-bomb
    check, at twice `PIL.Image.MAX_IMAGE_PIXELS`, runs before our own `max_pixels`)."""
    found = re.search(r"\((\d+) pixels\)", message)
    pixels = f"{int(found.group(1))} pixels" if found else "more pixels than Pillow opens"
    return (f"{what}: image of {pixels} exceeds the limit of {max_pixels} pixels "
            "(--max-pixels)")


def tensor(value: Any, what: str) -> np.ndarray:
    """A JSON array -> float32 ndarray (`CallError(422)` if ragged, not numeric or not
    finite)."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise CallError(422, f"{what}: not a rectangular array of numbers ({error})") from None
    if array.ndim == 0:
        got = "null" if value is None else "a single number"
        raise CallError(422, f"{what}: a tensor must be an array, got {got}")
    if not np.all(np.isfinite(array)):
        raise CallError(422, f"{what}: holds values that are not finite numbers")
    return array


def _not_found(kind: str, names: Sequence[str], known: Sequence[str],
               failed: Mapping[str, str], hints: Sequence[str]) -> CallError:
    """The 404 for `names` not among `known`: those that failed to build with their error
    (as GET /v1/models and the startup notes say), the others as unknown; what is served."""
    broken = [f"{name} failed to build: {failed[name]}" for name in names if name in failed]
    unknown = [name for name in names if name not in failed]
    parts = ([f"unknown {kind} {', '.join(unknown)}"] if unknown else []) + broken
    return CallError(404, "; ".join([*parts, f"served: {', '.join(known) or 'none'}",
                                     *hints]))


def parse_networks(value: Any, known: Sequence[str], pipelines: Sequence[str] = (),
                   failed: Mapping[str, str] | None = None) -> list[str]:
    """'AgeNet,GenderNet' or ["AgeNet", "GenderNet"] -> names; 400 if missing, 404 if unknown
    (the reason says why for a name in `failed`: entry name -> its build error)."""
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        names = [name.strip() for name in value if name.strip()]
    elif value is None:
        names = []
    else:
        raise CallError(400, "networks: give names as 'A,B' or a JSON list of strings")
    if not names:
        raise CallError(400, "no networks named: add ?networks=NAME[,NAME...] or "
                         "?pipeline=NAME (GET /v1/models lists them)")
    unknown = [name for name in names if name not in known]
    if unknown:
        hints = [f"{name} is a pipeline: ?pipeline={name}" for name in unknown
                 if name in pipelines]
        raise _not_found("model(s)", unknown, known, failed or {}, hints)
    return names


def parse_pipeline(value: Any, known: Sequence[str], networks: Sequence[str],
                   failed: Mapping[str, str] | None = None) -> str:
    """One pipeline's name; 400 if not a name, 404 if unknown (saying why for a name in
    `failed`)."""
    if not isinstance(value, str) or not value.strip():
        raise CallError(400, "pipeline: give one pipeline's name")
    name = value.strip()
    if name not in known and name in (failed or {}):
        raise _not_found("pipeline", [name], known, failed or {}, [])
    if name not in known:
        hint = f" ({name} is a network: ?networks={name})" if name in networks else ""
        raise CallError(404, f"unknown pipeline {name!r}{hint}; served: "
                        f"{', '.join(known) or 'none'}")
    return name


def _number(options: Mapping[str, Any], key: str, low: float, high: float,
            integer: bool = False) -> float | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CallError(400, f"{key}: {value!r} is not a number") from None
    if isinstance(value, bool) or not math.isfinite(number) or not low <= number <= high \
            or (integer and number != int(number)):
        kind = "a whole number" if integer else "a number"
        raise CallError(400, f"{key}: {value!r} must be {kind} from {low:g} to {high:g}")
    return int(number) if integer else number


def collect_options(*sources: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """One call's options from its sources in order (the query string, then form fields or
    JSON keys). A key given several times (`?networks=A&networks=B`, as HTTP clients send a
    list) is one option repeated: `networks` adds up its names, in order; any other key must
    repeat the same value (400 otherwise), never one silently dropped."""
    options: dict[str, Any] = {}
    networks: list[Any] = []
    for items in sources:
        for key, value in items:
            if key == "networks":
                networks.append(value)
            elif key in options and options[key] != value:
                raise CallError(400, f"{key} given twice, as {options[key]!r} and {value!r}")
            else:
                options[key] = value
    if len(networks) == 1:
        options["networks"] = networks[0]
    elif networks:
        names: list[Any] = []
        for value in networks:  # each as parse_networks reads it: 'A,B' or a list of names
            names.extend(value.split(",") if isinstance(value, str) else
                         value if isinstance(value, list) else [value])
        options["networks"] = names
    return options


def options_call(options: Mapping[str, Any], known: Sequence[str],
                 pipelines: Sequence[str] = (), failed: Mapping[str, str] | None = None
                 ) -> Call:
    """The call's options from merged query, form or JSON keys: `networks` of `known`, or one
    of `pipelines` (400 for both); `failed`: entries that failed to build, by name, with
    their errors (a 404 naming one says why)."""
    raw = options.get("raw", False)
    pipeline = None
    if options.get("pipeline") not in (None, ""):
        if options.get("networks") not in (None, "", []):
            raise CallError(400, "give networks or pipeline, not both")
        pipeline = parse_pipeline(options["pipeline"], pipelines, known, failed)
    return Call(
        networks=[] if pipeline else parse_networks(options.get("networks"), known, pipelines,
                                                      failed),
        pipeline=pipeline,
        top_k=_number(options, "top_k", 0, 1000, integer=True),
        timeout_ms=_number(options, "timeout_ms", 1, 24 * 3600 * 1e3),
        raw=raw is True or str(raw).lower() in ("1", "true", "yes"),
    )


def json_inputs(body: bytes, limits: Limits) -> tuple[dict[str, Any], list]:
    """(options, inputs) of a JSON body; 400 for malformed JSON or a wrong layout."""
    try:
        document = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CallError(400, f"malformed JSON body: {error}") from None
    except RecursionError:
        raise CallError(400, "malformed JSON body: nested too deeply") from None
    if not isinstance(document, dict):
        raise CallError(400, "the JSON body must be an object: {\"networks\": [...], "
                         "\"inputs\": [tensor, ...]}")
    inputs: list[tuple[str, np.ndarray]] = []
    tensors = document.get("inputs", [document["input"]] if "input" in document else [])
    images = document.get("images", [])
    if not isinstance(tensors, list) or not isinstance(images, list):
        raise CallError(400, "\"inputs\" and \"images\" must be JSON lists")
    if len(tensors) + len(images) > limits.max_inputs:
        raise CallError(413, f"{len(tensors) + len(images)} inputs in one call; at most "
                         f"{limits.max_inputs}")
    for index, value in enumerate(tensors):
        inputs.append((f"inputs[{index}]", tensor(value, f"inputs[{index}]")))
    for index, text in enumerate(images):
        what = f"images[{index}]"
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise CallError(422, f"{what}: not base64 text") from None
        inputs.append((what, decode_image(data, what, limits.max_pixels)))
    options = {k: v for k, v in document.items() if k not in ("inputs", "input", "images")}
    return options, inputs


def check_shapes(call: Call, input_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Tensors (float inputs) must have each requested network's input shape (422 if not);
    images are preprocessed per network and fit any; a pipeline takes images only."""
    for what, array in call.inputs:
        if array.dtype == np.uint8 and array.ndim == 3:
            continue
        if call.pipeline is not None:
            raise CallError(422, f"{what}: pipeline {call.pipeline} takes images (upload "
                            "one, or base64 \"images\" in JSON), not tensors")
        for name in call.networks:
            if tuple(array.shape) != tuple(input_shapes[name]):
                raise CallError(422, f"{what}: tensor of shape {tuple(array.shape)} does not "
                                 f"match {name}'s input shape {tuple(input_shapes[name])}")
