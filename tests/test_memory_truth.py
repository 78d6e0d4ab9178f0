"""The ledger counts what the process really holds: kernel workspaces (measured with
tracemalloc, numpy's allocations), the runtime's own footprint, freed memory given back."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgecaffe.measure import rss_bytes
from edgecaffe.model.info import network_info
from edgecaffe.model.network import Layer, Network
from edgecaffe.ops import get_op


def _conv(shape, out, kernel, stride, pad):
    attrs = {"out_channels": out, "kernel": [kernel, kernel], "stride": [stride] * 2,
             "pad": [pad] * 2, "dilation": [1, 1], "group": 1, "bias": True}
    op = get_op("Conv")
    outputs = op.output_shapes([shape], attrs)
    return op, attrs, outputs


@pytest.mark.parametrize("case", [((1, 3, 224, 224), 64, 3, 1, 1),    # VGG conv1_1
                                  ((1, 3, 227, 227), 96, 11, 4, 0),   # AlexNet conv1
                                  ((2, 64, 56, 56), 128, 3, 2, 1),
                                  ((1, 256, 28, 28), 64, 1, 1, 0)])   # pointwise: none
def test_conv_workspace_is_what_the_kernel_allocates(case):
    """tracemalloc sees numpy's buffers: the peak above the output is the workspace (within
    a few small temporaries), and never above the declared figure by more than 5%."""
    shape, out, kernel, stride, pad = case
    op, attrs, outputs = _conv(shape, out, kernel, stride, pad)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    weights = {"weight": rng.standard_normal((out, shape[1], kernel, kernel)).astype(np.float32),
               "bias": np.zeros(out, np.float32)}
    declared = op.workspace_bytes([shape], outputs, attrs)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        (y,) = op.run([x], weights, attrs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    used = peak - y.nbytes
    assert used <= declared * 1.05 + 64 * 1024
    assert used >= declared * 0.9
    if kernel == 1:
        assert declared == 0


def test_engine_accounts_its_runtime_and_workspaces(zoo_packages):
    """Under a real limit the ledger's capacity is the limit less the runtime (measured) and
    one largest exec workspace per worker (at most one exec per worker runs at a time)."""
    from edgecaffe.engine import Engine
    from edgecaffe.sched import BudgetError

    folder = zoo_packages(["TinyAlex"])
    with Engine(folder, budget="2G", workers=2, account_runtime=True) as engine:
        runtime, workspace = engine.runtime_bytes, engine.workspace_bytes
        largest = engine.infos["TinyAlex"].max_workspace_bytes
        assert largest > 0 and workspace == 2 * largest
        assert 0 < runtime <= rss_bytes() * 1.5
        assert engine.budget.capacity_bytes == 2 * 2**30 - runtime - workspace
        assert engine.trace.info["runtime_bytes"] == runtime
        assert engine.trace.info["limit_bytes"] == 2 * 2**30
    with pytest.raises(BudgetError, match="nothing is left"):
        Engine(folder, budget="1M", account_runtime=True)
    with Engine(folder, budget="2G") as engine:
        assert engine.runtime_bytes is None and engine.budget.capacity_bytes == 2 * 2**30


def test_network_info_knows_each_exec_workspace():
    layers = [Layer("data", "Input", [], ["data"], {"shape": [1, 3, 64, 64]}),
              Layer("conv", "Conv", ["data"], ["conv"],
                    {"out_channels": 8, "kernel": [3, 3], "stride": [1, 1], "pad": [1, 1],
                     "dilation": [1, 1], "group": 1, "bias": False})]
    network = Network("n", layers)
    info = network_info(network)
    op = get_op("Conv")
    expected = op.workspace_bytes([(1, 3, 64, 64)], [network.blob_shapes["conv"]],
                                  layers[1].attrs)
    assert info.layer("conv").workspace_bytes == expected > 0
    assert info.max_workspace_bytes == expected
    assert info.peak_bytes == info.weight_bytes + info.peak_activation_bytes + expected


_FREED = """
import numpy as np
from edgecaffe.measure import return_freed_memory, rss_bytes
assert return_freed_memory()
first = np.ones(40 << 18, np.float32)  # 40 MiB, freed: glibc would raise its threshold
del first
arrays = [np.ones(3 << 18, np.float32) for _ in range(8)]  # 24 MiB, touched: resident
loaded = rss_bytes()
del arrays
print(loaded - rss_bytes())
"""


def test_freed_arrays_go_back_to_the_system():
    """In a fresh process (the heap's history decides what glibc keeps: in this test process,
    after other tests, about half came back), after `return_freed_memory`, freeing 24 MiB of
    3 MiB arrays, below glibc's raised threshold once a larger block was freed, brings RSS
    back down."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _FREED], capture_output=True, text=True,
                          check=True, timeout=120)
    assert int(done.stdout) >= 20 << 20


_CHILD = """
import json, sys
from edgecaffe.model.package import open_package
package = open_package(sys.argv[1])
package.load_method = sys.argv[2]
usage = open(sys.argv[3])
def now():
    usage.seek(0)
    return int(usage.read())
before = now()
arrays = package.read("fc6", cold=True)
loaded = now()
del arrays
package.release("fc6")
print(json.dumps([before, loaded, now()]))
"""


@pytest.mark.parametrize("method", ["mmap", "read"])
def test_freeing_a_layer_returns_its_memory_to_the_cgroup(zoo_packages, method):
    """Inside a real memory cgroup: loading AgeNet's fc6 (38.5 MB) raises the cgroup's usage
    by about that much, once (not twice: page cache and a copy), and freeing it gives the
    memory back (the cgroup's figure, not the ledger's). Needs root."""
    import json
    import subprocess
    import sys

    from edgecaffe.experiment.limits import LimitError, MemoryCgroup

    try:
        cgroup = MemoryCgroup(1 << 30)
    except LimitError as error:
        pytest.skip(f"no memory cgroup here: {error}")
    folder = zoo_packages(["AgeNet"]) / "AgeNet"
    with cgroup:
        done = subprocess.run([sys.executable, "-c", _CHILD, str(folder), method,
                               str(cgroup.usage_path)], preexec_fn=cgroup.join,
                              capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    before, loaded, after = json.loads(done.stdout)
    layer = 38_537_216 - 2048 * 4  # fc6's weight file, roughly
    assert layer * 0.9 <= loaded - before <= layer * 1.3
    assert after - before <= 6 << 20
