"""Experiment configuration: our YAML keys and the original EdgeCaffe's `*.exp.yaml` keys.

Every key can also come from a command-line flag, which overrides the file. Validation happens
before anything runs: an unknown key names the closest valid one, a bad value lists the allowed
values.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgecaffe.model.errors import ModelError
from edgecaffe.sched import GRANULARITIES, MODES, POLICIES, parse_bytes
from edgecaffe.workload import Arrival, batches, poisson


class ConfigError(ModelError):
    """A configuration that cannot run; names the file, the key and what is allowed."""


ARRIVAL_MODES = ("batch", "poisson", "stochastic")
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
    "synthetic": "synthetic",
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
    source: str = "<flags>"

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
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            raise _error(source, f"cannot read: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise _error(source, f"malformed YAML: {error}") from None
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
    if isinstance(config.networks, str):
        config.networks = [n.strip() for n in config.networks.split(",") if n.strip()]
    if not isinstance(config.networks, list) or not config.networks:
        raise _error(source, "networks: give a list of zoo names, package folders or original "
                             "network folders")


def arrivals_of(config: ExperimentConfig) -> tuple[list[Arrival], bool]:
    """The arrivals to run and whether they form a closed loop."""
    closed_loop = config.arrival_mode == "batch"
    if config.arrivals is not None:
        return config.arrivals, closed_loop
    if closed_loop:
        return batches(config.networks, config.n_arrivals), True
    return poisson(config.networks, config.n_arrivals, config.mean_gap_ms, config.seed), False
