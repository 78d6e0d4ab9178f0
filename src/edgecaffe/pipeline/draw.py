"""An image annotated with a pipeline's detections and their children's labels (Pillow, a
runtime dependency already)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecaffe.pipeline.result import Classification, PipelineResult


def label_text(children: dict[str, Any]) -> str:
    """The short text drawn above a box: each classifier child's expectation or top label."""
    parts = []
    for name, output in children.items():
        if isinstance(output, Classification):
            if output.expected is not None:
                parts.append(f"{name} {output.expected:.0f}")
            else:
                parts.append(output.top[0].label)
    return ", ".join(parts)


def annotate(image: str | Path, result: PipelineResult, output: str | Path) -> None:
    """Draw every detection of `result` (boxes, scores, children's labels) and the image-level
    classifications on `image`; write it to `output` (format from the suffix)."""
    from PIL import Image, ImageDraw

    with Image.open(image) as opened:
        canvas = opened.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(min(canvas.size) / 200))
    lines = []
    for name, value in result.outputs.items():
        if isinstance(value, Classification):
            lines.append(f"{name}: {value.top[0].label} {100 * value.top[0].probability:.0f}%")
    stack = [value for value in result.outputs.values() if isinstance(value, list)]
    while stack:
        for detection in stack.pop():
            box = [round(v) for v in detection.box]
            draw.rectangle(box, outline=(255, 64, 0), width=width)
            text = label_text(detection.children) or f"{detection.name} {detection.score:.2f}"
            left, top, right, bottom = draw.textbbox((box[0], box[1]), text)
            y = max(0, box[1] - (bottom - top) - 2 * width)
            draw.rectangle((box[0], y, box[0] + right - left + 2 * width,
                            y + bottom - top + 2 * width), fill=(255, 64, 0))
            draw.text((box[0] + width, y + width - (top - box[1])), text, fill=(255, 255, 255))
            stack += [v for v in detection.children.values() if isinstance(v, list)]
    for index, line in enumerate(lines):
        draw.text((4, 4 + 12 * index), line, fill=(255, 255, 0))
    canvas.save(output)
