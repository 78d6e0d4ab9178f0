"""A killed run leaves nothing behind (issue 11, item 2): real `--enforce-memory --swap` runs
killed with SIGKILL, SIGHUP and SIGTERM, then /proc/swaps, the cgroup tree and the process table;
`edgecaffe cleanup` on the leftovers of a run that is gone. Needs root, a memory cgroup and
swapon; skipped otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecaffe import leftovers
from edgecaffe.cli import main
from edgecaffe.experiment.limits import LimitError, MemoryCgroup, SwapFile
from edgecaffe.leftovers import RunRecord, active_swaps, alive, cgroup_dirs, find_leftovers


def _swapon_works() -> str:
    if os.geteuid() != 0:
        return "needs root"
    try:
        MemoryCgroup(2**30)
    except LimitError as error:
        return str(error)
    try:
        with SwapFile(16 * 2**20):
            return ""
    except LimitError as error:
        return str(error)


WHY = _swapon_works()
pytestmark = pytest.mark.skipif(bool(WHY), reason=f"no real memory limits here: {WHY}")


@pytest.fixture(autouse=True)
def run_dir(tmp_path, monkeypatch):
    """Records in a folder of this test's own (the reaper reads the path from its argument)."""
    folder = tmp_path / "runs"
    monkeypatch.setattr(leftovers, "RUN_DIR", folder)
    monkeypatch.setenv("EDGECAFFE_RUN_DIR", str(folder))
    monkeypatch.setenv("EDGECAFFE_CACHE", str(tmp_path / "cache"))
    return folder


