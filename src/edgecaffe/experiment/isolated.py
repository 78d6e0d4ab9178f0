"""One real run of a campaign in a process of its own, started by the worker's task.

Why a child process: the run's sampled RSS is then the run's own (not the Dask worker's), and the
run can be stopped: Dask cannot interrupt a task's thread, but the task can kill its child when
the submitter cancels it (Ctrl-C). The child dies with the thread that started it
(PR_SET_PDEATHSIG on Linux), so a killed worker leaves no orphan run behind.

Protocol: `python -m edgecaffe.experiment.isolated JOB RESULT`; JOB holds the pickled
(RunSpec, results folder, worker name); the child writes the pickled ("ok", summary) or
("error", message) to RESULT.
"""

from __future__ import annotations

import contextlib
import ctypes
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such guard
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def run_in_child(spec: Any, folder: Path, worker: str,
                 cancelled: Callable[[], bool] = lambda: False,
                 poll_s: float = 0.25) -> dict[str, Any]:
    """Run `spec` (a cluster.RunSpec of a real run) in a new Python process writing `folder`;
    returns its summary. Polls `cancelled` every `poll_s` seconds and kills the child when it
    says so. Raises RunProcessError with the child's error, its exit status, or the cancel."""
    with tempfile.TemporaryDirectory(prefix="edgecaffe-job-") as temp:
        job, result = Path(temp) / "job.pickle", Path(temp) / "result.pickle"
        job.write_bytes(pickle.dumps((spec, str(folder), worker)))
        child = subprocess.Popen([sys.executable, "-m", "edgecaffe.experiment.isolated",
                                  str(job), str(result)], stdin=subprocess.DEVNULL,
                                 preexec_fn=_die_with_parent)
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
        if not result.exists():
            how = (f"killed by signal {-child.returncode}" if child.returncode < 0
                   else f"exit status {child.returncode}")
            raise RunProcessError(f"the run's process ended without a result ({how}"
                                  + (", e.g. the OOM killer)" if child.returncode < 0 else ")"))
        status, value = pickle.loads(result.read_bytes())
    if status != "ok":
        raise RunProcessError(value)
    return value


def _main(argv: list[str]) -> int:
    from edgecaffe.experiment.cluster import run_here

    job, result = argv
    spec, folder, worker = pickle.loads(Path(job).read_bytes())
    try:
        outcome = ("ok", run_here(spec, Path(folder), worker))
    except Exception as error:  # sent to the worker, which reports it
        outcome = ("error", "".join(traceback.format_exception_only(error)).strip() + "\n"
                   + traceback.format_exc(limit=-3))
    Path(result).write_bytes(pickle.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
