"""Seeded synthetic weights, for running real architectures without their trained weights.

Deterministic per (seed, layer name), so any one layer can be regenerated on its own and a large
model is produced one layer at a time. Scales follow He initialisation (std = sqrt(2 / fan_in)),
so activations neither vanish nor explode through deep ReLU networks.
"""

from __future__ import annotations

import zlib
from math import prod, sqrt

import numpy as np

from edgecaffe.model.network import Layer


def layer_rng(seed: int, layer_name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(layer_name.encode("utf-8"))])


def _fan_in(layer: Layer, shape: tuple[int, ...]) -> int:
    if layer.op == "Dense" and layer.attrs.get("transpose"):
        return shape[0]
    return prod(shape[1:]) if len(shape) > 1 else shape[0]


def synthesize_weights(layer: Layer, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights of the shapes `layer.params` names, drawn from a seeded generator."""
    rng = layer_rng(seed, layer.name)
    weights: dict[str, np.ndarray] = {}
    for name, shape in layer.params.items():
        if name == "weight":
            std = sqrt(2.0 / max(1, _fan_in(layer, shape)))
            array = rng.standard_normal(shape, dtype=np.float32)
            array *= np.float32(std)
        elif name == "var":
            array = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif name == "scale":
            array = rng.uniform(0.8, 1.2, shape).astype(np.float32)
        elif name == "slope":
            array = rng.uniform(0.05, 0.3, shape).astype(np.float32)
        else:  # bias, mean and anything else additive
            array = (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05))
        weights[name] = np.asarray(array, dtype=np.float32)
    return weights
