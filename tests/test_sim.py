"""The simulator: schedules worked out by hand, agreement with the independent virtual-clock
driver of the property tests, device profiles, generated networks, and the CLI path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from edgecaffe.cli import main
from edgecaffe.experiment.results import summarize
from edgecaffe.model.package.manifest import PackageError
from edgecaffe.model.package.original import read_original
from edgecaffe.sched import Kind
from edgecaffe.sim import (
    DEVICES,
    DeviceError,
    DeviceProfile,
    Simulator,
    load_device,
    read_generated,
)
from edgecaffe.workload import Arrival, batches
from tests.test_sched_properties import chain, check_ledger, drive, scenarios


def generated(folder: Path, layers: list[tuple[float, float]], name: str = "Gen",
              **extra) -> Path:
    """A `type: generated` description with (loading, execution) ms per layer."""
    folder.mkdir(parents=True, exist_ok=True)
    description = {"type": "generated", "name": name, "num-conv-layers": len(layers),
                   "num-fc-layers": 0, **extra,
                   "layers": [{"name": f"l{i}", "id": i, "loading-duration": load,
                               "execution-duration": execute, "dependsOn": [i - 1]}
                              for i, (load, execute) in enumerate(layers)]}
    (folder / "description.yaml").write_text(yaml.safe_dump(description))
    return folder


def spans(trace) -> dict[str, tuple[float, float]]:
    return {f"{t.kind} {t.layers}": (round(t.start_s * 1e3, 6), round(t.end_s * 1e3, 6))
            for t in trace.tasks}


def test_linear_mode_runs_everything_back_to_back(tmp_path):
    info = read_generated(generated(tmp_path / "g", [(10, 5), (20, 5), (30, 5)],
                                    **{"init-duration": 1}))
    trace = Simulator({"Gen": info}, mode="linear").run(batches(["Gen"], 1))
    assert trace.requests[0].response_s * 1e3 == pytest.approx(1 + 10 + 5 + 20 + 5 + 30 + 5)


def test_partial_mode_on_two_workers_matches_the_schedule_worked_by_hand(tmp_path):
    info = read_generated(generated(tmp_path / "g", [(10, 5), (20, 5), (30, 5)],
                                    **{"init-duration": 1}))
    trace = Simulator({"Gen": info}, mode="partial", workers=2).run(batches(["Gen"], 1))
    # t=1 both workers load l0 and l1; at 11 exec l0 goes before load l2 (created earlier);
    # load l2 follows at 16 on that worker; exec l1 at 21 on the other; exec l2 after 46.
    assert spans(trace) == {
        "init ": (0, 1), "load l0": (1, 11), "load l1": (1, 21), "exec l0": (11, 16),
        "load l2": (16, 46), "exec l1": (21, 26), "exec l2": (46, 51)}
    assert trace.requests[0].response_s * 1e3 == pytest.approx(51)


def test_masa_runs_the_short_network_first(tmp_path):
    short = read_generated(generated(tmp_path / "s", [(2, 2)], name="Short"))
    long = read_generated(generated(tmp_path / "l", [(50, 50), (50, 50)], name="Long"))
    spans_by_policy = {}
    for mode in ("masa", "partial"):
        trace = Simulator({"Long": long, "Short": short}, mode=mode, workers=1).run(
            [Arrival(0, 0.0, ("Long", "Short"))])
        spans_by_policy[mode] = trace.requests[0].network_spans
    assert spans_by_policy["masa"]["Short"][1] < spans_by_policy["partial"]["Short"][1]
    assert spans_by_policy["masa"]["Short"][1] * 1e3 == pytest.approx(4)


def test_gaps_follow_the_engines_driver(tmp_path):
    info = read_generated(generated(tmp_path / "g", [(10, 10)]))
    arrivals = [Arrival(0, 5.0, ("Gen",)), Arrival(1, 3.0, ("Gen",)), Arrival(2, 30.0, ("Gen",))]
    open_loop = Simulator({"Gen": info}, mode="linear").run(arrivals, closed_loop=False)
    assert [r.arrival_s * 1e3 for r in open_loop.requests.values()] == pytest.approx([5, 8, 38])
    closed = Simulator({"Gen": info}, mode="linear").run(arrivals, closed_loop=True)
    # The second waits for the first to finish (at 25), the third for 30 ms after that.
    assert [r.arrival_s * 1e3 for r in closed.requests.values()] == pytest.approx([5, 25, 55])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_the_simulator_agrees_with_an_independent_virtual_clock_driver(scenario):
    """Same scheduler, two drivers: every task starts and ends at the same virtual time on the
    same worker, and the ledger keeps the budget's rules."""
    reference = drive(**scenario)
    requests = sorted(scenario["requests"], key=lambda request: request[0])
    infos = {info.name: info for _, networks in requests for info in networks}
    durations = scenario["durations"]
    simulator = Simulator(infos, mode=scenario["mode"].name, policy=scenario["policy"],
                          budget=scenario["capacity"], granularity=scenario["granularity"],
                          workers=scenario["workers"],
                          task_ms=lambda task: durations[task.id % len(durations)] * 1e3)
    arrivals, previous = [], 0.0
    for index, (at, networks) in enumerate(requests):
        arrivals.append(Arrival(index, (at - previous) * 1e3, tuple(i.name for i in networks)))
        previous = at
    trace = simulator.run(arrivals)
    expected = {t.id: (t.start, t.end, t.worker) for t in reference.started}
    got = {t.task_id: (t.start_s, t.end_s, t.worker) for t in trace.tasks}
    assert got.keys() == expected.keys()
    for task_id, (start, end, worker) in expected.items():
        assert got[task_id][0] == pytest.approx(start) and got[task_id][1] == pytest.approx(end)
        assert got[task_id][2] == worker
    assert all(r.status == "completed" for r in trace.requests.values())
    reference.budget = simulator.budget
    check_ledger(reference)


