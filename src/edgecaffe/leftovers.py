"""What a run with real memory limits leaves on the machine, and how it is taken away again.

A run with `--enforce-memory` creates system state that outlives a killed process: memory cgroups
(v1 or v2), a swap file (active in `/proc/swaps`) and its child processes. Three layers make sure
none of it stays behind:

1. every run names what it creates after itself (`edgecaffe-<pid>-<n>` cgroups,
   `/var/tmp/edgecaffe-<pid>-<n>.swap`) and writes a *run record* (`RUN_DIR/<pid>-<t>.json`: the
   owner's pid and start time, the cgroups, the swap file, the children) as each item appears;
2. a *reaper* (`python -m edgecaffe.leftovers --reap RECORD`), started first in its own session,
   waits on a pipe only the run holds: when the run ends in any way (SIGKILL included) the pipe
   closes, and if the record is still there the reaper kills the record's processes, removes
   its cgroups and turns off and deletes its swap file; the run's children also die with the run
   (`PR_SET_PDEATHSIG`);
3. `edgecaffe cleanup` finds what is left anyway (records whose owner is gone, `edgecaffe-<pid>-*`
   cgroups and swap files whose pid is gone) and removes it; a new run reports such leftovers.

Only stdlib here: the reaper must start fast and small.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SWAP_DIR = Path("/var/tmp")
#: The one swap path versions before per-run names used; no pid says whose it is, so only
#: `edgecaffe cleanup --legacy` removes it.
LEGACY_SWAP = SWAP_DIR / "edgecaffe.swap"
RUN_DIR = Path(os.environ.get("EDGECAFFE_RUN_DIR", "/run/edgecaffe"))
NAME = re.compile(r"^edgecaffe-(\d+)-\d+(\.swap)?$")
_PR_SET_PDEATHSIG = 1


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), or None when
    there is no such process: with the pid it names one process even after pids are reused."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rpartition(")")[2].split()[19])


def alive(pid: int, ticks: int | None = None) -> bool:
    """Whether the process `pid` (started at `ticks`, when given) still runs (zombies do not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z" and (ticks is None or start_ticks(pid) == ticks)


def die_with_parent(parent: int):
    """A `preexec_fn` for a child of `parent`: the child is killed when the parent dies (Linux
    PR_SET_PDEATHSIG) and exits at once if the parent already has. libc is loaded here, in the
    parent, so the child runs no import between fork and exec."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def setup() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return setup


@dataclass
class RunRecord:
    """What one run created, written to RUN_DIR as it happens (see the module docstring)."""

    pid: int
    ticks: int | None
    cgroups: list[str] = field(default_factory=list)
    swap: str | None = None
    children: list[list[int]] = field(default_factory=list)  # [pid, start ticks]
    path: str = ""

    @classmethod
    def create(cls) -> RunRecord:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        pid = os.getpid()
        # pid plus a clock: sequential runs in one process (tests, the API) never share a record
        record = cls(pid, start_ticks(pid), path=str(RUN_DIR / f"{pid}-{time.monotonic_ns()}.json"))
        record.save()
        return record

    @classmethod
    def read(cls, path: Path) -> RunRecord | None:
        try:
            data = json.loads(path.read_text())
            return cls(**{**data, "path": str(path)})
        except (OSError, ValueError, TypeError):
            return None

    def save(self) -> None:
        partial = Path(self.path + ".partial")
        partial.write_text(json.dumps(asdict(self)))
        partial.replace(self.path)

    def forget(self) -> None:
        Path(self.path).unlink(missing_ok=True)

    def remaining(self) -> list[str]:
        """What the record lists that still exists (empty after a clean end)."""
        left = [f"process {pid}" for pid, ticks in self.children if alive(pid, ticks)]
        left += [f"cgroup {c}" for c in self.cgroups if Path(c).is_dir()]
        if self.swap and (Path(self.swap).exists() or self.swap in active_swaps()):
            left.append(f"swap {self.swap}")
        return left


class Reaper:
    """A process that outlives the run and cleans up after it if the run could not."""

    def __init__(self, record: RunRecord) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edgecaffe.leftovers", "--reap", record.path],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)

    def release(self) -> None:
        """The run cleaned up itself: close the pipe and let the reaper exit."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


def _reap(record_path: Path) -> int:
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sys.stdin.buffer.read()  # returns when the run's end of the pipe closes
    record = RunRecord.read(record_path)
    if record is None:
        return 0
    done = remove_record(record)
    # What the run created but had not yet recorded when it was killed: found by its name.
    done += remove_leftovers([(kind, path) for kind, path in find_leftovers()
                              if f"edgecaffe-{record.pid}-" in Path(path).name])
    for line in done:
        print(f"edgecaffe: after run {record.pid} ended: {line}", file=sys.stderr)
    return 0


# --- finding and removing leftovers ----------------------------------------------------------

def cgroup_dirs() -> list[Path]:
    """The folders runs create their cgroups in: this process's memory cgroup under v1, and
    under v2 `v2_parent` of its cgroup (whichever exist)."""
    dirs = []
    for root, controller in ((CGROUP_ROOT / "memory", "memory"), (CGROUP_ROOT, ""),
                             (CGROUP_ROOT / "unified", "")):
        if controller == "" and not (root / "cgroup.controllers").exists():
            continue
        if controller and not (root / "memory.limit_in_bytes").exists():
            continue
        dirs.append(v2_parent(root, own_cgroup("")) if controller == ""
                    else root / own_cgroup(controller))
    return dirs


def v2_parent(unified: Path, own: str) -> Path:
    """Where a process in the v2 cgroup `own` (relative to the mount `unified`) makes its
    memory cgroups: the nearest of `own` and its ancestors that holds no process itself, or
    `unified`. cgroup v2 hands a controller to children only from a cgroup without processes
    of its own (the "no internal process" rule, Documentation/admin-guide/cgroup-v2.rst);
    a login shell's cgroup (systemd's `session-N.scope`) always has some, its slice none."""
    folder = unified / own.strip("/")
    while folder != unified and unified in folder.parents \
            and _read(folder / "cgroup.procs").split():
        folder = folder.parent
    return folder


def own_cgroup(controller: str) -> str:
    """This process's cgroup path for a v1 controller, or the v2 one for ''."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or (controller == "" and controllers == ""):
            return path.lstrip("/")
    return ""


def active_swaps() -> list[str]:
    lines = Path("/proc/swaps").read_text().splitlines()[1:]
    return [line.split()[0].replace("\\040", " ") for line in lines if line.strip()]


def find_leftovers() -> list[tuple[str, str]]:
    """Everything a run that is gone left behind, as (kind, path) with kind one of 'record',
    'cgroup', 'swap', 'process'; nothing that belongs to a live run."""
    found: list[tuple[str, str]] = []
    recorded: set[str] = set()
    for path in sorted(RUN_DIR.glob("*.json")) if RUN_DIR.is_dir() else []:
        record = RunRecord.read(path)
        if record is None:
            found.append(("record", str(path)))
            continue
        recorded.update(record.cgroups + ([record.swap] if record.swap else []))
        if alive(record.pid, record.ticks):
            continue
        found.append(("record", str(path)))
        found += [("process", f"{pid}") for pid, ticks in record.children if alive(pid, ticks)]
        found += [("cgroup", c) for c in record.cgroups if Path(c).is_dir()]
        if record.swap and (Path(record.swap).exists() or record.swap in active_swaps()):
            found.append(("swap", record.swap))
    for folder in cgroup_dirs():
        for path in sorted(folder.glob("edgecaffe-*")) if folder.is_dir() else []:
            match = NAME.match(path.name)
            if match and path.is_dir() and str(path) not in recorded \
                    and not alive(int(match.group(1))):
                found.append(("cgroup", str(path)))
    swaps = {str(p) for p in SWAP_DIR.glob("edgecaffe-*.swap")} | \
        {s for s in active_swaps() if Path(s).parent == SWAP_DIR}
    for swap in sorted(swaps):
        match = NAME.match(Path(swap).name)
        if match and swap not in recorded and not alive(int(match.group(1))):
            found.append(("swap", swap))
    if LEGACY_SWAP.exists() or str(LEGACY_SWAP) in active_swaps():
        found.append(("legacy swap", str(LEGACY_SWAP)))
    return found


def remove_cgroup(path: Path) -> str:
    """Kill what still runs in the cgroup, then remove it (children first)."""
    killed = 0
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True) \
            if path.is_dir() else []:
        remove_cgroup(child)
    for _ in range(100):
        pids = [int(p) for p in _read(path / "cgroup.procs").split()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        try:
            path.rmdir()
            return f"removed cgroup {path}" + (f" (killed {killed} process(es))" if killed else "")
        except FileNotFoundError:
            return f"cgroup {path} was already gone"
        except OSError:
            time.sleep(0.05)  # processes take a moment to leave
    return f"could not remove cgroup {path} (still busy)"


def remove_swap(path: str) -> str:
    """swapoff (when active), then delete the file."""
    notes = []
    if path in active_swaps():
        result = subprocess.run(["swapoff", path], capture_output=True, text=True, check=False)
        if result.returncode:
            return f"could not turn off swap {path}: {result.stderr.strip()}"
        notes.append("turned off")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        notes.append("deleted")
    return f"swap file {path}: {' and '.join(notes) or 'already gone'}"


def remove_record(record: RunRecord) -> list[str]:
    """Undo one run's record: its processes, cgroups, swap file, then the record itself."""
    done = []
    for pid, ticks in record.children:
        if alive(pid, ticks):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                done.append(f"killed orphan process {pid}")
    done += [remove_cgroup(Path(c)) for c in record.cgroups if Path(c).exists()]
    if record.swap and (Path(record.swap).exists() or record.swap in active_swaps()):
        done.append(remove_swap(record.swap))
    record.forget()
    return done


def remove_leftovers(found: list[tuple[str, str]], legacy: bool = False) -> list[str]:
    """Remove what `find_leftovers` found (the legacy swap file only with `legacy`); returns
    one line per item."""
    done = []
    handled: set[str] = set()
    for kind, path in found:
        if kind == "record":
            record = RunRecord.read(Path(path))
            if record is None:
                Path(path).unlink(missing_ok=True)
                done.append(f"removed unreadable run record {path}")
                continue
            handled.update(record.cgroups + ([record.swap] if record.swap else []))
            done += remove_record(record)
            done.append(f"removed run record {path}")
        elif path in handled:
            continue
        elif kind == "cgroup":
            done.append(remove_cgroup(Path(path)))
        elif kind == "swap" or (kind == "legacy swap" and legacy):
            done.append(remove_swap(path))
        elif kind == "legacy swap":
            done.append(f"kept {path}: a swap file of an older edgecaffe, whose owner cannot be "
                        "told; remove it with --legacy when no older run is active")
    return done


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--reap":
        sys.exit(_reap(Path(sys.argv[2])))
    sys.exit("usage: python -m edgecaffe.leftovers --reap RECORD")
