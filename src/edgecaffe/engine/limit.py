"""What a real memory limit leaves the ledger, and the kernels and packages that follow it.

Under `Engine(account_runtime=True)` the budget is the process's whole limit (a cgroup's): the
runtime's own memory is not schedulable (`schedulable`), convolution bands are capped to the
capacity (`max_band_bytes`) and large layers run as blocks sized from it (`blocked_packages`,
`auto_block_bytes`). See docs/engine.md, "Memory budget".
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from edgecaffe.model.package import ModelPackage
from edgecaffe.sched import BudgetError, Core

#: What a kernel backend keeps beyond the numpy kernels' growth once requests run, added to
#: `runtime_growth_bytes`. onnxruntime: measured on large-3 (three batches, freed memory
#: returned to the system): RSS 61 -> 92 MiB with it (46 cached sessions; clearing them gave
#: back 4 MiB) against 61 -> 68 with numpy. Its sessions' own intermediates are not in it.
BACKEND_GROWTH_BYTES = {"numpy": 0, "onnxruntime": 32 << 20}


def schedulable(budget: str | int, backend: str = "numpy") -> tuple[int, int]:
    """(ledger capacity, runtime bytes) for a process limited to `budget`: the memory it
    holds now, after BLAS and our GEMM helper threads have set up their buffers, and what it
    will grow by (`runtime_growth_bytes`, plus `BACKEND_GROWTH_BYTES[backend]`) are not
    schedulable. What it holds is what its own memory cgroup is charged when it is alone in
    one (`measure.own_cgroup_usage_bytes`: shared libraries another cgroup brought into the
    page cache are in the RSS but not charged here, 14 MiB of 34 measured), else its
    resident memory."""
    import numpy as np

    from edgecaffe.measure import own_cgroup_usage_bytes, return_freed_memory, rss_bytes
    from edgecaffe.ops import gemm
    from edgecaffe.sched import parse_bytes

    limit = parse_bytes(budget)
    return_freed_memory()
    warm = np.ones((512, 512), dtype=np.float32)
    float((warm @ warm).sum())  # BLAS allocates its per-thread buffers on first use
    gemm.matmul(warm, warm, np.empty_like(warm), threads=2)  # our helper threads too
    del warm
    with contextlib.suppress(ImportError):
        import threadpoolctl  # noqa: F401  (imported by the first request otherwise)
    charged = own_cgroup_usage_bytes()
    runtime = (rss_bytes() if charged is None else charged) + runtime_growth_bytes(limit) \
        + BACKEND_GROWTH_BYTES.get(backend, 0)
    if runtime >= limit:
        raise BudgetError(f"the runtime alone holds {runtime / 2**20:.0f} MiB, the memory limit "
                          f"is {limit / 2**20:.0f} MiB: nothing is left to schedule")
    return limit - runtime, runtime


def runtime_growth_bytes(limit_bytes: int) -> int:
    """What the runtime grows by once requests run, beyond what it held at start: Python
    objects (the trace, futures, results), memory the allocator keeps after a free, the
    threads' stacks, preprocessing's temporaries; not in the ledger. Measured in a 512 MiB
    cgroup on large-3 (benchmarks/memory.py): 5-14 MiB, 7 MiB at 128 MiB on VGG-19 alone.
    A thirty-second of the limit, between 8 and 16 MiB."""
    return min(16 << 20, max(8 << 20, limit_bytes // 32))


def blocked_packages(packages: Mapping[str, ModelPackage], budget: str | int,
                     max_block: str | int = "auto") -> dict[str, ModelPackage]:
    """`packages`, those with Dense/Conv layers over the block size replaced by blocked copies
    (derived into the cache once). "auto": a package with a layer over a quarter of `budget`
    (the ledger's capacity) is blocked at `auto_block_bytes(budget)`."""
    from edgecaffe.model.package.blocks import block_package
    from edgecaffe.sched import parse_bytes

    capacity = parse_bytes(budget)
    out = {}
    for name, package in packages.items():
        largest = max((layer.weight_bytes for layer in package.network.layers), default=0)
        if max_block == "auto":
            size = auto_block_bytes(capacity) if largest > capacity // 4 else None
        else:
            size = parse_bytes(max_block)
        out[name] = package if size is None else block_package(package, size)
    return out


#: What a process limited to a memory cgroup is expected to hold before it schedules anything
#: (measured 39-44 MiB: interpreter, numpy, BLAS buffers): a parent that derives blocked
#: copies before the limit starts (`experiment --enforce-memory`) estimates the child's ledger
#: capacity with it, so that the child's engine (`auto_block_bytes` of its measured
#: capacity) finds the same copies in the cache.
RUNTIME_ESTIMATE_BYTES = 48 << 20


def auto_block_bytes(capacity_bytes: int) -> int:
    """The automatic block size for a ledger capacity: a sixteenth of it, rounded down to a
    power of two MiB (so that close capacities, e.g. a runtime measured a little larger in a
    child process, choose the same blocked copy), at least 1 MiB. Small, because a load
    reserves its bytes when it starts and holds them before they are all read: with layers
    of up to a quarter of the capacity, loads in flight made the ledger 27% of a 512 MiB
    limit above the cgroup's usage (benchmarks/memory.py); and a network whose layers are
    small can prefetch without holding what other networks need."""
    share = max(1, capacity_bytes // 16 >> 20)
    return 1 << (share.bit_length() - 1) << 20


def max_band_bytes(capacity_bytes: int, workers: int) -> int:
    """A convolution band's cap under a real limit: a sixteenth of the ledger's capacity per
    worker (every worker may run an exec with its workspace at once, and an exec's
    reservation is in the ledger before its pages are touched), at least 1 MiB; the
    kernels' default (32 MB) when that is more."""
    return max(1 << 20, capacity_bytes // (16 * max(1, workers)))


def fit_packages(packages: dict[str, ModelPackage], budget: str | int, workers: int,
                 account_runtime: bool, max_block: str | int | None, load_method: str | None,
                 backend: str = "numpy"
                 ) -> tuple[dict[str, ModelPackage], str | int, int | None, int | None]:
    """An engine's packages and budget fitted to its memory: (packages, the ledger's
    capacity, the runtime's bytes or None, the band-cap token or None).

    Under a real limit (`account_runtime`) the runtime is measured and taken off the budget,
    and a convolution band cap for `workers` concurrent execs is held (`ops.conv.
    hold_band_cap`: the kernels' workspaces follow the budget; held before the infos are
    built, since they read each layer's workspace); then packages with layers too large for
    the capacity are replaced by blocked copies (`blocked_packages`). The caller releases
    the token at close; it is released here if a later step raises."""
    from edgecaffe.ops.conv import hold_band_cap, release_band_cap

    runtime = band = None
    if account_runtime:
        budget, runtime = schedulable(budget, backend)
        band = hold_band_cap(max_band_bytes(budget, workers))
    try:
        if max_block is not None:  # after the runtime: blocks follow the ledger's capacity
            packages = blocked_packages(packages, budget, max_block)
        if load_method is not None:
            for package in packages.values():
                package.load_method = load_method
    except BaseException:
        if band is not None:
            release_band_cap(band)
        raise
    return dict(packages), budget, runtime, band


def refused_alone(core: Core, networks: list[str]) -> str | None:
    """Why one request for `networks` run alone on `core`'s settings (mode, policy, ledger
    capacity, granularity, workers, workspaces) would be refused for the budget without the
    progress rule, or None: a simulated run with tasks of equal length (the simulator shares
    the scheduler core), so every task fitting the budget is not taken for the request
    fitting it."""
    from edgecaffe.sim import Simulator
    from edgecaffe.workload import Arrival

    simulator = Simulator(core.infos, core.mode.name, core.policy, core.budget.capacity_bytes,
                          core.memory.granularity, core.workers, task_ms=lambda task: 1.0,
                          allow_overcommit=False, record_ledger=False,
                          workspaces=core.memory.workspaces)
    trace = simulator.run([Arrival(0, 0.0, tuple(networks))], closed_loop=False)
    if not simulator.refused:  # failed otherwise (a user policy): not the budget's doing
        return None
    failed = [record.error for record in trace.requests.values() if record.status != "completed"]
    return (f"request for {networks}: even alone it needs more than the budget of "
            f"{core.budget.capacity_bytes} bytes at once ({'; '.join(map(str, failed))})")
