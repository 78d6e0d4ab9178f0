"""`edgecaffe optimal [CONFIG] [flags]`: the exact optimal schedule of a small instance and how
far each policy is from it."""

from __future__ import annotations

import argparse

from edgecaffe.cli.experiment_cmd import FLAGS
from edgecaffe.errors import UsageError


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "optimal", help="exact optimal schedule of a small instance; each policy's gap to it",
        description="Take an experiment configuration (the same file and flags as `edgecaffe "
        "experiment`), build the partial mode's task graph of its requests (up to about 3 "
        "networks, 40 tasks) and find, with OR-Tools CP-SAT, the schedule with the lowest mean "
        "response per network under the memory budget (layer granularity), the dependencies and "
        "the workers. Task durations come from the profile or --device, rounded to --unit-ms. "
        "The schedule is verified by an independent checker, then every mode/policy is "
        "simulated on the same durations and its gap to the optimum printed.",
    )
    parser.add_argument("config", nargs="?", help="experiment YAML (optional)")
    for flag, key, kind, text in FLAGS:
        if key not in ("prefix", "blas_threads", "multiplier"):
            parser.add_argument(flag, dest=key, type=kind, default=None, help=text)
    parser.add_argument("--device", metavar="PROFILE",
                        help="device profile for the durations (host, rpi4-sd or a YAML file)")
    parser.add_argument("--unit-ms", type=float, default=0.1,
                        help="time unit the durations are rounded to (default 0.1 ms)")
    parser.add_argument("--time-limit", type=float, default=60.0, metavar="S",
                        help="solver time limit in seconds (default 60); past it the best "
                        "schedule found is reported as feasible, with the proven bound")
    parser.add_argument("--max-tasks", type=int, default=60,
                        help="refuse larger instances (default 60)")
    parser.add_argument("--candidates", default=None,
                        help="comma-separated modes or mode/policy to compare (default: every "
                        "mode with its own policy, and partial with sjf and hrrn)")
    parser.add_argument("-o", "--output", metavar="FILE.json",
                        help="also write the optimum, its schedule and the gaps as JSON")
    parser.set_defaults(handler=run, synthetic=None)


def requests_of(config, infos: dict) -> list[tuple[float, list]]:
    """Fixed arrival times (ms) and networks. A closed loop's later arrivals depend on the
    schedule, so batch mode optimises one batch."""
    from edgecaffe.experiment.config import arrivals_of
    from edgecaffe.experiment.runner import service_ms

    arrivals, closed_loop = arrivals_of(config, service_ms(config.networks, infos))
    if closed_loop and len(arrivals) > 1:
        print(f"closed-loop batches depend on the schedule: optimising one batch of "
              f"{', '.join(arrivals[0].networks)}")
        arrivals = arrivals[:1]
    requests, at_ms = [], 0.0
    for arrival in arrivals:
        at_ms += arrival.gap_ms
        requests.append((at_ms, [infos[name] for name in arrival.networks]))
    return requests


def run(args: argparse.Namespace) -> int:
    from edgecaffe.optimal.compare import DEFAULT_CANDIDATES, simulate_candidates

    config, requests, instance, device, durations_ms = _build(args)
    schedule = _solve_checked(args, config, requests, instance)
    candidates = [c.strip() for c in args.candidates.split(",")] if args.candidates else \
        list(DEFAULT_CANDIDATES)
    reference = schedule.objective_ms if schedule.optimal else schedule.lower_bound_ms
    results = simulate_candidates(requests, instance, reference, durations_ms, candidates)
    _print_results(results)
    if args.output:
        _write_json(args, config, device, instance, schedule, results)
    return 0


