"""A pipeline's stages as the engine's gated networks, for an engine whose context speculates
("aware-idle" or "oblivious", sched/requests.py).

With context "aware" (the default) the runner submits a gated stage's request only once its
parent's detections are read (runner.py). An engine that speculates can only load what it
knows of: so under those contexts a root detector stage goes in as one request that also names
its children as gated networks (`Engine.submit(gated=, condition=)`), and the engine loads
them speculatively (aware-idle: into budget nothing else asks for) while the detector runs.
When it ends, the engine calls the request's condition (`StageGates.condition`, under the
engine's lock): the detections are read, each child's condition decides, and the crops (one
network instance each, batch 1: the engine's gated networks take one input per instance, so
crops are not batched here) are the child's inputs; none, and the engine drops what it loaded.

Only a root stage's children without children of their own are gated this way (the engine's
gates are one level deep); deeper stages go in as in the aware runner, after their parent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgecaffe.pipeline.networks import package_key
from edgecaffe.pipeline.result import Detection
from edgecaffe.pipeline.spec import Pipeline, Stage


def gated_children(pipeline: Pipeline, stage: Stage) -> tuple[Stage, ...]:
    """The children of `stage` the engine may run as gated networks: a root detector's
    children that have no children of their own."""
    if stage.parent is not None or stage.output != "detector":
        return ()
    return tuple(child for child in pipeline.children(stage.name)
                 if not pipeline.children(child.name))


class StageGates:
    """One image's root detector request with its gated children: what the condition found,
    kept so that the result tree holds the same detections the children ran on.

    `read`: the detector's outputs -> its detections (the runner's reading, in pixels);
    `crops`: (child, chosen detections) -> the child's input batches, one per detection."""

    def __init__(self, stage: Stage, children: tuple[Stage, ...], prefix: str,
                 read: Callable[[dict[str, np.ndarray]], list[Detection]],
                 crops: Callable[[Stage, list[Detection]], list[np.ndarray]]) -> None:
        self.stage = stage
        self.by_network = {prefix + package_key(child, 1): child for child in children}
        self._read = read
        self._crops = crops
        #: The detector's detections, read once (by the first child's condition).
        self.detections: list[Detection] | None = None
        #: Per child stage: the detections it runs on, in its instances' order ([] skipped).
        self.chosen: dict[str, list[Detection]] = {}
        #: Child stages whose condition failed (`PipelineResult.skipped` counts these only,
        #: as the per-stage path does: no detection to run on is not a failed condition).
        self.failed: set[str] = set()

    def gated(self, parent_network: str) -> dict[str, str]:
        """`Engine.submit`'s `gated`: every child network on the detector's."""
        return dict.fromkeys(self.by_network, parent_network)

    def condition(self, network: str, outputs: dict[str, np.ndarray]) -> list[Any]:
        """The engine's condition: the child's inputs (one batch-1 array per detection its
        condition matched; none when it failed)."""
        child = self.by_network[network]
        if self.detections is None:
            self.detections = self._read(outputs)
        rule = child.condition
        if rule is not None and not rule.passes(self.detections):
            self.chosen[child.name] = []
            self.failed.add(child.name)
            return []
        chosen = self.detections if rule is None else rule.matching(self.detections)
        self.chosen[child.name] = list(chosen)
        return self._crops(child, list(chosen))
