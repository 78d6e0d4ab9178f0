"""Packages split into the cache, safely: a split cut short leaves no half package behind.

    package = cached_package(cache_dir() / "onnx" / "age-1a2b3c", lambda folder:
                             split_onnx("age.onnx", folder))

A split writes the weight files, then the manifest (atomically, last), so a folder with its
manifest is whole. One cut short (the process killed, the power lost, out of memory: all
ordinary on a small device) used to leave the weight files without a manifest where the next
start looks, and `write_package` refuses such a folder: the model failed to build until someone
emptied the cache by hand. Here the split goes into a fresh sibling folder, renamed into place
once whole; two processes splitting the same model each write their own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecaffe.model.package.manifest import MANIFEST
from edgecaffe.model.package.package import ModelPackage, open_package

PARTIAL = ".partial-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale(target: Path) -> None:
    """Partial folders of `target` whose process has ended (killed mid-split)."""
    prefix = f".{target.name}{PARTIAL}"
    for folder in target.parent.glob(f"{prefix}*"):
        pid = folder.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def cached_package(target: Path, build: Callable[[Path], Any]) -> ModelPackage:
    """The package at `target` if it is whole (has its manifest), else `build(folder)` writes
    one into a fresh folder beside `target` (named `.NAME.partial-PID-...`), which is then
    renamed to `target`. A folder at `target` without a manifest (a split cut short by an
    older version) is replaced; partial folders of ended processes are removed. Raises what
    `build` raises (its partial folder removed) and `PackageError` from opening."""
    target = Path(target)
    if (target / MANIFEST).is_file():
        return open_package(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL}{os.getpid()}-",
                                    dir=target.parent))
    try:
        build(partial)
        if target.exists() and not (target / MANIFEST).is_file():
            shutil.rmtree(target)
        try:
            partial.rename(target)
        except OSError:
            if not (target / MANIFEST).is_file():  # not another process's whole package
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return open_package(target)
