"""Network names in configs -> model packages: a package folder, an original network folder
(split into the cache on first use), or a zoo name."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edgecaffe.experiment.config import ConfigError, ExperimentConfig
from edgecaffe.model.package import ModelPackage, onnx_package, open_package, split
from edgecaffe.model.package.cached import cached_package
from edgecaffe.model.package.manifest import MANIFEST
from edgecaffe.model.package.original import is_original_folder
from edgecaffe.model.zoo import ZOO, cache_dir, zoo_package


def resolve_network(name: str, config: ExperimentConfig) -> ModelPackage:
    if config.pipeline is not None:  # the pipeline's stages, by name
        from edgecaffe.pipeline import stage_packages

        packages = stage_packages(config.pipeline)
        if name in packages:  # profiled as zoo packages are, for Masa's order and --simulate
            from edgecaffe.model.package.profile import profile_package, stale_reasons

            if stale_reasons(packages[name].manifest, doubts=False):
                profile_package(packages[name], runs=3)
            return packages[name]
    path = Path(config.network_path) / name
    if (path / MANIFEST).is_file():
        return open_package(path)
    for onnx in (path, path.with_name(path.name + ".onnx")):
        if onnx.suffix.lower() == ".onnx" and onnx.is_file():
            return onnx_package(onnx)
    if is_original_folder(path):
        image_size = _use_scales_image_size(name, path, config)
        description = (path / "description.yaml").read_bytes()
        key = hashlib.sha1(str(path.resolve()).encode() + description
                           + str(image_size).encode()).hexdigest()[:12]
        target = cache_dir() / "original" / f"{path.name}-{key}"
        return cached_package(target, lambda folder: split(
            [path], folder, synthetic=config.synthetic, seed=config.seed,
            image_size=image_size))
    if name.lower() in {zoo.lower() for zoo in ZOO}:
        return zoo_package(name, profile_runs=3)
    if path.suffix.lower() in {".prototxt", ".caffemodel"}:
        raise ConfigError(f"{config.source}: network {name!r}: a Caffe file; experiments run "
                          "packages (their layers profiled): make one with `edgecaffe split "
                          "NET.prototxt NET.caffemodel -o pkg/NET` and give pkg/NET")
    raise ConfigError(f"{config.source}: network {name!r} is neither a package folder, an "
                      f"original network folder nor an .onnx file under "
                      f"{config.network_path!r}, nor a zoo name "
                      f"({', '.join(n for n, m in ZOO.items() if not m.tiny)})")


def _use_scales_image_size(name: str, path: Path, config: ExperimentConfig
                           ) -> tuple[int, int] | None:
    """For an original folder with `use-scales: true`: the size of the image its arrivals
    carry (the original enlarges that image 5x and reshapes the net to it); None otherwise."""
    from edgecaffe.model.package.original import read_original
    from edgecaffe.model.preprocess import load_image, sample_image

    if not read_original(path).use_scales:
        return None
    images = {a.data for a in config.arrivals or [] if name in a.networks} or {None}
    sizes = {tuple((load_image(p) if p else sample_image()).shape[:2]) for p in images}
    if len(sizes) > 1:
        raise ConfigError(f"{config.source}: network {name!r} has use-scales: true but its "
                          f"arrivals carry images of {len(sizes)} sizes {sorted(sizes)}; one "
                          "size per network is supported (its package is shaped for it)")
    return sizes.pop()


def resolve_networks(names: list[str], config: ExperimentConfig) -> dict[str, ModelPackage]:
    return {name: resolve_network(name, config) for name in dict.fromkeys(names)}


def resolve_infos(names: list[str], config: ExperimentConfig) -> dict[str, Any]:
    """What the simulator needs per network: a NetworkInfo (no weights read). Generated
    networks (`type: generated`) come from their description alone."""
    from edgecaffe.model.info import package_info
    from edgecaffe.sim import is_generated_folder, read_generated

    infos = {}
    for name in dict.fromkeys(names):
        path = Path(config.network_path) / name
        if is_generated_folder(path):
            info = read_generated(path)
        else:
            info = package_info(resolve_network(name, config))
        info.name = name
        infos[name] = info
    return infos
