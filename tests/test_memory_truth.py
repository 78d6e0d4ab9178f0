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
from tests.helpers import assert_same_or_rounding, kernel_allocation_bytes


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
    used = kernel_allocation_bytes(op, [x], weights, attrs)
    assert used <= declared * 1.05 + 64 * 1024
    assert used >= declared * 0.9
    if kernel == 1:
        assert declared == 0


def test_engine_accounts_its_runtime_and_workspaces(zoo_packages):
    """Under a real limit the ledger's capacity is the limit less the runtime (measured); no
    workspace is set aside: each exec reserves its own while it runs and returns it at its
    end, so the ledger's workspace share follows the execs running."""
    from edgecaffe.engine import Engine
    from edgecaffe.sched import BudgetError

    folder = zoo_packages(["TinyAlex"])
    with Engine(folder, budget="2G", workers=2, account_runtime=True) as engine:
        runtime = engine.runtime_bytes
        assert 0 < runtime <= rss_bytes() * 1.5 and engine.workspace_bytes == 0
        assert engine.budget.capacity_bytes == 2 * 2**30 - runtime
        assert engine.trace.info["runtime_bytes"] == runtime
        assert engine.trace.info["limit_bytes"] == 2 * 2**30
        engine.submit(np.zeros((64, 64, 3), np.uint8), ["TinyAlex"]).result(timeout=60)
        info = engine.infos["TinyAlex"]
        events = engine.trace.ledger
    assert engine.budget.used_bytes == 0
    convs = [layer for layer in info.layers if layer.workspace_bytes]
    assert convs
    for layer in convs:  # reserved with the exec (outputs and workspace), returned at its end
        [start] = [e for e in events if e.reason == f"exec {layer.name} of TinyAlex"]
        [end] = [e for e in events if e.reason == f"end workspace of {layer.name}"]
        assert start.delta_bytes == layer.output_bytes + layer.workspace_bytes
        assert end.delta_bytes == -layer.workspace_bytes and end.time >= start.time
    with pytest.raises(BudgetError, match="nothing is left"):
        Engine(folder, budget="1M", account_runtime=True)
    with Engine(folder, budget="2G") as engine:
        assert engine.runtime_bytes is None and engine.budget.capacity_bytes == 2 * 2**30
        assert all(not e.reason.startswith("end workspace") for e in engine.trace.ledger)


def test_the_onnxruntime_backend_sets_aside_what_it_keeps(zoo_packages, monkeypatch):
    """onnxruntime keeps memory past the numpy kernels' growth (cached sessions, its own
    buffers: measured +31 MiB on large-3): under a real limit an engine on it takes that
    off the ledger's capacity too. The process's measured footprint is held fixed here: it
    moves by tens of MiB between engines in a long test session (CI saw +17 MiB once), and
    what this checks is the set-aside, not the measurement."""
    pytest.importorskip("onnxruntime")
    from edgecaffe import measure
    from edgecaffe.engine import Engine
    from edgecaffe.engine.limit import BACKEND_GROWTH_BYTES, runtime_growth_bytes

    held_bytes = 100 << 20
    monkeypatch.setattr(measure, "own_cgroup_usage_bytes", lambda: held_bytes)
    folder = zoo_packages(["TinyAlex"])
    runtimes = {}
    for backend in ("numpy", "onnxruntime"):
        with Engine(folder, budget="1G", account_runtime=True, backend=backend) as engine:
            runtimes[backend] = engine.runtime_bytes
            assert engine.budget.capacity_bytes == 2**30 - engine.runtime_bytes
    assert runtimes["numpy"] == held_bytes + runtime_growth_bytes(2**30)
    assert runtimes["onnxruntime"] - runtimes["numpy"] == BACKEND_GROWTH_BYTES["onnxruntime"] > 0


