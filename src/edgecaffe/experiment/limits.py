"""Real memory limits, as the original's harness imposed them: a cgroup memory limit equal to the
budget (cgroup v1 or v2, whichever the machine has) and optionally a swap file, both created
here and removed in every case (errors and Ctrl-C included; after SIGKILL, by the reaper or
`edgecaffe cleanup`: see `edgecaffe/leftovers.py`). Every name carries the run's pid and a
counter (`edgecaffe-<pid>-<n>`), so runs never share a cgroup or a swap file, and a run removes
only what it created. Needs root."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from edgecaffe import errors
from edgecaffe.leftovers import CGROUP_ROOT, SWAP_DIR, own_cgroup, v2_parent

_COUNTER = itertools.count(1)


def unique_name() -> str:
    """`edgecaffe-<pid>-<n>`: what this process creates next (cgroup or swap file)."""
    return f"edgecaffe-{os.getpid()}-{next(_COUNTER)}"


LimitError = errors.LimitError  # defined with the other errors; importable from here too


def _vmstat() -> dict[str, int]:
    values = {}
    for line in Path("/proc/vmstat").read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in ("pswpin", "pswpout"):
            values[key] = int(value)
    return values


class MemoryCgroup:
    """A memory cgroup with `limit_bytes` of RAM and `swap_bytes` of swap on top."""

    def __init__(self, limit_bytes: int, swap_bytes: int = 0, name: str | None = None) -> None:
        if os.geteuid() != 0:
            raise LimitError("--enforce-memory needs root to create a memory cgroup; without it "
                             "the budget is still kept by the scheduler's accounting")
        self.limit_bytes, self.swap_bytes = limit_bytes, swap_bytes
        name = name or unique_name()
        v1 = CGROUP_ROOT / "memory"
        unified = next((p for p in (CGROUP_ROOT, CGROUP_ROOT / "unified")
                        if "memory" in _read(p / "cgroup.controllers").split()), None)
        if v1.is_dir() and (v1 / "memory.limit_in_bytes").exists():
            self.version = 1
            self.path = v1 / own_cgroup("memory") / name
        elif unified is not None:
            self.version = 2
            self.unified = unified
            self.path = v2_parent(unified, own_cgroup("")) / name
        else:
            raise LimitError("this machine has no memory cgroup controller (v1 or v2)")
        self._vmstat_before = _vmstat()

    def __enter__(self) -> MemoryCgroup:
        if self.version == 2:
            _enable_memory_controller(self.unified, self.path.parent)
        try:
            self.path.mkdir()
            if self.version == 1:
                (self.path / "memory.limit_in_bytes").write_text(str(self.limit_bytes))
                memsw = self.path / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(self.limit_bytes + self.swap_bytes))
            else:
                (self.path / "memory.max").write_text(str(self.limit_bytes))
                (self.path / "memory.swap.max").write_text(str(self.swap_bytes))
        except OSError as error:
            self._remove()
            raise LimitError(f"cannot set up the memory cgroup {self.path}: {error}") from None
        return self

    @property
    def usage_path(self) -> Path:
        """The file holding the cgroup's current usage in bytes (pages of the page cache it
        was charged for included): v1 `memory.usage_in_bytes`, v2 `memory.current`."""
        return self.path / ("memory.usage_in_bytes" if self.version == 1 else "memory.current")

    def usage_bytes(self) -> int | None:
        """The cgroup's memory usage now (None once it is gone)."""
        return _int(self.usage_path)

    def join(self) -> None:
        """Move the calling process into the cgroup (use as a child's `preexec_fn`)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def stats(self) -> dict[str, Any]:
        after = _vmstat()
        if self.version == 1:
            oom = _read(self.path / "memory.oom_control")
            stats = {
                "peak_bytes": _int(self.path / "memory.max_usage_in_bytes"),
                "peak_with_swap_bytes": _int(self.path / "memory.memsw.max_usage_in_bytes"),
                "limit_hits": _int(self.path / "memory.failcnt"),
                "oom_kills": _field(oom, "oom_kill"),
            }
        else:
            events = _read(self.path / "memory.events")
            stats = {"peak_bytes": _int(self.path / "memory.peak"),
                     "oom_kills": _field(events, "oom_kill"),
                     "limit_hits": _field(events, "max")}
        stats.update(
            cgroup_version=self.version, limit_bytes=self.limit_bytes, swap_bytes=self.swap_bytes,
            # System-wide counters (pages): the best swap figure both versions offer.
            swap_in_pages=after.get("pswpin", 0) - self._vmstat_before.get("pswpin", 0),
            swap_out_pages=after.get("pswpout", 0) - self._vmstat_before.get("pswpout", 0),
        )
        return stats

    def _remove(self) -> None:
        for _ in range(50):  # processes may take a moment to leave after exiting
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._remove()


def run_in_cgroup(cgroup: MemoryCgroup, record: Any, argv: list[str], orphan: Any,
                  capture: bool = False, env: dict[str, str] | None = None
                  ) -> tuple[subprocess.Popen, str | None, str | None, dict[str, Any]]:
    """Run `argv` in a child that joins `cgroup` before exec and dies with its parent
    (`orphan`: `leftovers.die_with_parent`'s setup), listed in the run record `record` while it
    runs, so that a reaper can stop it if we are killed. Waits for it; on an interrupt kills it
    first, so that the limit never goes away under a running child. Returns (the child, its
    stdout and stderr when `capture`, else None, the cgroup's stats after it ended)."""
    from edgecaffe.leftovers import start_ticks

    def setup() -> None:
        cgroup.join()  # in the child, before exec
        orphan()

    pipe = subprocess.PIPE if capture else None
    child = subprocess.Popen(argv, stdout=pipe, stderr=pipe, text=capture, preexec_fn=setup,
                             env=env)
    record.children.append([child.pid, start_ticks(child.pid)])
    record.save()
    try:
        out, err = child.communicate()
    except BaseException:  # Ctrl-C: stop the run before the limit goes away
        child.kill()
        child.wait()
        raise
    return child, out, err, cgroup.stats()


class SwapFile:
    """A swap file of `size_bytes`, enabled while in use, removed afterwards. The path is new
    (`/var/tmp/edgecaffe-<pid>-<n>.swap` by default) and created exclusively: an existing file
    is refused and never touched, so a run deletes only a file it created."""

    def __init__(self, size_bytes: int, path: str | Path | None = None) -> None:
        self.size_bytes = size_bytes
        self.path = Path(path) if path is not None else SWAP_DIR / f"{unique_name()}.swap"
        self.created = self.enabled = False

    def __enter__(self) -> SwapFile:
        try:
            with open(self.path, "xb") as handle:
                self.created = True
                os.posix_fallocate(handle.fileno(), 0, self.size_bytes)
            self.path.chmod(0o600)
            _run("mkswap", str(self.path))
            _run("swapon", str(self.path))
            self.enabled = True
        except (OSError, LimitError) as error:
            self.__exit__()
            raise LimitError(f"cannot set up the swap file {self.path}: {error}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            subprocess.run(["swapoff", str(self.path)], capture_output=True, check=False)
            self.enabled = False
        if self.created:
            self.path.unlink(missing_ok=True)
            self.created = False


def _enable_memory_controller(unified: Path, parent: Path) -> None:
    """cgroup v2: a child cgroup has the memory controller only when its parent lists it in
    `cgroup.subtree_control`, which it can only when its own parent does
    (Documentation/admin-guide/cgroup-v2.rst, "Enabling and Disabling"): enable it where it
    is missing, from the mount `unified` down to `parent`. The kernel refuses (EBUSY) in a
    cgroup, not the root, that holds processes itself (`leftovers.v2_parent` picks a parent
    without any; a cgroup namespace's root may still have some): say so."""
    chain = [parent, *(p for p in parent.parents if unified in p.parents)]
    chain += [unified] if parent != unified else []
    for folder in reversed(chain):
        control = folder / "cgroup.subtree_control"
        if "memory" in _read(control).split():
            continue
        try:
            control.write_text("+memory")
        except OSError as error:
            hint = (" (cgroup v2 gives controllers to child cgroups only from one that holds "
                    "no process itself, and this one does: run from a cgroup whose parent "
                    "holds none, e.g. under systemd-run --scope)" if error.errno == 16 else "")
            raise LimitError(f"cannot enable the memory controller in {control}: "
                             f"{error.strerror}{hint}") from None


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        raise LimitError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _int(path: Path) -> int | None:
    text = _read(path).strip()
    return int(text) if text.isdigit() else None


def _field(text: str, key: str) -> int:
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
