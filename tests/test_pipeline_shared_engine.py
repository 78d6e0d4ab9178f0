"""`PipelineRunner` on an engine it is given (the HTTP service's): the stages run under the
names `prefix + key` beside the engine's other networks, the results are those of a runner with
an engine of its own, and closing the runner leaves the engine open."""

from __future__ import annotations

import numpy as np
import pytest

from edgecaffe.engine import Engine
from edgecaffe.errors import ConfigError
from edgecaffe.pipeline import PipelineRunner, Stage
from edgecaffe.pipeline.networks import pipeline_packages
from edgecaffe.pipeline.spec import Pipeline


def test_a_runner_on_a_shared_engine_gives_its_own_engines_results(zoo_packages):
    folder = zoo_packages(["TinyAlex", "TinyResidual"])
    pipeline = Pipeline("two", (Stage("alex", str(folder / "TinyAlex")),
                                Stage("res", str(folder / "TinyResidual"))), "test")
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    with PipelineRunner(pipeline, budget="64M") as own:
        expected = own.run(image).to_dict(probabilities=True)
    packages = pipeline_packages(pipeline)
    networks = {"TinyAlex": folder / "TinyAlex",
                **{f"two/{key}": package for key, package in packages.items()}}
    with Engine(networks, budget="64M") as engine:
        runner = PipelineRunner(pipeline, engine=engine, packages=packages, prefix="two/")
        result = runner.run(image)
        assert {k: v for k, v in result.to_dict(probabilities=True).items()
                if k not in ("request_ids", "response_ms")} == \
            {k: v for k, v in expected.items() if k not in ("request_ids", "response_ms")}
        assert sorted(engine.trace.requests[i].networks[0] for i in result.request_ids) == \
            ["two/alex", "two/res"]
        runner.close()
        assert engine.submit(image, ["TinyAlex"]).result(timeout=60)  # still open
        with pytest.raises(ConfigError, match="budget given with an engine"):
            PipelineRunner(pipeline, engine=engine, packages=packages, budget="64M")
    assert engine.budget.used_bytes == 0
