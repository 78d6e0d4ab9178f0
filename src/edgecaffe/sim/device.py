"""Device profiles: how long each task takes on a device the simulator stands in for.

With the default profile (`host`) a task takes what `edgecaffe profile` measured on this
machine: the sum of its layers' median load or execution times, and the init time. Another
device scales execution by a compute factor and derives load times from a storage read
bandwidth (a Raspberry Pi's SD card reads ~40 MB/s). A layer nobody profiled gets its execution
time from its FLOPs and the device's GFLOP/s, so unprofiled packages simulate too.

A profile is a small YAML file:

    name: rpi4-sd
    compute-factor: 10.9      # execution times x this (1 = as profiled here)
    storage-mb-per-s: 40      # loads: bytes / this (+ latency per layer file); omit: profiled
    load-latency-ms: 0.2
    gflops: 2.0               # for layers without a profiled execution time
    cores: 4                  # shared out by adaptive BLAS threads (omit: this machine's)
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgecaffe import errors
from edgecaffe.sched import Kind, NetworkInfo, Task
from edgecaffe.yamlfile import read_yaml

DeviceError = errors.DeviceError  # defined with the other errors; importable from here too


@dataclass(frozen=True)
class DeviceProfile:
    name: str = "host"
    #: Execution (and init) times are the profiled ones times this.
    compute_factor: float = 1.0
    #: Loads read weight bytes at this rate (10**6 bytes/s); None: the profiled load times.
    storage_mb_per_s: float | None = None
    #: Added to every layer file read when loads come from the bandwidth.
    load_latency_ms: float = 0.0
    #: GFLOP/s for layers without a profiled execution time (already this device's speed:
    #: not multiplied by the compute factor).
    gflops: float = 20.0
    #: How many tasks progress at full speed at once; with more running, they share it (each
    #: at parallelism / running). None: every worker at full speed. Shared or throttled cores
    #: make it much lower than the core count: `edgecaffe device` measures it.
    parallelism: float | None = None
    #: The cores the engine's adaptive BLAS threads share out (None: this machine's).
    cores: int | None = None

    def layer_exec_ms(self, info: NetworkInfo, layer: str, threads: int | None = None) -> float:
        """On `threads` BLAS threads: the single-thread profile for 1 when there is one, else
        the profile's own (taken on all cores: `edgecaffe profile` records both)."""
        entry = info.layer(layer)
        if threads == 1 and entry.exec_ms_single is not None:
            return entry.exec_ms_single * self.compute_factor
        if entry.exec_ms is not None:
            return entry.exec_ms * self.compute_factor
        return entry.flops / (self.gflops * 1e6)

    def layer_load_ms(self, info: NetworkInfo, layer: str) -> float:
        entry = info.layer(layer)
        if self.storage_mb_per_s is not None and entry.weight_bytes:
            return self.load_latency_ms + entry.weight_bytes / (self.storage_mb_per_s * 1e3)
        if entry.load_ms is not None:
            return entry.load_ms
        if self.storage_mb_per_s is None:
            raise DeviceError(
                f"{info.name}: layer {layer!r} has no profiled load time; profile the package "
                "(edgecaffe profile) or simulate with a device that gives storage-mb-per-s")
        return self.load_latency_ms

    def init_ms(self, info: NetworkInfo) -> float:
        return info.init_ms * self.compute_factor

    def load_ms(self, info: NetworkInfo, layers: Iterable[str]) -> float:
        """Loading `layers` of `info` (those with weights), in milliseconds."""
        return sum(self.layer_load_ms(info, name) for name in layers
                   if info.layer(name).weighted)

    def exec_ms(self, info: NetworkInfo, layers: Iterable[str],
                threads: int | None = None) -> float:
        """Executing `layers` of `info` on `threads` BLAS threads, in milliseconds."""
        return sum(self.layer_exec_ms(info, name, threads) for name in layers)

    def task_ms(self, task: Task, threads: int | None = None) -> float:
        """Duration of one task on this device, in milliseconds."""
        info = task.instance.info
        if task.kind == Kind.INIT:
            return self.init_ms(info)
        if task.kind == Kind.LOAD:
            return self.load_ms(info, task.layers)
        return self.exec_ms(info, task.layers, threads)