def test_a_small_limit_makes_the_convolution_bands_small(zoo_packages):
    """The kernels' workspace follows the budget: under a small limit the engine caps the
    column buffer (`max_band_bytes`), the infos' workspaces with it, and restores the cap
    at close."""
    from edgecaffe.engine import Engine
    from edgecaffe.engine.limit import max_band_bytes
    from edgecaffe.ops import conv

    folder = zoo_packages(["TinyAlex"])
    before = conv.set_max_band_bytes(None)
    assert before == 32 << 20
    with Engine(folder, budget="2G", account_runtime=True) as large:
        wide = {layer.name: layer.workspace_bytes for layer in large.infos["TinyAlex"].layers}
    # Room for the runtime's growth allowance (at most 16 MiB, `runtime_growth_bytes`; it
    # grows with the limit, so with this process's RSS after a long test session) and a
    # little to schedule.
    limit = rss_bytes() + (20 << 20)
    with Engine(folder, budget=limit, workers=2, account_runtime=True) as small:
        cap = max_band_bytes(small.budget.capacity_bytes, 2)
        assert cap < 2 << 20
        assert conv.max_band_bytes_in_force() == cap  # in force while the engine runs
        narrow = {layer.name: layer.workspace_bytes for layer in small.infos["TinyAlex"].layers}
    assert conv.max_band_bytes_in_force() == 32 << 20  # released at close
    assert all(narrow[name] <= wide[name] for name in wide)


def test_a_smaller_band_cap_shrinks_the_workspace_not_the_result(monkeypatch):
    """VGG's conv1_2 (64 channels at 224 px) on im2col: with the band capped at 2 MiB its
    declared workspace falls by the band's share, tracemalloc sees no more than it declares,
    and the output is bit-for-bit the default band's. (The cap is im2col's: a layer Winograd
    takes, as this one by default, declares its own workspace, tests/test_winograd.py.)"""
    from edgecaffe.ops import conv

    monkeypatch.setattr(conv.winograd, "applies", lambda *args: False)

    op, attrs, outputs = _conv((1, 64, 224, 224), 64, 3, 1, 1)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 64, 224, 224)).astype(np.float32)
    weights = {"weight": rng.standard_normal((64, 64, 3, 3)).astype(np.float32),
               "bias": rng.standard_normal(64).astype(np.float32)}
    wide = op.workspace_bytes([x.shape], outputs, attrs)
    expected = op.run([x], weights, attrs)[0]
    previous = conv.set_max_band_bytes(2 << 20)
    try:
        narrow = op.workspace_bytes([x.shape], outputs, attrs)
        # The columns within the cap; the band's padded slab (64 x 6 rows x 226) and
        # product (64 x 4 rows x 224) besides.
        assert narrow <= (2 << 20) + 4 * 64 * 6 * 226 + 4 * 64 * 4 * 224 < wide
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        got = op.run([x], weights, attrs)[0]
        allocated = tracemalloc.get_traced_memory()[1] - base - got.nbytes
        tracemalloc.stop()
    finally:
        conv.set_max_band_bytes(previous)
    assert allocated <= narrow + (64 << 10)
    assert_same_or_rounding(got, expected)  # other bands: other BLAS calls


def test_an_exec_reserves_at_least_what_its_kernel_allocates(zoo_packages):
    """Outputs are reserved when an exec starts: what each exec's kernel allocates (numpy's
    buffers, seen by tracemalloc: its outputs and its workspace) never exceeds what the exec
    reserved in the ledger, and its load reserves its weights only."""
    from edgecaffe.engine import Engine
    from edgecaffe.engine.tasks import run_task
    from edgecaffe.sched import Kind

    folder = zoo_packages(["TinyAlex"])
    allocated: dict[str, int] = {}

    def measured(task, package):
        if task.kind != Kind.EXEC:
            return run_task(task, package, per_layer=True)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            run_task(task, package, per_layer=True)
            allocated[task.layers[0]] = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    with Engine(folder, budget="2G", workers=1, account_runtime=True,
                task_runner=measured) as engine:
        engine.submit(np.zeros((64, 64, 3), np.uint8), ["TinyAlex"]).result(timeout=60)
        info = engine.infos["TinyAlex"]
        reserved = {(r.kind, r.layers): r.reserve_bytes for r in engine.trace.tasks}
    assert allocated and max(allocated.values()) > 0
    for layer in info.layers:
        if layer.weighted:
            assert reserved["load", layer.name] == layer.weight_bytes
        need = reserved["exec", layer.name]
        assert need == layer.output_bytes + layer.workspace_bytes
        # Slack for Python's own objects (lists, views' headers): a few KiB, not a buffer.
        assert allocated[layer.name] <= need + (16 << 10), (layer.name, allocated, need)


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


