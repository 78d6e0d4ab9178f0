"""The model repository: one folder whose entries become the models the service offers.

    repository = scan("models/")            # what is there, nothing read yet
    repository.build(progress=print)        # each model built once: split or opened
    repository.packages                     # name -> ModelPackage, for the engine

An entry is found by a *kind*: a matcher (does this path belong to me, and under which name?)
and a builder (path -> `ModelPackage`). The kinds today:

* `package`: a folder with `manifest.yaml` (`edgecaffe split` output), opened as is;
* `original`: one of the original EdgeCaffe's folders (`description.yaml` + prototxt +
  caffemodel), split into the cache;
* `caffe`: `NAME.prototxt` with `NAME.caffemodel` beside it, split into the cache;
* `onnx`: `NAME.onnx` (labels and preprocessing from `NAME.onnx.yaml`), split into the cache;
* `pipeline`: `NAME.yaml` declaring a pipeline (docs/pipelines.md), or naming a built-in one
  (`builtin: faces`); its stages' packages are built (split into the cache) at every batch
  size the stage submits.

Names are the folder's or the file's stem; two entries of one name are an error for the
second. An entry that fails to build is kept with its error (listed, not served, and a note);
the others go on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecaffe.errors import ConfigError

if TYPE_CHECKING:
    from edgecaffe.model.package import ModelPackage
    from edgecaffe.pipeline import Pipeline

log = logging.getLogger("edgecaffe.serve")

#: Side files and notes that are not models (an ONNX model's `NAME.onnx.yaml`, ...).
_SIDE_SUFFIXES = (".onnx.yaml", ".onnx.yml")


@dataclass
class ServedPipeline:
    """A pipeline entry once built: the pipeline and its stages' packages by
    `pipeline.networks.package_key` (`age`, `age@2`, ...)."""

    pipeline: Pipeline
    packages: dict[str, ModelPackage]


@dataclass
class Entry:
    """One model or pipeline of the repository: where it comes from, and once built, its
    package or pipeline (or the reason it could not be built)."""

    name: str
    kind: str
    path: Path
    package: ModelPackage | None = None
    pipeline: ServedPipeline | None = None
    error: str | None = None
    build_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.package is not None or self.pipeline is not None


def _cache_folder(kind: str, *files: Path) -> Path:
    """A cache folder for a model split from `files`, keyed by their paths, sizes and times:
    a changed file is split again, an unchanged one is opened as it is."""
    from edgecaffe.model.zoo import cache_dir

    key = "|".join(f"{f.resolve()}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return cache_dir() / "serve" / kind / f"{files[0].stem}-{digest}"


def _split_cached(kind: str, sources: list[Path], key_files: list[Path]) -> ModelPackage:
    from edgecaffe.model.package import split
    from edgecaffe.model.package.cached import cached_package

    return cached_package(_cache_folder(kind, *key_files),
                          lambda folder: split([str(s) for s in sources], folder))


def _build_package(path: Path) -> ModelPackage:
    from edgecaffe.model.package import open_package

    return open_package(path)


def _build_original(path: Path) -> ModelPackage:
    files = sorted(p for p in path.iterdir() if p.is_file())
    return _split_cached("original", [path], files)


def _build_caffe(path: Path) -> ModelPackage:
    caffemodel = path.with_suffix(".caffemodel")
    return _split_cached("caffe", [path, caffemodel], [path, caffemodel])


def _build_onnx(path: Path) -> ModelPackage:
    from edgecaffe.model.package import onnx_package

    return onnx_package(path)


def _read_pipeline(path: Path) -> Pipeline:
    """The pipeline a YAML file declares, or the built-in one it names (`builtin: faces`).
    Raises PipelineError naming the file."""
    from edgecaffe.pipeline import PipelineError, get_pipeline, load_pipeline
    from edgecaffe.pipeline.builtin import BUILTIN
    from edgecaffe.yamlfile import read_yaml

    data = read_yaml(path, PipelineError)
    if isinstance(data, dict) and "builtin" in data:
        name = data["builtin"]
        if set(data) != {"builtin"} or not isinstance(name, str) or name not in BUILTIN:
            raise PipelineError(f"{path}: builtin: expected one of {', '.join(BUILTIN)} "
                                "and no other key, got " + repr(data)[:80])
        return get_pipeline(name)  # its stages' models are looked up when built
    return load_pipeline(path)


def _build_pipeline(path: Path, progress: Callable[[str], None] | None = None
                    ) -> ServedPipeline:
    """The pipeline and every stage's packages, one progress line per package (as
    `pipeline.networks.pipeline_packages`, which builds them without one)."""
    from edgecaffe.pipeline import PipelineError
    from edgecaffe.pipeline.networks import batch_sizes, package_key, stage_package

    pipeline = _read_pipeline(path)
    packages = {}
    for stage in pipeline.stages:
        for batch in batch_sizes(stage):
            key = package_key(stage, batch)
            if progress:
                progress(f"    stage {key}: {stage.network}")
            try:
                packages[key] = stage_package(stage, batch)
            except PipelineError as error:
                raise PipelineError(f"{path}: {error}") from None
            except (ValueError, OSError) as error:
                raise PipelineError(f"{path}: stage {stage.name!r}: network "
                                    f"{stage.network!r} at batch {batch}: {error}") from None
    return ServedPipeline(pipeline, packages)


def _is_pipeline(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith((".yaml", ".yml")) \
        and not name.endswith(_SIDE_SUFFIXES)


def _is_original(path: Path) -> bool:
    from edgecaffe.model.package.original import is_original_folder

    return path.is_dir() and not (path / "manifest.yaml").is_file() and is_original_folder(path)


@dataclass(frozen=True)
class Kind:
    """A kind of repository entry: `match(path)` says whether a path is one (its name is the
    path's stem), `build(path)` makes the package (a pipeline's: `build(path, progress)`
    makes a `ServedPipeline`)."""

    name: str
    match: Callable[[Path], bool]
    build: Callable[..., Any]


KINDS: list[Kind] = [
    Kind("package", lambda p: p.is_dir() and (p / "manifest.yaml").is_file(), _build_package),
    Kind("original", _is_original, _build_original),
    Kind("caffe", lambda p: p.suffix == ".prototxt" and p.with_suffix(".caffemodel").is_file(),
         _build_caffe),
    Kind("onnx", lambda p: p.is_file() and p.suffix.lower() == ".onnx", _build_onnx),
    Kind("pipeline", _is_pipeline, _build_pipeline),
]


def _skip_reason(path: Path) -> str | None:
    """Why a path that no kind matched is left out (None: say nothing, e.g. a side file)."""
    name = path.name.lower()
    if name.startswith(".") or name.endswith(_SIDE_SUFFIXES) or path.suffix == ".caffemodel":
        return None
    if path.suffix == ".prototxt":
        return f"no {path.with_suffix('.caffemodel').name} beside it; skipped"
    return "not a model package, Caffe pair, original folder, .onnx or pipeline file; skipped"


class Repository:
    """The entries of one repository folder, in name order; `build` makes their packages."""

    def __init__(self, folder: Path, entries: list[Entry], notes: list[str]) -> None:
        self.folder = folder
        self.entries = {entry.name: entry for entry in entries}
        #: What was skipped and why, one line each (also logged).
        self.notes = notes

    @property
    def packages(self) -> dict[str, ModelPackage]:
        """Name -> package of every model that built."""
        return {name: e.package for name, e in self.entries.items() if e.package is not None}

    @property
    def pipelines(self) -> dict[str, ServedPipeline]:
        """Name -> pipeline of every pipeline that built."""
        return {name: e.pipeline for name, e in self.entries.items() if e.pipeline is not None}

    def build(self, progress: Callable[[str], None] | None = None,
              stop: Callable[[], bool] | None = None) -> None:
        """Build every entry once (split into the cache on first use, else open), reporting
        each one through `progress`; an entry that fails keeps its error. `stop()` true ends
        the build early (a shutdown during start)."""
        total = len(self.entries)
        for index, entry in enumerate(self.entries.values(), 1):
            if stop is not None and stop():
                entry.error = "not built: the service is stopping"
                continue
            if progress:
                progress(f"building {index}/{total}: {entry.name} ({entry.kind}, {entry.path})")
            started = time.perf_counter()
            try:
                build = next(k for k in KINDS if k.name == entry.kind).build
                if entry.kind == "pipeline":
                    entry.pipeline = build(entry.path, progress)
                else:
                    entry.package = build(entry.path)
            except Exception as error:  # a bad model: listed with its reason, others go on
                entry.error = f"{type(error).__name__}: {error}".splitlines()[0]
                self.notes.append(f"{entry.path.name}: not served: {entry.error}")
                log.error("%s %s (%s) failed to build: %s", entry.kind, entry.name,
                          entry.path, entry.error)
            entry.build_s = time.perf_counter() - started
            if progress:
                state = "ready" if entry.ready else f"FAILED: {entry.error}"
                progress(f"  {entry.name}: {state} ({entry.build_s:.1f} s)")


def scan(folder: str | Path) -> Repository:
    """The entries of a repository folder (nothing is read beyond names and headers).

    Raises `ConfigError` when the folder does not exist or holds no model at all."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: the model repository must be a folder")
    entries: dict[str, Entry] = {}
    notes: list[str] = []
    for path in sorted(root.iterdir()):
        kind = next((k for k in KINDS if k.match(path)), None)
        if kind is None:
            reason = _skip_reason(path)
            if reason:
                notes.append(f"{path.name}: {reason}")
            continue
        name = path.stem if path.is_file() else path.name
        if name in entries:
            notes.append(f"{path.name}: another entry is already named {name!r} "
                         f"({entries[name].path.name}); skipped")
            continue
        entries[name] = Entry(name, kind.name, path)
    for note in notes:
        log.warning("repository %s: %s", root, note)
    if not entries:
        raise ConfigError(f"{root}: no models found (model package folders, original "
                          "EdgeCaffe folders, PROTOTXT + CAFFEMODEL pairs, .onnx files, "
                          "pipeline .yaml files)"
                          + (f"; {'; '.join(notes)}" if notes else ""))
    return Repository(root, list(entries.values()), notes)
