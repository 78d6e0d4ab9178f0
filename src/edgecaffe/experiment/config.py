"""Experiment configuration: our YAML keys and the original EdgeCaffe's `*.exp.yaml` keys.

Every key can also come from a command-line flag, which overrides the file. Validation happens
before anything runs: an unknown key names the closest valid one, a bad value lists the allowed
values.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecaffe.model.errors import ModelError
from edgecaffe.sched import GRANULARITIES, MODES, POLICIES, parse_bytes
from edgecaffe.workload import (
    SETS,
    Arrival,
    all_random,
    batches,
    close_normal_gaps,
    poisson,
    random_composition,
)
from edgecaffe.yamlfile import read_yaml


class ConfigError(ModelError):
    """A configuration that cannot run; names the file, the key and what is allowed."""


ARRIVAL_MODES = ("batch", "poisson", "stochastic", "random-composition", "all-random")
MATRIX_KEYS = {"sets": "sets", "networks": "sets", "mem_limits": "mem_limits",
               "mem-limits": "mem_limits", "modes": "modes", "policies": "policies",
               "workers": "workers", "n-workers": "workers", "multipliers": "multipliers",
               "repetitions": "repetitions"}
#: Key -> (canonical key, description). Original spellings map onto ours.
KEYS: dict[str, str] = {
    "mode": "mode", "policy": "policy", "mem_limit": "mem_limit", "mem-limit": "mem_limit",
    "budget": "mem_limit", "granularity": "granularity", "n-workers": "workers",
    "n_workers": "workers", "workers": "workers", "blas-threads": "blas_threads",
    "blas_threads": "blas_threads", "networks": "networks", "arrival-mode": "arrival_mode",
    "arrival_mode": "arrival_mode", "n-arrivals": "n_arrivals", "n_arrivals": "n_arrivals",
    "mean-gap-ms": "mean_gap_ms", "mean_gap_ms": "mean_gap_ms", "seed": "seed",
    "arrivals": "arrivals", "network-path": "network_path", "resources-path": "resources_path",
    "output-path": "output", "output": "output", "output-prefix": "prefix", "prefix": "prefix",
    "synthetic": "synthetic", "set": "set_name", "multiplier": "multiplier",
    "ait-multiplier": "multiplier", "per-arrival": "per_arrival", "per_arrival": "per_arrival",
    "matrix": "matrix",
}
#: Original keys that carry nothing for us (the harness's own bookkeeping).
IGNORED = {"cmd_base", "build_folder", "tag", "memory-key", "arrival-list", "read-config",
           "general-outputfile", "poisson-distribution", "rho", "mst", "iat", "ait",
           "sched-alg"}


@dataclass
class ExperimentConfig:
    mode: str = "masa"
    policy: str | None = None
    mem_limit: str = "512M"
    granularity: str = "layer"
    workers: int = 2
    blas_threads: int | None = None
    networks: list[str] = field(default_factory=lambda: ["GenderNet", "FaceNet", "AgeNet"])
    arrival_mode: str = "batch"
    n_arrivals: int = 10
    mean_gap_ms: float = 1000.0
    seed: int = 0
    arrivals: list[Arrival] | None = None
    network_path: str = "."
    resources_path: str = "."
    output: str = "results"
    prefix: str = ""
    synthetic: bool = False
    #: A built-in network set (workload.SETS); replaces `networks`.
    set_name: str | None = None
    #: Mean gap as a multiple of the mean service time (the sum of the networks' mean
    #: execution times), instead of `mean_gap_ms`.
    multiplier: float | None = None
    #: Networks per arrival for `all-random`.
    per_arrival: int = 3
    #: The paper's design: lists of sets, mem_limits, modes, policies, workers, multipliers, and
    #: repetitions; every combination runs.
    matrix: dict[str, Any] | None = None
    source: str = "<flags>"

    def arrivals_networks(self) -> list[str]:
        return [name for arrival in self.arrivals or [] for name in arrival.networks]

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("arrivals", "source")}
        data["config_file"] = self.source
        return data


def _error(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _original_arrivals(items: Any, source: str, resources: str) -> list[Arrival]:
    """The original's `arrivals:` list: time (ms after the previous submission), networks
    ({networkName, pathToNetwork}), pathToData."""
    if not isinstance(items, list):
        raise _error(source, "`arrivals` must be a list")
    arrivals = []
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "networks" not in item:
            raise _error(source, f"arrivals[{index}] needs `networks` (and `time`, `pathToData`)")
        names = []
        for network in item["networks"]:
            if isinstance(network, dict):
                names.append(str(network.get("pathToNetwork") or network.get("networkName")))
            else:
                names.append(str(network))
        data = item.get("pathToData")
        path = str(Path(resources) / data) if data else None
        if path is not None and not Path(path).is_file():
            raise _error(source, f"arrivals[{index}].pathToData: no image at {path} "
                                 "(relative to resources-path)")
        try:
            gap = float(item.get("time", 0))
        except (TypeError, ValueError):
            raise _error(source, f"arrivals[{index}].time must be a number of ms, got "
                                 f"{item.get('time')!r}") from None
        arrivals.append(Arrival(index, gap, tuple(names), path))
    return arrivals


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> ExperimentConfig:
    """Read a config file (ours or the original's), apply flag overrides, validate."""
    raw: dict[str, Any] = {}
    source = "<flags>"
    if path is not None:
        source = str(path)
        loaded = read_yaml(path, ConfigError)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise _error(source, "expected a mapping of keys at the top level")
        raw.update(loaded)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in IGNORED:
            continue
        if key not in KEYS:
            close = difflib.get_close_matches(key, list(KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _error(source, f"unknown key {key!r}{hint} (valid keys: "
                                 f"{', '.join(sorted(set(KEYS)))})")
        values[KEYS[key]] = value
    for key, value in (overrides or {}).items():
        if value is not None:
            values[KEYS.get(key, key)] = value
    config = ExperimentConfig(source=source)
    raw_arrivals = values.pop("arrivals", None)
    for key, value in values.items():
        setattr(config, key, value)
    _validate(config, source)
    if raw_arrivals is not None:
        config.arrivals = _original_arrivals(raw_arrivals, source, config.resources_path)
    return config


def _choice(source: str, key: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        raise _error(source, f"{key}: {value!r} is not allowed; choose from "
                             f"{', '.join(map(str, allowed))}")


def _validate(config: ExperimentConfig, source: str) -> None:
    _choice(source, "mode", config.mode, list(MODES))
    if config.policy is not None:
        _choice(source, "policy", config.policy, list(POLICIES))
    _choice(source, "granularity", config.granularity, GRANULARITIES)
    _choice(source, "arrival-mode", config.arrival_mode, ARRIVAL_MODES)
    try:
        parse_bytes(config.mem_limit)
    except ValueError as error:
        raise _error(source, f"mem_limit: {error}") from None
    for key in ("workers", "n_arrivals"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _error(source, f"{key}: must be a whole number >= 1, got {value!r}")
    if not isinstance(config.mean_gap_ms, int | float) or config.mean_gap_ms <= 0:
        raise _error(source, f"mean_gap_ms: must be a positive number, got {config.mean_gap_ms!r}")
    if config.set_name is not None:
        _choice(source, "set", config.set_name, list(SETS))
        config.networks = list(SETS[config.set_name])
    if config.multiplier is not None and (not isinstance(config.multiplier, int | float)
                                          or config.multiplier <= 0):
        raise _error(source, f"multiplier: must be a positive number, got {config.multiplier!r}")
    if config.matrix is not None:
        _validate_matrix(config, source)
    if isinstance(config.networks, str):
        config.networks = [n.strip() for n in config.networks.split(",") if n.strip()]
    if not isinstance(config.networks, list) or not config.networks:
        raise _error(source, "networks: give a list of zoo names, package folders or original "
                             "network folders")


def _validate_matrix(config: ExperimentConfig, source: str) -> None:
    matrix = config.matrix
    if not isinstance(matrix, dict):
        raise _error(source, "matrix: expected a mapping (sets, mem_limits, modes, ...)")
    normal = {}
    for key, value in matrix.items():
        if key not in MATRIX_KEYS:
            close = difflib.get_close_matches(key, list(MATRIX_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _error(source, f"matrix: unknown key {key!r}{hint}")
        normal[MATRIX_KEYS[key]] = value
    for key in ("sets", "mem_limits", "modes", "policies", "workers", "multipliers"):
        value = normal.get(key)
        if value is not None and not isinstance(value, list):
            normal[key] = [value]
    for name in normal.get("sets") or []:
        if isinstance(name, str):
            _choice(source, "matrix.sets", name, list(SETS))
    for mode in normal.get("modes") or []:
        _choice(source, "matrix.modes", mode, list(MODES))
    for policy in normal.get("policies") or []:
        _choice(source, "matrix.policies", policy, list(POLICIES))
    for limit in normal.get("mem_limits") or []:
        try:
            parse_bytes(limit)
        except ValueError as error:
            raise _error(source, f"matrix.mem_limits: {error}") from None
    repetitions = normal.get("repetitions", 1)
    if not isinstance(repetitions, int) or repetitions < 1:
        raise _error(source, f"matrix.repetitions: must be >= 1, got {repetitions!r}")
    config.matrix = normal


def expand_matrix(config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """Every run of a matrix config as (results subfolder, config); one run without a matrix."""
    if not config.matrix:
        return [(config.prefix or f"{config.mode}-{config.mem_limit}", config)]
    matrix = config.matrix
    sets = matrix.get("sets") or [config.set_name or config.networks]
    runs = []
    for network_set in sets:
        networks = list(SETS[network_set]) if isinstance(network_set, str) else list(network_set)
        set_label = network_set if isinstance(network_set, str) else "+".join(networks)
        for limit in matrix.get("mem_limits") or [config.mem_limit]:
            for mode in matrix.get("modes") or [config.mode]:
                for policy in matrix.get("policies") or [config.policy]:
                    for workers in matrix.get("workers") or [config.workers]:
                        for multiplier in matrix.get("multipliers") or [config.multiplier]:
                            for repetition in range(matrix.get("repetitions", 1)):
                                run = replace(
                                    config, networks=networks, set_name=None, mem_limit=limit,
                                    mode=mode, policy=policy, workers=workers,
                                    multiplier=multiplier, matrix=None,
                                    # Common random numbers: one seed per repetition, the same
                                    # for every mode, limit and policy.
                                    seed=config.seed + repetition)
                                name = f"{mode}{'-' + policy if policy else ''}-w{workers}"
                                if multiplier is not None:
                                    name += f"-a{multiplier:g}"
                                runs.append((f"{set_label}/{limit}/{name}-r{repetition}", run))
    return runs


def arrivals_of(config: ExperimentConfig, service_ms: float | None = None
                ) -> tuple[list[Arrival], bool]:
    """The arrivals to run and whether they form a closed loop. `service_ms` (the sum of the
    networks' mean execution times) scales the gap when the config gives a multiplier."""
    closed_loop = config.arrival_mode == "batch"
    if config.arrivals is not None:
        return config.arrivals, closed_loop
    if closed_loop:
        return batches(config.networks, config.n_arrivals), True
    gap = config.mean_gap_ms
    if config.multiplier is not None:
        if not service_ms or service_ms == float("inf"):
            raise ConfigError(f"{config.source}: multiplier needs the networks' mean execution "
                              "times (profile the packages)")
        gap = config.multiplier * service_ms
    count, seed = config.n_arrivals, config.seed
    if config.arrival_mode == "poisson":
        return poisson(config.networks, count, gap, seed), False
    if config.arrival_mode == "random-composition":
        return random_composition(config.networks, count, gap, seed), False
    if config.arrival_mode == "all-random":
        return all_random(config.networks, count, config.per_arrival, gap, seed), False
    gaps = close_normal_gaps(count, gap, seed=seed)  # stochastic: the original's normal gaps
    return [Arrival(i, g, tuple(config.networks)) for i, g in enumerate(gaps)], False
