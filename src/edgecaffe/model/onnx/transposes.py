"""Folding away the transposes of NHWC graphs (TensorFlow exports put a Transpose before and
after every convolution).

Each Transpose is sunk past the layers that read it, when they work the same in either layout
(elementwise activations, arithmetic with a constant, whose constant is permuted; Pad and Reduce,
whose pads and axes are remapped; arithmetic of two blobs transposed alike), until it meets a
Transpose that undoes it and both vanish. The pass is kept only when it leaves fewer Transpose
layers than it found.
"""

from __future__ import annotations

import copy

import numpy as np

from edgecaffe.model.network import Layer

#: Operators that act elementwise with no axis attributes.
ELEMENTWISE = {"ReLU", "Sigmoid", "TanH", "AbsVal", "BNLL", "ELU", "Power", "Exp", "Clip",
               "HardSigmoid", "HardSwish", "Identity", "Dropout"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}


class _Graph:
    def __init__(self, layers, weights, shapes, protected):
        self.layers: list[Layer] = layers
        self.weights = weights
        self.shapes = shapes
        self.protected = protected
        self.count = 0

    def producer(self, blob):
        return next((layer for layer in self.layers if blob in layer.outputs), None)

    def readers(self, blob):
        return [layer for layer in self.layers if blob in layer.inputs]

    def fresh(self, base):
        self.count += 1
        return f"{base}@nchw{self.count}"

    def transpose_after(self, layer: Layer, perm: list[int]) -> None:
        """`layer` now computes in the source layout: its output gets a Transpose back."""
        out = layer.outputs[0]
        inner = self.fresh(out)
        layer.outputs[0] = inner
        shape = self.shapes[out]
        inverse = list(np.argsort(perm))
        self.shapes[inner] = tuple(shape[i] for i in inverse)
        index = self.layers.index(layer)
        if perm == sorted(perm):
            node = Layer(f"{layer.name}/same", "Identity", [inner], [out], {})
        else:
            node = Layer(f"{layer.name}/transpose", "Transpose", [inner], [out],
                         {"perm": [int(p) for p in perm]})
        self.layers.insert(index + 1, node)


def _absorb(graph: _Graph, reader: Layer, transpose: Layer) -> bool:
    """Make `reader` read the transpose's input instead; False if it cannot."""
    source, through = transpose.inputs[0], transpose.outputs[0]
    perm = list(transpose.attrs.get("perm") or range(len(graph.shapes[through]))[::-1])
    rank = len(perm)
    inverse = [int(i) for i in np.argsort(perm)]
    if len(reader.outputs) != 1:
        return False
    op = reader.op
    if op == "Transpose":
        inner = list(reader.attrs.get("perm") or range(rank)[::-1])
        combined = [perm[i] for i in inner]
        reader.inputs = [source]
        if combined == list(range(rank)):
            reader.op, reader.attrs = "Identity", {}
        else:
            reader.attrs = {"perm": combined}
        return True
    if op in ELEMENTWISE or (op in BINARY and reader.attrs.get("constant")):
        if op in BINARY:
            key = reader.attrs["constant"]
            value = graph.weights[reader.name][key]
            if value.ndim > rank or np.broadcast_shapes(value.shape, graph.shapes[through]) \
                    != graph.shapes[through]:
                return False
            full = value.reshape((1,) * (rank - value.ndim) + value.shape)
            moved = np.ascontiguousarray(full.transpose(inverse))
            graph.weights[reader.name][key] = moved
            reader.attrs["constant_shape"] = list(moved.shape)
        reader.inputs = [source]
        graph.transpose_after(reader, perm)
        return True
    if op in BINARY:
        others = [graph.producer(b) for b in reader.inputs]
        if not all(p is not None and p.op == "Transpose" and
                   list(p.attrs.get("perm") or []) == perm for p in others):
            return False
        if any(graph.shapes[b] != graph.shapes[reader.outputs[0]] for b in reader.inputs):
            return False
        reader.inputs = [p.inputs[0] for p in others]
        graph.transpose_after(reader, perm)
        return True
    if op == "Pad":
        pads = list(reader.attrs["pads"])
        begin, end = [0] * rank, [0] * rank
        for i in range(rank):
            begin[perm[i]], end[perm[i]] = pads[i], pads[rank + i]
        reader.attrs = {**reader.attrs, "pads": begin + end}
        reader.inputs = [source]
        graph.transpose_after(reader, perm)
        return True
    if op == "Reduce" and reader.attrs.get("axes") is not None:
        axes = [a % rank for a in reader.attrs["axes"]]
        reader.attrs = {**reader.attrs, "axes": sorted(perm[a] for a in axes)}
        reader.inputs = [source]
        if reader.attrs.get("keepdims", True):
            graph.transpose_after(reader, perm)
        else:
            kept = [perm[i] for i in range(rank) if i not in axes]
            graph.transpose_after(reader, [sorted(kept).index(k) for k in kept])
        return True
    return False


def fold_transposes(layers: list[Layer], weights: dict, shapes: dict,
                    protected: set[str]) -> tuple[list[Layer], dict, int]:
    """Sink and cancel Transpose layers; returns (layers, weights, transposes removed), or the
    originals with 0 when the pass does not reduce their number. `protected`: blobs whose
    names must keep their values (graph outputs)."""
    before = sum(layer.op == "Transpose" for layer in layers)
    if not before:
        return layers, weights, 0
    # Weights are replaced, never written into: copying the dicts is enough.
    graph = _Graph(copy.deepcopy(layers), {k: dict(v) for k, v in weights.items()},
                   dict(shapes), protected)
    for _ in range(4 * len(layers)):
        moved = False
        for transpose in [layer for layer in graph.layers if layer.op == "Transpose"]:
            out = transpose.outputs[0]
            readers = graph.readers(out)
            if out in protected or not readers:
                continue
            if all(_can_absorb(graph, reader, transpose) for reader in readers):
                for reader in readers:
                    _absorb(graph, reader, transpose)
                graph.layers.remove(transpose)
                moved = True
        for layer in [l for l in graph.layers if l.op == "Transpose"]:
            if layer.outputs[0] not in protected and not graph.readers(layer.outputs[0]):
                graph.layers.remove(layer)
                moved = True
        if not moved:
            break
    # Transpose pairs that cancelled left Identity layers: readers read the source directly.
    for layer in [l for l in graph.layers if l.op == "Identity"]:
        out = layer.outputs[0]
        if out in protected:
            continue
        for reader in graph.readers(out):
            reader.inputs = [layer.inputs[0] if b == out else b for b in reader.inputs]
        graph.layers.remove(layer)
    after = sum(layer.op == "Transpose" for layer in graph.layers)
    if after >= before:
        return layers, weights, 0
    return graph.layers, graph.weights, before - after


def _can_absorb(graph: _Graph, reader: Layer, transpose: Layer) -> bool:
    """Dry run of `_absorb` on copies."""
    trial = _Graph(graph.layers, {reader.name: dict(graph.weights.get(reader.name, {}))},
                   dict(graph.shapes), graph.protected)
    clone = copy.deepcopy(reader)
    trial.layers = [clone if layer is reader else layer for layer in graph.layers]
    return _absorb(trial, clone, transpose)
