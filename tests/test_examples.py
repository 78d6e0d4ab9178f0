"""Every script in examples/ runs as a newcomer would run it, and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECT = {
    "forward.py": ["fc7 features: (1, 512)"],
    "layer_by_layer.py": ["fc6: {'weight': (512, 18816), 'bias': (512,)}"],
    "network_stats.py": ["conv1", "mean execution", "peak RSS"],
    "engine.py": ["request 2:", "peak of the memory ledger"],
    "experiment.py": ["masa  mean response", "bulk  mean response"],
    "onnx_models.py": ["exported: ['GenderNet.onnx', 'GenderNet.onnx.yaml']", "re-imported:",
                       "GenderNet: "],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(EXPECT))
def test_example_runs(tmp_path, script):
    env = {**os.environ, "EDGECAFFE_CACHE": str(tmp_path.parent / "example-cache")}
    result = subprocess.run([sys.executable, str(EXAMPLES / script), str(tmp_path / "out")]
                            if script in ("layer_by_layer.py", "experiment.py", "onnx_models.py")
                            else [sys.executable, str(EXAMPLES / script)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for text in EXPECT[script]:
        assert text in result.stdout, result.stdout


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECT)