def test_a_network_that_can_never_fit_fails_alone_without_overcommit(tmp_path):
    small = chain("small", [2])
    big = chain("big", [4000])
    simulator = Simulator({"small": small, "big": big}, mode="partial", budget=20_000,
                          allow_overcommit=False, device=DEVICES["rpi4-sd"])
    trace = simulator.run([Arrival(0, 0, ("big",)), Arrival(1, 0, ("small",))],
                          closed_loop=True)
    statuses = [r.status for r in trace.requests.values()]
    assert statuses == ["failed", "completed"]
    assert "needs" in trace.requests[0].error
    assert simulator.budget.used_bytes == 0


def test_long_runs_can_drop_task_records_but_keep_the_summary(tmp_path):
    info = read_generated(generated(tmp_path / "g", [(1, 2), (3, 4)]))
    arrivals = [Arrival(i, 2.0, ("Gen",)) for i in range(2000)]
    full = Simulator({"Gen": info}).run(arrivals)
    lean_sim = Simulator({"Gen": info}, record_tasks=False, record_ledger=False)
    lean = lean_sim.run(arrivals)
    assert not lean.tasks and not lean.ledger and len(full.tasks) == 2000 * 5
    assert summarize(lean)["mean_network_response_ms"] == pytest.approx(
        summarize(full)["mean_network_response_ms"])
    assert summarize(lean)["makespan_ms"] == pytest.approx(summarize(full)["makespan_ms"])


# -- devices -----------------------------------------------------------------------------------


def test_device_profiles_scale_execution_and_derive_loads_from_bandwidth():
    info = chain("c", [8, 8])
    layer = info.layers[0]
    assert layer.exec_ms is None and layer.flops > 0
    device = DeviceProfile("d", compute_factor=3.0, storage_mb_per_s=40.0, load_latency_ms=0.5,
                           gflops=2.0)
    assert device.layer_load_ms(info, layer.name) == pytest.approx(
        0.5 + layer.weight_bytes / 40e3)
    assert device.layer_exec_ms(info, layer.name) == pytest.approx(layer.flops / 2e6)
    profiled = info.layers[1].__class__(**{**info.layers[1].__dict__, "exec_ms": 4.0,
                                           "load_ms": 1.5})
    info.layers[1] = profiled
    info.__dict__.pop("_by_name", None)
    assert device.layer_exec_ms(info, profiled.name) == pytest.approx(12.0)
    assert DeviceProfile().layer_load_ms(info, profiled.name) == pytest.approx(1.5)
    with pytest.raises(DeviceError, match="no profiled load time"):
        DeviceProfile().layer_load_ms(info, layer.name)


