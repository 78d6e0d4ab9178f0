"""Context-aware pipelines: networks gated on other networks' detections (faces, then age and
gender per face). See docs/pipelines.md.

    from edgecaffe.pipeline import PipelineRunner, get_pipeline
    with PipelineRunner(get_pipeline("faces"), budget="512M") as runner:
        result = runner.run("photo.jpg")
"""

from edgecaffe.pipeline.builtin import BUILTIN, get_pipeline
from edgecaffe.pipeline.load import load_pipeline, pipeline_from_dict
from edgecaffe.pipeline.networks import gated_networks, stage_packages
from edgecaffe.pipeline.result import Classification, Detection, Label, PipelineResult
from edgecaffe.pipeline.runner import PipelineRunner, submit_stage
from edgecaffe.pipeline.spec import Condition, Crop, Pipeline, PipelineError, Preprocess, Stage

__all__ = [
    "BUILTIN", "Classification", "Condition", "Crop", "Detection", "Label", "Pipeline",
    "PipelineError", "PipelineResult", "PipelineRunner", "Preprocess", "Stage",
    "gated_networks", "get_pipeline", "load_pipeline", "pipeline_from_dict", "stage_packages",
    "submit_stage",
]
