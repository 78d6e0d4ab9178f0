"""Experiments: running configurations, writing results folders."""

from edgecaffe.experiment.results import summarize, write_run
from edgecaffe.experiment.runner import run_once

__all__ = ["run_once", "summarize", "write_run"]