def test_simulated_load_tasks_take_the_device_time(tmp_path):
    info = chain("c", [64, 64])
    device = DEVICES["rpi4-sd"]
    trace = Simulator({"c": info}, mode="linear", device=device).run(batches(["c"], 1))
    loads = [t for t in trace.tasks if t.kind == "load"]
    for task in loads:
        nbytes = info.layer(task.layers).weight_bytes
        assert (task.end_s - task.start_s) * 1e3 == pytest.approx(0.2 + nbytes / 40e3)
    assert {t.kind for t in trace.tasks} == {k.name.lower() for k in Kind}


def test_device_yaml_files_and_their_errors(tmp_path):
    good = tmp_path / "pi.yaml"
    good.write_text("compute-factor: 8\nstorage_mb_per_s: 25\ngflops: 1.5\ncores: 4\n")
    device = load_device(good)
    assert (device.name, device.compute_factor, device.storage_mb_per_s, device.gflops,
            device.cores) == ("pi", 8.0, 25.0, 1.5, 4)
    assert load_device(None) == DeviceProfile() and load_device("rpi4-sd") is DEVICES["rpi4-sd"]
    cases = {"compute-factr: 2\n": "did you mean 'compute-factor'",
             "compute-factor: -1\n": "must be a positive number",
             "gflops: fast\n": "must be a positive number",
             "cores: 2.5\n": "cores must be a positive integer",
             "compute-factor: [1\n": "malformed YAML", "- 1\n": "expected a mapping"}
    for text, message in cases.items():
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(DeviceError, match=message) as error:
            load_device(bad)
        assert str(bad) in str(error.value)
    with pytest.raises(DeviceError, match="neither a built-in profile"):
        load_device(tmp_path / "missing.yaml")


# -- generated networks ------------------------------------------------------------------------


def test_generated_networks_keep_their_times_stages_and_optional_memory(tmp_path):
    folder = generated(tmp_path / "g", [(10, 1), (20, 2), (30, 3)], **{"num-conv-layers": 2,
                       "input-bytes": "1K"})
    description = yaml.safe_load((folder / "description.yaml").read_text())
    description["layers"][0]["weight-bytes"] = "2M"
    description["layers"][0]["output-bytes"] = 4096
    (folder / "description.yaml").write_text(yaml.safe_dump(description))
    info = read_generated(folder)
    assert [layer.stage for layer in info.layers] == ["conv", "conv", "fc"]
    assert [layer.load_ms for layer in info.layers] == [10, 20, 30]
    assert all(layer.weighted for layer in info.layers)
    assert info.layers[0].weight_bytes == 2 * 2**20 and info.layers[0].output_bytes == 4096
    assert info.input_bytes == 1024 and info.mean_exec_ms == 6
    simulator = Simulator({"Gen": info}, mode="deepeye", budget="512M")
    trace = simulator.run(batches(["Gen"], 2), closed_loop=True)
    assert all(r.status == "completed" for r in trace.requests.values())
    assert simulator.budget.peak_bytes >= 2 * 2**20 + 4096


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("layers"), "non-empty list"),
    (lambda d: d["layers"][1].pop("execution-duration"), r"layers\[1\] \(l1\) has no "
                                                         "execution-duration"),
    (lambda d: d["layers"][0].update({"loading-duration": "slow"}), "must be a number of ms"),
    (lambda d: d["layers"][0].update({"weight-bytes": "lots"}), "must be a size"),
    (lambda d: d["layers"][0].update({"execution-duration": -1}), "must not be negative"),
])
def test_generated_descriptions_with_errors_are_named(tmp_path, change, message):
    folder = generated(tmp_path / "g", [(1, 1), (2, 2)])
    description = yaml.safe_load((folder / "description.yaml").read_text())
    change(description)
    (folder / "description.yaml").write_text(yaml.safe_dump(description))
    with pytest.raises(DeviceError, match=message) as error:
        read_generated(folder)
    assert "description.yaml" in str(error.value)