@pytest.mark.parametrize("version", [1, 2])
def test_the_runtime_is_what_its_own_cgroup_is_charged(tmp_path, version):
    """On a fake cgroupfs: the usage of a cgroup the process is alone in; None in the root
    cgroup or in one shared with another process (whose memory its usage holds too)."""
    from edgecaffe.measure import own_cgroup_usage_bytes

    root = tmp_path / "fs"
    if version == 1:
        folder, usage, line = root / "memory" / "run", "memory.usage_in_bytes", "5:memory:/run"
    else:
        (root).mkdir()
        (root / "cgroup.controllers").write_text("cpu memory\n")
        folder, usage, line = root / "run", "memory.current", "0::/run"
    folder.mkdir(parents=True)
    (folder / usage).write_text("23068672\n")
    (folder / "cgroup.procs").write_text("4242\n")
    proc = tmp_path / "cgroup"
    proc.write_text(f"9:pids:/run\n{line}\n")
    assert own_cgroup_usage_bytes(proc, root, pid=4242) == 22 << 20
    (folder / "cgroup.procs").write_text("4242\n4243\n")
    assert own_cgroup_usage_bytes(proc, root, pid=4242) is None  # shared
    proc.write_text(line.replace("/run", "/") + "\n")
    assert own_cgroup_usage_bytes(proc, root, pid=4242) is None  # the root cgroup


def test_automatic_blocks_follow_the_capacity():
    """A sixteenth of the capacity, a power of two MiB (close capacities agree), >= 1 MiB."""
    from edgecaffe.engine.limit import RUNTIME_ESTIMATE_BYTES, auto_block_bytes

    assert auto_block_bytes(469 << 20) == auto_block_bytes((512 << 20) - RUNTIME_ESTIMATE_BYTES) \
        == 16 << 20
    assert auto_block_bytes(92 << 20) == auto_block_bytes((128 << 20) - RUNTIME_ESTIMATE_BYTES) \
        == 4 << 20
    assert auto_block_bytes(1 << 20) == 1 << 20


def test_band_caps_of_overlapping_engines_and_a_failed_one(zoo_packages):
    """Each engine under a limit holds its own band cap; the smallest held applies, closing
    one never raises the cap above what a still-open engine's infos assumed, and an engine
    whose construction fails holds none (found in review: a single process-wide cap was
    restored in the wrong order when two engines overlapped)."""
    from edgecaffe.engine import Engine
    from edgecaffe.errors import ConfigError
    from edgecaffe.ops import conv

    folder = zoo_packages(["TinyAlex"])
    base = rss_bytes()
    assert conv.max_band_bytes_in_force() == 32 << 20
    large = Engine(folder, budget=base + (400 << 20), account_runtime=True, workers=2)
    large_cap = conv.max_band_bytes_in_force()
    small = Engine(folder, budget=base + (60 << 20), account_runtime=True, workers=2)
    small_cap = conv.max_band_bytes_in_force()
    assert small_cap < large_cap < 32 << 20
    large.close()
    assert conv.max_band_bytes_in_force() == small_cap  # still the open engine's
    small.close()
    assert conv.max_band_bytes_in_force() == 32 << 20
    # The other way round: the larger engine's infos were built under the smaller cap, so
    # that cap stays in force until the larger engine closes too.
    small = Engine(folder, budget=base + (60 << 20), account_runtime=True, workers=2)
    small_cap = conv.max_band_bytes_in_force()  # the runtime, so the cap, may have moved a bit
    large = Engine(folder, budget=base + (400 << 20), account_runtime=True, workers=2)
    assert conv.max_band_bytes_in_force() == small_cap
    small.close()
    assert conv.max_band_bytes_in_force() == small_cap
    large.close()
    assert conv.max_band_bytes_in_force() == 32 << 20
    with pytest.raises(ConfigError):
        Engine(folder, budget=base + (60 << 20), account_runtime=True, mode="nosuchmode")
    assert conv.max_band_bytes_in_force() == 32 << 20
