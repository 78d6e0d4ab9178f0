"""One real run of a campaign in a process of its own, started by the worker's task.

Why a child process: the run's sampled RSS is then the run's own (not the Dask worker's), the
run can be stopped (Dask cannot interrupt a task's thread, but the task can kill its child when
the submitter cancels it), and it can run inside a memory cgroup as large as its budget
(`--enforce-memory`, as `experiment_cmd.run_limited` does locally). The child asks the kernel to
kill it when its parent thread ends (PR_SET_PDEATHSIG on Linux), so a killed worker leaves no
orphan run behind.

Protocol: `python -m edgecaffe.experiment.isolated JOB RESULT`; JOB holds the pickled
(RunSpec, results folder, worker name, parent pid); the child writes the pickled
("ok", summary) or ("error", message) to RESULT.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecaffe.model.errors import ModelError

PR_SET_PDEATHSIG = 1  # linux/prctl.h


class RunProcessError(ModelError):
    """A run's own process failed, was killed, or was cancelled."""


def _die_with_parent(parent_pid: int) -> bool:
    """Ask to be killed when the parent thread ends; False when the parent is already gone."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such guard
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent_pid


def run_in_child(spec: Any, folder: Path, worker: str,
                 cancelled: Callable[[], bool] = lambda: False,
                 poll_s: float = 0.25) -> dict[str, Any]:
    """Run `spec` (a cluster.RunSpec of a real run) in a new Python process writing `folder`
    (inside a memory cgroup of the run's budget when `spec.enforce_memory`; its figures go to
    `folder/limits.json`); returns the run's summary. Polls `cancelled` every `poll_s` seconds
    and kills the child when it says so. Raises RunProcessError with the child's error, its
    exit status, an OOM kill, or the cancel; LimitError when the cgroup cannot be made."""
    from edgecaffe.experiment.cluster import scratch_dir
    from edgecaffe.experiment.limits import MemoryCgroup

    with tempfile.TemporaryDirectory(prefix="edgecaffe-job-", dir=scratch_dir()) as temp, \
            (MemoryCgroup(spec.budget_bytes) if spec.enforce_memory
             else contextlib.nullcontext()) as cgroup:
        job, result = Path(temp) / "job.pickle", Path(temp) / "result.pickle"
        job.write_bytes(pickle.dumps((spec, str(folder), worker, os.getpid())))
        command = [sys.executable, "-m", "edgecaffe.experiment.isolated", str(job), str(result)]
        if cgroup is not None:
            # A shell joins the cgroup and then becomes the interpreter, so everything the run
            # allocates is charged to the limit, as `cgroup.join` in a preexec_fn does for a
            # local run (a preexec_fn is not safe in a threaded Dask worker).
            command = ["sh", "-c", 'echo $$ > "$0" && exec "$@"',
                       str(cgroup.path / "cgroup.procs"), *command]
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        try:
            while True:
                try:
                    child.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if cancelled():
                        raise RunProcessError("cancelled by the submitter") from None
        finally:
            if child.poll() is None:  # cancelled, or this thread interrupted: stop the run
                child.kill()
                child.wait()
        if cgroup is not None:
            _write_limits(cgroup, child.returncode, folder)
        if not result.exists():
            code = child.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            if cgroup is not None and code == -signal.SIGKILL:
                how += f", e.g. by the OOM killer at the {spec.budget_bytes}-byte limit"
            raise RunProcessError(f"the run's process ended without a result ({how})")
        status, value = pickle.loads(result.read_bytes())
    if status != "ok":
        raise RunProcessError(value)
    return value


def _write_limits(cgroup, returncode: int, folder: Path) -> None:
    """The cgroup's figures, as `experiment_cmd.run_limited` writes them for a local run."""
    stats = cgroup.stats()
    stats["oom_killed"] = returncode == -signal.SIGKILL or stats.get("oom_kills", 0) > 0
    stats["exit_code"] = returncode
    if folder.is_dir():
        (folder / "limits.json").write_text(json.dumps(stats, indent=2))


def _main(argv: list[str]) -> int:
    from edgecaffe.experiment.cluster import run_here

    job, result = argv
    spec, folder, worker, parent_pid = pickle.loads(Path(job).read_bytes())
    if not _die_with_parent(parent_pid):
        return 1  # the worker died while this process started
    try:
        outcome = ("ok", run_here(spec, Path(folder), worker))
    except Exception as error:  # sent to the worker, which reports it
        outcome = ("error", "".join(traceback.format_exception_only(error)).strip() + "\n"
                   + traceback.format_exc(limit=-3))
    Path(result).write_bytes(pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
