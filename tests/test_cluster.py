"""Campaigns on a Dask cluster (`experiment --cluster`): local clusters of 2 worker processes on
127.0.0.1, compared with the same matrix run without a cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import read_csv
from edgecaffe.cli import build_parser, main
from edgecaffe.experiment.campaign import write_home
from edgecaffe.experiment.cluster import ClusterError, fits
from edgecaffe.experiment.results import COMPLETE, is_complete

MATRIX = """\
networks: [TinyAlex, TinyResidual]
arrival-mode: {arrival_mode}
mean-gap-ms: 5
n-arrivals: {n}
seed: 11
matrix:
  sets: [[TinyAlex, TinyResidual]]
  mem_limits: [{limits}]
  modes: [masa, bulk]
  repetitions: 2
"""
RUNS = 8  # 2 limits x 2 modes x 2 repetitions
SAME_FILES = ("summary.json", "tasks.csv", "requests.csv", "networks.csv", "ledger.csv",
              "workers.csv")


def _config(folder: Path, arrival_mode: str = "poisson", n: int = 4,
            limits: str = "64M, 1G") -> Path:
    path = folder / f"matrix-{arrival_mode}-{n}.yaml"
    path.write_text(MATRIX.format(arrival_mode=arrival_mode, n=n, limits=limits))
    return path


def _runs(root: Path) -> dict[str, Path]:
    return {p.parent.relative_to(root).as_posix(): p.parent for p in root.rglob("summary.json")}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One zoo cache for this module's tests and workers (set before any worker starts, so
    they inherit it): the tiny networks are built and profiled once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGECAFFE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@contextlib.contextmanager
def local_cluster(scratch: Path, allowed_failures: int = 1):
    """A 2-process local cluster on loopback, as `--cluster local:2` starts it, and a client."""
    import dask
    import distributed

    with dask.config.set({"temporary-directory": str(scratch),
                          "distributed.scheduler.allowed-failures": allowed_failures}), \
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address="127.0.0.1:0", resources={"device": 1},
                local_directory=str(scratch), silence_logs=50) as local, \
            distributed.Client(local) as client:
        yield local, client


@pytest.fixture(scope="module")
def cluster(cache, tmp_path_factory):
    pytest.importorskip("distributed")
    with local_cluster(tmp_path_factory.mktemp("dask")) as pair:
        yield pair


def test_without_the_extra_cluster_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    code = main(["experiment", str(_config(tmp_path)), "--simulate", "--cluster", "local:2",
                 "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "pip install 'edgecaffe[cluster]'" in err
    assert not (tmp_path / "out").exists()


def test_bad_cluster_flags_are_refused_before_anything_runs(tmp_path, capsys):
    pytest.importorskip("distributed")
    config = str(_config(tmp_path))
    assert main(["experiment", config, "--cluster", "127.0.0.1:8786"]) == 1
    assert "give tcp://HOST:PORT" in capsys.readouterr().err
    assert main(["experiment", config, "--cluster", "local:2", "--enforce-memory",
                 "--swap", "1G"]) == 1
    assert "--cluster does not take --swap" in capsys.readouterr().err


def test_placement_needs_the_device_resource_memory_and_name():
    worker = {"name": "rpi4-a", "memory_limit": 2 * 2**30, "resources": {"device": 1}}
    assert fits(worker, 2**30, None)
    assert fits(worker, 2**30, "rpi4")
    assert not fits(worker, 2**30, "jetson")
    assert not fits(worker, 3 * 2**30, None)  # budget above the worker's memory
    assert not fits({**worker, "resources": {}}, 2**30, None)  # no device slot
    assert fits({**worker, "memory_limit": 0}, 64 * 2**30, None)  # 0: unlimited


def test_results_from_a_worker_stay_inside_their_folder(tmp_path):
    with pytest.raises(ClusterError, match="outside its run folder"):
        write_home(tmp_path / "run", {"../escape.txt": b"x"})
    write_home(tmp_path / "run", {"a.csv": b"1,2\n", COMPLETE: b"{}"})
    assert (tmp_path / "run" / "a.csv").read_bytes() == b"1,2\n"


def test_simulated_matrix_on_a_local_cluster_equals_the_local_run(tmp_path, cache, capsys,
                                                                   monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr("edgecaffe.experiment.report_plots.draw_plots", lambda *args, **kw: [])
    config = str(_config(tmp_path))
    assert main(["experiment", config, "--simulate", "-o", str(tmp_path / "local")]) == 0
    assert main(["experiment", config, "--simulate", "-o", str(tmp_path / "cluster"),
                 "--cluster", "local:2"]) == 0
    out = capsys.readouterr().out
    assert f"campaign: {RUNS} done, 0 failed" in out
    local, remote = _runs(tmp_path / "local"), _runs(tmp_path / "cluster")
    assert len(local) == RUNS and set(remote) == set(local)
    for name, folder in local.items():
        for file in SAME_FILES:  # bit-identical numbers, not merely close ones
            assert (remote[name] / file).read_bytes() == (folder / file).read_bytes(), \
                (name, file)
        assert is_complete(remote[name])
    # The gathered folders make the same report's table as the local ones (plots skipped).
    tables = []
    for results in ("local", "cluster"):
        assert main(["report", str(tmp_path / results), "-o", str(tmp_path / f"r-{results}")]) == 0
        tables.append([line for line in (tmp_path / f"r-{results}" / "report.md").read_text()
                       .splitlines() if line.startswith("| TinyAlex+TinyResidual |")])
    assert len(tables[0]) == 4 and tables[1] == tables[0]


def test_real_matrix_on_a_cluster_has_the_local_arrivals_and_seeds(tmp_path, cluster, capsys):
    local_cluster, _ = cluster
    config = str(_config(tmp_path, limits="1G"))  # 2 modes x 2 repetitions (own seeds)
    assert main(["experiment", config, "-o", str(tmp_path / "local")]) == 0
    assert main(["experiment", config, "-o", str(tmp_path / "remote"),
                 "--cluster", local_cluster.scheduler_address]) == 0
    out = capsys.readouterr().out
    assert "worker 0:" in out and "worker 1:" in out  # per-worker activity, both used
    local, remote = _runs(tmp_path / "local"), _runs(tmp_path / "remote")
    assert len(local) == RUNS // 2 and set(remote) == set(local)
    seeds = set()
    for name, folder in local.items():
        ours = yaml.safe_load((folder / "config.yaml").read_text())
        theirs = yaml.safe_load((remote[name] / "config.yaml").read_text())
        assert theirs["arrivals"] == ours["arrivals"]
        assert theirs["seed"] == ours["seed"] and theirs["mode"] == ours["mode"]
        assert theirs["budget_bytes"] == ours["budget_bytes"]
        seeds.add(theirs["seed"])
        requests = read_csv(remote[name] / "requests.csv")
        assert [r["networks"] for r in requests] == [
            r["networks"] for r in read_csv(folder / "requests.csv")]
        assert all(r["status"] == "completed" for r in requests)
        assert (remote[name] / "rss.csv").exists()  # a real run: RSS sampled on the worker
    assert seeds == {11, 12}  # one seed per repetition


def _specs(tmp_path: Path, argv: list[str]):
    from edgecaffe.cli.cluster_cmd import _specs
    from edgecaffe.cli.experiment_cmd import _device, _plan

    args = build_parser().parse_args(["experiment", *argv])
    args.argv = argv
    return _specs(args, _plan(args), _device(args))


def test_a_run_failing_on_a_worker_is_reported_and_retried(tmp_path, cluster):
    from edgecaffe.experiment.campaign import run_campaign

    _, client = cluster
    specs, folders = _specs(tmp_path, [str(_config(tmp_path, "batch", 2)), "-o",
                                       str(tmp_path / "out")])
    specs = specs[:2]
    specs[0].fingerprints = {name: "0" * 16 for name in specs[0].fingerprints}
    lines: list[str] = []
    campaign = run_campaign(client, specs, folders, retries=1, log=lines.append)
    assert (campaign.done, campaign.failed) == (1, 1)
    text = "\n".join(lines)
    assert "has other weights than the submitter's" in text  # the worker's own error
    assert text.count("FAILED on worker") == 2  # first attempt and its one retry
    assert "retry 1 of 1" in text
    assert not is_complete(folders[specs[0].name]) and is_complete(folders[specs[1].name])


def test_a_worker_killed_mid_run_has_its_run_restarted_elsewhere(tmp_path, cache):
    pytest.importorskip("distributed")
    from edgecaffe.experiment.campaign import run_campaign

    # Long enough (hundreds of closed-loop batches) that the kill lands while it runs.
    specs, folders = _specs(tmp_path, [str(_config(tmp_path, "batch", 400)), "-o",
                                       str(tmp_path / "out")])
    specs = specs[:1]
    killed: list[str] = []
    lines: list[str] = []
    with local_cluster(tmp_path / "dask", allowed_failures=1) as (_, client):
        pids = client.run(os.getpid)

        def kill_first(message) -> None:  # SIGKILL the first worker that starts a run
            if message["event"] == "start" and not killed:
                killed.append(message["run"])
                os.kill(pids[message["worker"]], signal.SIGKILL)

        campaign = run_campaign(client, specs, folders, retries=1, log=lines.append,
                                on_event=kill_first)
    text = "\n".join(lines)
    assert killed and f"{killed[0]}: its worker" in text and "restarted on" in text
    assert (campaign.done, campaign.failed) == (1, 0)
    import psutil  # the killed worker's run process died with it: no orphan left

    assert not [p.pid for p in psutil.process_iter(["cmdline"])
                if "edgecaffe.experiment.isolated" in " ".join(p.info["cmdline"] or [])]
    # ... nor its temporary folders: they live in the workers' own directories.
    import tempfile

    assert not [*(tmp_path / "dask").rglob("edgecaffe-*"),
                *Path(tempfile.gettempdir()).glob("edgecaffe-run-*"),
                *Path(tempfile.gettempdir()).glob("edgecaffe-job-*")]
    for spec in specs:
        assert is_complete(folders[spec.name])
        assert len(read_csv(folders[spec.name] / "requests.csv")) == 400


def test_resume_skips_complete_runs_with_and_without_a_cluster(tmp_path, cluster, capsys):
    local_cluster, _ = cluster
    config = str(_config(tmp_path))
    out = tmp_path / "out"
    assert main(["experiment", config, "--simulate", "-o", str(out)]) == 0
    runs = _runs(out)
    first, second, third = sorted(runs)[:3]
    (runs[first] / COMPLETE).unlink()  # interrupted before its marker
    with open(runs[second] / "tasks.csv", "a") as cut:  # a file changed after the marker
        cut.write("truncated")
    before = {name: (folder / COMPLETE).stat().st_mtime_ns for name, folder in runs.items()
              if name not in (first, second)}
    capsys.readouterr()
    assert main(["experiment", config, "--simulate", "-o", str(out), "--resume"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("complete, skipped (--resume)") == RUNS - 2
    assert is_complete(runs[first]) and is_complete(runs[second])
    assert all((runs[name] / COMPLETE).stat().st_mtime_ns == mtime
               for name, mtime in before.items())
    # On a cluster: only the incomplete run is submitted.
    shutil_target = runs[third]
    (shutil_target / COMPLETE).unlink()
    assert main(["experiment", config, "--simulate", "-o", str(out), "--resume",
                 "--cluster", local_cluster.scheduler_address]) == 0
    printed = capsys.readouterr().out
    assert "; 1 runs" in printed and "campaign: 1 done, 0 failed" in printed
    assert is_complete(runs[third])
    assert json.loads((runs[third] / "summary.json").read_text())["completed"] == 4


def test_ctrl_c_cancels_pending_runs_and_stops_running_ones(tmp_path, cluster):
    from edgecaffe.experiment.campaign import run_campaign

    _, client = cluster
    # Runs of thousands of closed-loop batches: far longer than the test waits below.
    specs, folders = _specs(tmp_path, [str(_config(tmp_path, "batch", 5000)), "-o",
                                       str(tmp_path / "out")])

    def interrupt(campaign) -> None:  # the user presses Ctrl-C while both workers run
        if threading.current_thread() is threading.main_thread() and len(campaign.running) == 2:
            raise KeyboardInterrupt

    def runs_in_progress() -> int:  # the runs' own processes under the workers
        import psutil

        def command(child) -> str:  # a child may exit between the listing and this read
            try:
                return " ".join(child.cmdline())
            except psutil.Error:
                return ""

        return sum("edgecaffe.experiment.isolated" in command(child)
                   for child in psutil.Process().children(recursive=True))

    with pytest.raises(KeyboardInterrupt):
        run_campaign(client, specs, folders, retries=0, log=lambda _: None,
                     on_progress=interrupt)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        tasks = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        running = sum(client.run(runs_in_progress).values())
        if tasks == 0 and running == 0:
            break
        time.sleep(0.2)
    assert (tasks, running) == (0, 0)
    assert not any(is_complete(folder) for folder in folders.values())
    # The workers are free for the next campaign.
    assert all(not processing for processing in client.processing().values())


def test_a_local_cluster_listens_on_loopback_only(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    from edgecaffe.cli.cluster_cmd import _client

    monkeypatch.setenv("DASK_TEMPORARY_DIRECTORY", str(tmp_path))
    with contextlib.ExitStack() as stack:
        client = _client("local:2", 1, stack)  # what `--cluster local:2` starts
        pids = {os.getpid(), *client.run(os.getpid).values()}
        pids |= {child.pid for pid in list(pids)
                 for child in psutil.Process(pid).children(recursive=True)}
        listening = [c.laddr for pid in pids for c in psutil.Process(pid).net_connections("inet")
                     if c.status == psutil.CONN_LISTEN]
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    assert len(pids) >= 3 and listening  # this process (scheduler), 2 workers, their nannies
    assert {address.ip for address in listening} <= {"127.0.0.1", "::1"}, listening
    assert all(w["resources"] == {"device": 1} and w["nthreads"] == 1 for w in workers)


def test_real_runs_go_only_to_workers_of_the_named_device(tmp_path, cluster, capsys):
    local_cluster, _ = cluster  # its workers are named 0 and 1
    code = main(["experiment", str(_config(tmp_path)), "-o", str(tmp_path / "out"),
                 "--cluster", local_cluster.scheduler_address, "--worker-device", "rpi4"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("no worker fits a real run") == RUNS
    assert f"campaign: 0 done, {RUNS} failed" in out
    assert not _runs(tmp_path / "out")


@pytest.fixture
def dask_commands(tmp_path, cache):
    """A scheduler and two workers started with the `dask` commands the docs give, on
    loopback: rpi4-a (2 GB) and pi3-b (600 MB, too small for a 1G budget)."""
    pytest.importorskip("distributed")
    import subprocess

    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(tmp_path)}
    loopback = ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    commands = [["scheduler", "--scheduler-file", str(scheduler_file), "--port", "0", *loopback]]
    for name, memory in (("rpi4-a", "2GB"), ("pi3-b", "600MB")):
        commands.append(["worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                         "--resources", "device=1", "--name", name, "--memory-limit", memory,
                         *loopback])
    processes = []
    try:
        for command in commands:
            processes.append(subprocess.Popen([sys.executable, "-m", "dask", *command],
                                              env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            while command[0] == "scheduler" and not scheduler_file.exists():
                time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        import distributed

        with distributed.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for process in reversed(processes):  # workers first, then the scheduler
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.slow  # ~25 s: three `dask` processes start and stop
def test_workers_started_as_the_docs_say_take_the_runs_that_fit(tmp_path, dask_commands,
                                                                capsys):
    assert main(["experiment", str(_config(tmp_path)), "-o", str(tmp_path / "out"),
                 "--cluster", dask_commands]) == 0
    out = capsys.readouterr().out
    assert "2 workers (pi3-b, rpi4-a)" in out
    assert f"campaign: {RUNS} done, 0 failed" in out
    started = [line.split() for line in out.splitlines() if "] started " in line]
    assert len(started) == RUNS
    assert all(worker == "[rpi4-a]" for worker, _, run in started if "/1G/" in run)
    assert len(_runs(tmp_path / "out")) == RUNS


def _limits_available() -> str:
    from edgecaffe.experiment.limits import LimitError, MemoryCgroup

    try:
        MemoryCgroup(2**30)
        return ""
    except LimitError as error:
        return str(error)


@pytest.mark.skipif(bool(_limits_available()), reason=_limits_available() or "available")
def test_enforce_memory_on_a_cluster_limits_each_run_and_cleans_up(tmp_path, cluster, capsys):
    local_cluster, client = cluster
    config = str(_config(tmp_path, limits="256M"))
    assert main(["experiment", config, "-o", str(tmp_path / "out"), "--enforce-memory",
                 "--cluster", local_cluster.scheduler_address]) == 0
    runs = _runs(tmp_path / "out")
    assert len(runs) == RUNS // 2
    for folder in runs.values():
        limits = json.loads((folder / "limits.json").read_text())
        assert limits["limit_bytes"] == 256 * 2**20 and not limits["oom_killed"]
        assert 0 < limits["peak_bytes"] <= 256 * 2**20
        assert limits["exit_code"] == 0
    # Too small for the run's own interpreter: the OOM killer ends it, and it is reported.
    capsys.readouterr()
    small = tmp_path / "small"
    small.mkdir()
    assert main(["experiment", str(_config(small, limits="16M")), "-o", str(tmp_path / "oom"),
                 "--enforce-memory", "--retries", "0",
                 "--cluster", local_cluster.scheduler_address]) == 1
    assert "killed by signal 9, e.g. by the OOM killer" in capsys.readouterr().out
    worker_pids = client.run(os.getpid).values()
    import subprocess

    left = subprocess.run(["find", "/sys/fs/cgroup", "-maxdepth", "5", "-name", "edgecaffe-*"],
                          capture_output=True, text=True, check=False).stdout.split()
    assert not [p for p in left for pid in worker_pids if f"edgecaffe-{pid}-" in p]