def _build(args: argparse.Namespace):
    """The config, its requests, the exact problem and the device's durations."""
    from edgecaffe.blas import default_blas_threads
    from edgecaffe.experiment.config import load_config
    from edgecaffe.experiment.networks import resolve_infos
    from edgecaffe.optimal import build_instance
    from edgecaffe.sched import parse_bytes
    from edgecaffe.sim import DeviceProfile, load_device

    overrides = {key: getattr(args, key, None) for _, key, _, _ in FLAGS}
    config = load_config(args.config, overrides)
    if config.matrix:
        raise UsageError(f"{config.source}: `optimal` solves one instance; remove the matrix")
    pool = config.arrivals_networks() if config.arrivals is not None else config.networks
    infos = resolve_infos(pool, config)
    requests = requests_of(config, infos)
    device = load_device(args.device) if args.device else DeviceProfile()
    threads = default_blas_threads(config.workers)

    def durations_ms(info, kind: str, layer: str | None) -> float:
        if kind == "init":
            return device.init_ms(info)
        if kind == "load":
            return device.layer_load_ms(info, layer)
        return device.layer_exec_ms(info, layer, threads)

    budget = parse_bytes(config.mem_limit)
    instance = build_instance(requests, budget, config.workers, durations_ms, args.unit_ms,
                              args.max_tasks)
    print(f"instance: {len(instance.networks)} network(s) in {len(requests)} request(s), "
          f"{len(instance.tasks)} tasks, {config.workers} worker(s), budget "
          f"{budget / 2**20:g} MiB, unit {args.unit_ms:g} ms, device {device.name}", flush=True)
    return config, requests, instance, device, durations_ms


def _solve_checked(args: argparse.Namespace, config, requests, instance):
    """The solver's schedule, checked by the independent checker before it is reported."""
    from edgecaffe.optimal import MISSING_ORTOOLS, SolveError, check_schedule, solve
    from edgecaffe.sched import parse_bytes

    try:
        schedule = solve(instance, time_limit_s=args.time_limit)
    except ImportError:
        raise UsageError(MISSING_ORTOOLS) from None
    except SolveError as error:
        raise UsageError(str(error)) from None
    problems = check_schedule(requests, parse_bytes(config.mem_limit), config.workers,
                              instance.durations, schedule.table(), args.unit_ms)
    if problems:  # a solver or model bug: never report such a schedule as optimal
        raise RuntimeError("the solver's schedule failed the independent check: "
                         + "; ".join(problems[:5]))
    what = "optimal" if schedule.optimal else \
        f"best found in {args.time_limit:g} s (proven bound {schedule.lower_bound_ms:.2f} ms)"
    print(f"{what}: mean response {schedule.objective_ms:.2f} ms per network "
          f"(solved in {schedule.solve_time_s:.2f} s; schedule checked: feasible)")
    return schedule


def _print_results(results) -> None:
    print(f"\n{'mode/policy':<20}{'mean ms':>10}{'gap':>9}  check")
    for result in results:
        if result.problems is None:
            verdict = "n/a (whole-model tasks)"
        elif result.problems:
            verdict = f"infeasible: {result.problems[0]}"
        else:
            verdict = "feasible"
        if result.forced:
            verdict += f"; {result.forced} forced admission(s)"
        print(f"{result.label:<20}{result.mean_response_ms:>10.2f}{result.gap:>8.1%}  {verdict}")


def _write_json(args: argparse.Namespace, config, device, instance, schedule, results) -> None:
    import json
    from pathlib import Path

    from edgecaffe.sched import parse_bytes

    Path(args.output).write_text(json.dumps({
        "status": schedule.status, "mean_response_ms": schedule.objective_ms,
        "lower_bound_ms": schedule.lower_bound_ms, "solve_time_s": schedule.solve_time_s,
        "unit_ms": args.unit_ms, "budget_bytes": parse_bytes(config.mem_limit),
        "workers": config.workers, "device": device.name,
        "networks": [{"name": n.name, "arrival_ms": n.release * args.unit_ms, "response_ms": r}
                     for n, r in zip(instance.networks, schedule.responses_ms, strict=True)],
        "schedule": [{"network": key[0], "kind": key[1], "layer": key[2],
                      "start_ms": start * args.unit_ms, "end_ms": end * args.unit_ms,
                      "worker": worker}
                     for key, (start, end, worker) in sorted(
                         schedule.table().items(), key=lambda item: item[1])],
        "policies": [{"label": r.label, "mean_response_ms": r.mean_response_ms,
                      "gap": r.gap, "forced": r.forced,
                      "feasible": None if r.problems is None else not r.problems}
                     for r in results],
    }, indent=2))
    print(f"wrote {args.output}")