def test_a_real_run_of_a_generated_network_says_it_is_simulation_only(tmp_path):
    folder = generated(tmp_path / "g", [(1, 1)])
    with pytest.raises(PackageError, match="--simulate"):
        read_original(folder)


# -- the CLI -----------------------------------------------------------------------------------


def test_experiment_simulate_writes_results_that_report_reads(tmp_path, capsys):
    generated(tmp_path / "nets" / "GenA", [(10, 5), (20, 5)], name="GenA")
    generated(tmp_path / "nets" / "GenB", [(1, 40)], name="GenB")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "network-path": str(tmp_path / "nets"), "networks": ["GenA", "GenB"],
        "arrival-mode": "poisson", "n-arrivals": 6, "mean-gap-ms": 30,
        "matrix": {"modes": ["masa", "bulk"], "mem_limits": ["512M"]}}))
    assert main(["experiment", str(config), "--simulate", "--device", "rpi4-sd",
                 "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("6/6 requests") == 2 and "simulated" in printed
    runs = sorted((tmp_path / "out").glob("*/*/*/summary.json"))
    assert len(runs) == 2
    for summary_path in runs:
        folder = summary_path.parent
        for name in ("tasks.csv", "requests.csv", "networks.csv", "ledger.csv", "workers.csv",
                     "config.yaml"):
            assert (folder / name).is_file()
        resolved = yaml.safe_load((folder / "config.yaml").read_text())
        assert resolved["simulated"] is True and resolved["device"]["name"] == "rpi4-sd"
        assert resolved["policy"] in ("masa", "fcfs")
        totals = resolved["network_totals_ms"]
        assert totals["GenA"] == [30.0, pytest.approx(10 * 10.9)]
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "masa (sim rpi4-sd)" in report and "bulk (sim rpi4-sd)" in report
    row = next(line for line in report.splitlines() if "masa (sim" in line)
    ratio = float(row.split("|")[8])
    assert ratio >= 1.0 and math.isfinite(ratio)


def test_simulate_refuses_options_that_only_mean_something_for_real_runs(tmp_path, capsys):
    generated(tmp_path / "nets" / "G", [(1, 1)])
    base = ["experiment", "--network-path", str(tmp_path / "nets"), "--networks", "G",
            "-o", str(tmp_path / "out")]
    assert main([*base, "--device", "rpi4-sd"]) != 0
    assert "--device needs --simulate" in capsys.readouterr().err
    assert main([*base, "--simulate", "--enforce-memory"]) != 0
    assert "a simulated one uses no memory" in capsys.readouterr().err
    assert main([*base, "--simulate", "--device", "nowhere.yaml"]) != 0
    assert "neither a built-in profile" in capsys.readouterr().err


def test_tasks_running_together_share_the_devices_parallelism(tmp_path):
    short = read_generated(generated(tmp_path / "s", [(10, 0)], name="S"))
    long = read_generated(generated(tmp_path / "l", [(30, 0)], name="L"))
    infos = {"S": short, "L": long}
    arrivals = [Arrival(0, 0.0, ("S", "L"))]
    free = Simulator(infos, mode="partial", workers=2).run(arrivals)
    assert spans(free)["load l0"] in {(0, 10), (0, 30)}
    shared = Simulator(infos, mode="partial", workers=2,
                       device=DeviceProfile(parallelism=1.0)).run(arrivals)
    loads = sorted((t.start_s * 1e3, t.end_s * 1e3) for t in shared.tasks if t.kind == "load")
    # Both at half speed until the short one ends at 20 ms (10 ms of work done each); the long
    # one's last 20 ms of work then run alone at full speed.
    assert loads[0] == pytest.approx((0, 20)) and loads[1] == pytest.approx((0, 40))
    half = Simulator(infos, mode="partial", workers=2,
                     device=DeviceProfile(parallelism=1.5)).run(arrivals)
    loads = sorted((t.start_s * 1e3, t.end_s * 1e3) for t in half.tasks if t.kind == "load")
    assert loads[0] == pytest.approx((0, 10 / 0.75)) and loads[1] == pytest.approx(
        (0, 10 / 0.75 + 20))
    with pytest.raises(DeviceError, match="parallelism"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("parallelism: fast\n")
        load_device(bad)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_lean_bookkeeping_schedules_exactly_like_the_full_ledger(scenario):
    """Without a ledger the scheduler frees precomputed byte counts instead of per-key
    reservations: the schedule, the peak and the forced admissions must not change."""
    requests = sorted(scenario["requests"], key=lambda request: request[0])
    infos = {info.name: info for _, networks in requests for info in networks}
    durations = scenario["durations"]
    arrivals, previous = [], 0.0
    for index, (at, networks) in enumerate(requests):
        arrivals.append(Arrival(index, (at - previous) * 1e3, tuple(i.name for i in networks)))
        previous = at
    outcomes = []
    for record in (True, False):
        simulator = Simulator(infos, mode=scenario["mode"].name, policy=scenario["policy"],
                              budget=scenario["capacity"], granularity=scenario["granularity"],
                              workers=scenario["workers"], record_ledger=record,
                              task_ms=lambda task: durations[task.id % len(durations)] * 1e3)
        trace = simulator.run(arrivals)
        outcomes.append(({t.task_id: (t.start_s, t.end_s, t.worker) for t in trace.tasks},
                         simulator.budget.peak_bytes, simulator.scheduler.forced_events,
                         simulator.budget.used_bytes))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][3] == 0


def test_device_command_writes_a_profile_the_simulator_reads(tmp_path, capsys):
    out = tmp_path / "host.yaml"
    assert main(["device", "--threads", "2", "-o", str(out)]) == 0
    assert "concurrent tasks ran" in capsys.readouterr().out
    device = load_device(out)
    assert device.name == "host-measured" and 1.0 <= device.parallelism <= 2.0
    assert main(["device", "--threads", "1"]) == 1
    assert "--threads must be 2 or more" in capsys.readouterr().err


def one_exec_network(name: str, exec_ms: float, single_ms: float):
    """A network of one weightless layer: no load task, init 0 ms, one execution."""
    from edgecaffe.sched import LayerInfo, NetworkInfo

    layer = LayerInfo("conv", "Conv", 0, 4, (f"{name}:in",), (f"{name}:out",),
                      exec_ms=exec_ms, exec_ms_single=single_ms)
    return NetworkInfo(name, [layer], (f"{name}:in",), 4, frozenset({f"{name}:out"}),
                       {f"{name}:in": 4, f"{name}:out": 4}, mean_exec_ms=exec_ms)


@pytest.mark.parametrize(("threads", "a_end_ms", "b_end_ms"), [
    # A runs alone on 2 threads until B arrives (5 ms: half its work), then both on 1: A's
    # other half takes 10 ms (ends at 15), when B has done half of its; B's other half on 2
    # threads takes 5 ms (ends at 20). Worked by hand.
    ("adaptive", 15.0, 20.0),
    (1, 20.0, 25.0),  # fixed counts: each on its own time
    (2, 10.0, 15.0),
])
def test_adaptive_threads_rescale_running_executions_by_hand(threads, a_end_ms, b_end_ms):
    infos = {"A": one_exec_network("A", 10.0, 20.0), "B": one_exec_network("B", 10.0, 20.0)}
    simulator = Simulator(infos, mode="masa", budget="1G", workers=2, blas_threads=threads,
                          device=DeviceProfile(cores=2))
    trace = simulator.run([Arrival(0, 0.0, ("A",)), Arrival(1, 5.0, ("B",))])
    ends = {t.network: round(t.end_s * 1e3, 9) for t in trace.tasks if t.kind == "exec"}
    assert ends == {"A": a_end_ms, "B": b_end_ms}
    assert trace.info["blas_threads"] == threads and trace.info["cores"] == 2