def _traces(pid: int) -> dict[str, list[str]]:
    """Everything named after run `pid` that still exists."""
    tag = f"edgecaffe-{pid}-"
    cgroups = [str(p) for folder in cgroup_dirs() if folder.is_dir()
               for p in folder.glob(f"{tag}*")]
    swaps = [s for s in active_swaps() if tag in s]
    files = [str(p) for p in Path("/var/tmp").glob(f"{tag}*")]
    return {"cgroups": cgroups, "swaps": swaps, "files": files}


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions `text` (the reaper names its run record)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _wait_for(predicate, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _start_run(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """A real limited run, long enough to be killed in the middle: (run, pids in its cgroup)."""
    env = {**os.environ, "EDGECAFFE_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "edgecaffe", "experiment", "--networks", "TinyAlex",
               "--n-arrivals", "100000", "--mem-limit", "256M", "--enforce-memory", "--swap",
               "64M", "-o", str(tmp_path / "out")]
    run = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           start_new_session=True)  # its own group, as a shell job would be

    def inside() -> list[int]:
        return [int(pid) for cgroup in _traces(run.pid)["cgroups"]
                for pid in Path(cgroup, "cgroup.procs").read_text().split()]

    started = _wait_for(lambda: (inside() and _traces(run.pid)["swaps"]) or run.poll() is not None)
    if run.poll() is not None or not started:
        run.kill()
        pytest.skip(f"the run did not start: {run.stderr.read().decode()[-300:]}")
    time.sleep(0.5)  # let the child get going
    return run, inside()


@pytest.mark.parametrize(("signum", "group"), [(signal.SIGKILL, False), (signal.SIGHUP, False),
                                               (signal.SIGTERM, False), (signal.SIGKILL, True)],
                         ids=["SIGKILL", "SIGHUP", "SIGTERM", "SIGKILL-group"])
def test_a_killed_run_leaves_nothing_behind(tmp_path, run_dir, signum, group):
    """The run alone, or its whole process group (run and child: only the reaper is left)."""
    run, children = _start_run(tmp_path)
    assert children and _traces(run.pid)["swaps"] and list(run_dir.glob("*.json"))
    reapers = _processes_mentioning(str(run_dir))
    assert len(reapers) == 1
    if group:
        os.killpg(run.pid, signum)
    else:
        run.send_signal(signum)
    run.wait(timeout=60)
    assert _wait_for(lambda: not any(_traces(run.pid).values())), _traces(run.pid)
    assert _wait_for(lambda: not any(alive(pid) for pid in children)), "the child outlived it"
    assert _wait_for(lambda: not alive(reapers[0])), "the reaper stayed"
    assert list(run_dir.glob("*.json")) == []
    run.stderr.close()


def test_swap_files_are_per_run_and_an_existing_file_is_never_deleted(tmp_path):
    first, second = SwapFile(2**20), SwapFile(2**20)
    assert first.path != second.path and f"edgecaffe-{os.getpid()}-" in first.path.name
    existing = Path("/var/tmp") / f"edgecaffe-test-{os.getpid()}.swap"
    existing.write_bytes(b"someone else's file")
    try:
        with pytest.raises(LimitError, match="cannot set up the swap file"), \
                SwapFile(2**20, existing):
            pass
        assert existing.read_bytes() == b"someone else's file"
    finally:
        existing.unlink()


def test_cgroup_names_carry_the_pid_and_differ():
    first, second = MemoryCgroup(2**30), MemoryCgroup(2**30)
    assert first.path != second.path
    assert first.path.name.startswith(f"edgecaffe-{os.getpid()}-")


def _ours(found):
    """Leftovers other than an older edgecaffe's fixed swap path (another checkout on this
    machine may be using it right now)."""
    return [(kind, path) for kind, path in found if kind != "legacy swap"]


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture
def left_behind(run_dir):
    """What a SIGKILLed run of an older version leaves: a cgroup with a process inside, an
    active swap file, a run record, all named after a pid that is gone."""
    pid = _dead_pid()
    cgroup = cgroup_dirs()[0] / f"edgecaffe-{pid}-1"
    cgroup.mkdir()
    sleeper = subprocess.Popen(["sleep", "300"])
    (cgroup / "cgroup.procs").write_text(str(sleeper.pid))
    swap = Path("/var/tmp") / f"edgecaffe-{pid}-2.swap"
    with open(swap, "xb") as handle:
        os.posix_fallocate(handle.fileno(), 0, 16 * 2**20)
    swap.chmod(0o600)
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    subprocess.run(["swapon", str(swap)], check=True, capture_output=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    RunRecord(pid, 12345, [str(cgroup)], str(swap), [[sleeper.pid, leftovers.start_ticks(
        sleeper.pid)]], path=str(run_dir / f"{pid}.json")).save()
    yield pid, cgroup, swap, sleeper
    sleeper.kill()
    sleeper.wait()
    leftovers.remove_leftovers([("cgroup", str(cgroup)), ("swap", str(swap))])


def test_cleanup_finds_and_removes_what_a_dead_run_left(left_behind, capsys):
    _pid, cgroup, swap, sleeper = left_behind
    assert main(["cleanup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would remove cgroup {cgroup}" in out and f"would remove swap {swap}" in out
    assert f"would remove process {sleeper.pid}" in out
    assert cgroup.is_dir() and str(swap) in active_swaps()  # a dry run changes nothing
    assert main(["cleanup"]) == 0
    out = capsys.readouterr().out
    assert f"killed orphan process {sleeper.pid}" in out
    assert f"removed cgroup {cgroup}" in out
    assert f"swap file {swap}: turned off and deleted" in out
    sleeper.wait(timeout=10)
    assert not cgroup.exists() and not swap.exists() and str(swap) not in active_swaps()
    assert _ours(find_leftovers()) == []


def test_cleanup_leaves_a_live_run_alone(run_dir):
    record = RunRecord.create()  # this process: alive
    cgroup = cgroup_dirs()[0] / f"edgecaffe-{os.getpid()}-999"
    cgroup.mkdir()
    try:
        record.cgroups.append(str(cgroup))
        record.save()
        assert _ours(find_leftovers()) == []
    finally:
        cgroup.rmdir()
        record.forget()


def test_a_new_run_reports_leftovers_before_it_starts(left_behind, tmp_path, capsys):
    _pid, cgroup, *_ = left_behind
    main(["experiment", "--networks", "TinyAlex", "--n-arrivals", "1", "--enforce-memory",
          "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "earlier runs left" in err and f"cgroup {cgroup}" in err
    assert "edgecaffe cleanup" in err
