"""BLAS threads that fit the schedule (`blas.BlasHold`, "adaptive"): the rule, the counts
OpenBLAS really gets as executions start and end (read back through threadpoolctl, in a fresh
interpreter), and the onnxruntime backend's intra-op threads following the same share. That
the simulator models the same rule is tested with the engine in test_parity.py."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from edgecaffe.blas import ADAPTIVE, check_blas_threads, shared_threads
from edgecaffe.engine import Engine


def test_the_rule_shares_the_cores_out_without_oversubscribing():
    assert shared_threads(2, 1) == 2  # a network running alone: every core
    assert shared_threads(2, 2) == 1  # two at once: one each
    assert shared_threads(2, 3) == 1  # never fewer than one
    assert shared_threads(4, 2) == 2
    assert shared_threads(3, 2) == 1  # one count per process: 1 and 1, not 2 and 1
    assert shared_threads(8, 0) == 8


def test_settings_are_checked():
    assert check_blas_threads(None) == ADAPTIVE
    assert check_blas_threads(3) == 3
    for bad in (0, -1, 1.5, True, "auto"):
        with pytest.raises(ValueError, match="blas_threads must be"):
            check_blas_threads(bad)


HOLD_SCRIPT = """
import numpy  # noqa: F401 (loads OpenBLAS)
from threadpoolctl import threadpool_info
from edgecaffe.blas import BlasHold

def counts():
    return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

before = counts()
seen = []
hold = BlasHold("adaptive", cores=4)
hold.enter()
seen.append(counts())                  # held, nothing running: all cores
seen.append(BlasHold.exec_begin())     # one execution: 4
seen.append(BlasHold.exec_begin())     # two: 2 each
seen.append(counts())
seen.append(BlasHold.exec_begin())     # three: 1 each
seen.append(counts())
BlasHold.exec_end()
seen.append(counts())                  # two again
BlasHold.exec_end()
seen.append((counts(), BlasHold.current_threads()))  # one: all four
BlasHold.exec_end()
hold.leave()
seen.append(counts())
fixed = BlasHold(3, cores=4)
fixed.enter()
seen.append((BlasHold.exec_begin(), BlasHold.exec_begin(), counts()))
BlasHold.exec_end(); BlasHold.exec_end()
fixed.leave()
print(repr((before, seen, counts())))
"""


def test_openblas_gets_the_share_as_executions_start_and_end():
    """In a fresh interpreter: other tests change the process's count."""
    run = subprocess.run([sys.executable, "-c", HOLD_SCRIPT], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    before, seen, after = ast.literal_eval(run.stdout.strip().splitlines()[-1])
    assert seen == [{4}, 4, 2, {2}, 1, {1}, {2}, ({4}, 4), before, (3, 3, {3})]
    assert after == before  # the process's own count once no engine holds


def test_the_onnxruntime_backend_follows_the_share(zoo_packages):
    """A network running alone (one worker) gets every core as intra-op threads, whatever
    the process's BLAS count; a fixed setting gives that count."""
    pytest.importorskip("onnxruntime")
    from edgecaffe.ops import fast

    packages = zoo_packages(["TinyAlex"])
    for setting, cores, expected in ((ADAPTIVE, 3, 3), (1, 3, 1)):
        fast.SESSIONS.clear()
        with Engine(packages, mode="linear", budget="64M", workers=1, blas_threads=setting,
                    cores=cores, backend="onnxruntime") as engine:
            engine.submit(_image(), ["TinyAlex"]).result(timeout=60)
        threads = {key[-1] for key in fast.SESSIONS._sessions}
        assert threads == {expected}, (setting, threads)


def _image():
    import numpy as np

    return np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