#: Built-in profiles. rpi4-sd: EmotionNet (the one network the original measured at the same
#: input as our zoo model) ran 1057 ms on the original's Raspberry Pi 4 vs 97 ms profiled here,
#: a factor of ~10.9; the SD card reads ~40 MB/s.
DEVICES: dict[str, DeviceProfile] = {
    "host": DeviceProfile(),
    "rpi4-sd": DeviceProfile("rpi4-sd", compute_factor=10.9, storage_mb_per_s=40.0,
                             load_latency_ms=0.2, gflops=2.0),
}

_KEYS = {f.name.replace("_", "-"): f.name for f in fields(DeviceProfile)}


def load_device(spec: str | Path | None) -> DeviceProfile:
    """A built-in profile by name, or a YAML file; None is `host`."""
    if spec is None:
        return DEVICES["host"]
    if str(spec) in DEVICES:
        return DEVICES[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise DeviceError(f"device {spec!r}: neither a built-in profile "
                          f"({', '.join(DEVICES)}) nor a YAML file")
    raw = read_yaml(path, DeviceError) or {}
    if not isinstance(raw, dict):
        raise DeviceError(f"{path}: expected a mapping of keys ({', '.join(_KEYS)})")
    values: dict[str, Any] = {"name": path.stem}
    for key, value in raw.items():
        field_name = _KEYS.get(str(key).replace("_", "-"))
        if field_name is None:
            close = difflib.get_close_matches(str(key), list(_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DeviceError(f"{path}: unknown key {key!r}{hint} (valid: {', '.join(_KEYS)})")
        if field_name in ("parallelism", "cores") and value is None:
            pass
        elif field_name == "cores":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DeviceError(f"{path}: cores must be a positive integer, got {value!r}")
        elif field_name != "name":
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                    value == 0 and field_name != "load_latency_ms"):
                raise DeviceError(f"{path}: {key} must be a positive number, got {value!r}")
            value = float(value)
        values[field_name] = value
    return DeviceProfile(**values)


def measure_parallelism(threads: int = 2, seconds: float = 0.5) -> float:
    """How many of our tasks this machine runs at full speed at once: a task-like mix (our
    convolution kernel on one BLAS thread, a 4 MB copy and CRC) on one thread, then on
    `threads` at the same time; the ratio of throughputs (`threads` on free cores; near 1 when
    the cores are shared)."""
    import threading
    import time
    import zlib

    import numpy as np

    from edgecaffe.blas import limit_blas
    from edgecaffe.ops.conv import conv2d

    rng = np.random.default_rng(0)
    image = rng.random((1, 32, 56, 56), dtype=np.float32)
    kernel = rng.random((64, 32, 3, 3), dtype=np.float32)
    block = np.ones(4 * 2**20, dtype=np.uint8)

    def work(rounds: int) -> None:  # an execution (our own conv kernel) and a load's chores
        for _ in range(rounds):
            conv2d(image, kernel, None, (1, 1), (1, 1), (1, 1), 1)
            zlib.crc32(block.copy())

    with limit_blas(1):
        work(3)  # warm-up
        rounds, elapsed = 4, 0.0
        while elapsed < seconds / 2:
            rounds *= 2
            started = time.perf_counter()
            work(rounds)
            elapsed = time.perf_counter() - started
        pool = [threading.Thread(target=work, args=(rounds,)) for _ in range(threads)]
        started = time.perf_counter()
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        together = time.perf_counter() - started
    return round(min(float(threads), max(1.0, threads * elapsed / together)), 2)
