"""Helpers shared by tests: real files that packages on PyPI ship, comparison with tolerances."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def package_dir(name: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def real_photo() -> Path:
    """A real photograph (Grace Hopper's portrait) from matplotlib's sample data."""
    folder = package_dir("matplotlib")
    assert folder is not None, "matplotlib (a test dependency) is not installed"
    return folder / "mpl-data" / "sample_data" / "grace_hopper.jpg"


def assert_close(ours: np.ndarray, reference: np.ndarray, what: str, rel: float = 1e-4) -> float:
    """Max abs difference <= rel * the reference's scale (its max abs value, at least 1)."""
    assert ours.shape == reference.shape, f"{what}: shape {ours.shape} vs {reference.shape}"
    scale = max(1.0, float(np.abs(reference).max()))
    diff = float(np.abs(ours.astype(np.float64) - reference).max())
    assert diff <= rel * scale, f"{what}: max abs diff {diff:.3g} > {rel} x scale {scale:.3g}"
    return diff
