"""Experiment configuration: our YAML keys and the original EdgeCaffe's `*.exp.yaml` keys.

Every key can also come from a command-line flag, which overrides the file. Validation happens
before anything runs: an unknown key names the closest valid one, a bad value lists the allowed
values.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecaffe import errors
from edgecaffe.experiment.schema import (  # noqa: F401 (ARRIVAL_MODES: importable here too)
    ARRIVAL_MODES,
    BOUNDS,
    check_memory,
    validate,
)
from edgecaffe.workload import (
    SETS,
    Arrival,
    all_random,
    batches,
    close_normal_gaps,
    poisson,
    random_composition,
    with_detections,
)
from edgecaffe.yamlfile import read_yaml

ConfigError = errors.ConfigError  # defined with the other errors; importable from here too


MATRIX_KEYS = {"sets": "sets", "networks": "sets", "mem_limits": "mem_limits",
               "mem-limits": "mem_limits", "modes": "modes", "policies": "policies",
               "workers": "workers", "n-workers": "workers", "multipliers": "multipliers",
               "contexts": "contexts", "context-shares": "context_shares",
               "context_shares": "context_shares", "repetitions": "repetitions"}
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
    "matrix": "matrix", "allow-large": "allow_large", "allow_large": "allow_large",
    "gated": "gated", "context": "context", "context-share": "context_share",
    "context_share": "context_share", "detections": "detections", "pipeline": "pipeline",
    "keep-weights": "keep_weights", "keep_weights": "keep_weights",
}
#: Canonical key -> the flag that overrides it, for error messages (default: --key-with-dashes).
FLAG_NAMES = {"workers": "--n-workers", "set_name": "--set", "prefix": "--output-prefix",
              "output": "--output"}
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
    blas_threads: int | str | None = None  # a count, "adaptive" or None (adaptive)
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
    #: Lift the schema's upper bounds (experiment/schema.py BOUNDS, the `large` column).
    allow_large: bool = False
    #: Gated networks, child -> parent (sched/requests.py): each runs, per request, on as many
    #: inputs as its parent finds, drawn in advance: a share `context_share` of requests find
    #: something, `detections` times (a count, or {count: weight}). `context`: aware,
    #: oblivious or aware-idle. `pipeline`: a named pipeline's networks and gates instead
    #: (`pipeline_hook`).
    gated: dict[str, str] | None = None
    context: str = "aware"
    context_share: float = 1.0
    detections: int | dict[int, float] = 1
    pipeline: str | None = None
    #: Keep freed weights in memory while the budget has room (`Engine(keep_weights=)`; off:
    #: the paper's load/free).
    keep_weights: bool = False
    source: str = "<flags>"

    def unconditional(self) -> list[str]:
        """The networks every request runs (the gated ones are added per request)."""
        return [name for name in self.networks if name not in (self.gated or {})]

    def all_networks(self) -> list[str]:
        """Every network a run needs: its networks and the gated ones."""
        return list(dict.fromkeys([*self.networks, *(self.gated or {})]))

    def arrivals_networks(self) -> list[str]:
        return [name for arrival in self.arrivals or [] for name in arrival.networks] + \
            list(self.gated or {})

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k not in ("arrivals", "source")}
        data["config_file"] = self.source
        return data


def _error(source: str, message: str) -> ConfigError:
    return ConfigError(f"{source}: {message}")


def _original_arrivals(items: list[Any], source: str, resources: str) -> list[Arrival]:
    """The original's `arrivals:` list (already checked by the schema): time (ms after the
    previous submission), networks ({networkName, pathToNetwork} or names), pathToData."""
    arrivals = []
    for index, item in enumerate(items):
        names = []
        for network in item.networks:
            name = network if isinstance(network, str) else \
                (network.pathToNetwork or network.networkName)
            if not name:
                raise _error(source, f"arrivals[{index}].networks: give networkName or "
                                     "pathToNetwork")
            names.append(name)
        path = str(Path(resources) / item.pathToData) if item.pathToData else None
        if path is not None and not Path(path).is_file():
            raise _error(source, f"arrivals[{index}].pathToData: no image at {path} "
                                 "(relative to resources-path)")
        arrivals.append(Arrival(index, float(item.time), tuple(names), path))
    return arrivals


def _read_keys(path: str | Path | None) -> tuple[dict[str, Any], str]:
    """The file's top-level keys (or none) and the name errors use for it."""
    if path is None:
        return {}, "<flags>"
    suffix = Path(path).suffix.lower()
    if suffix in {".prototxt", ".caffemodel", ".onnx"}:
        how = (f"`edgecaffe experiment --networks {path}`" if suffix == ".onnx" else
               "a package: `edgecaffe split NET.prototxt NET.caffemodel -o pkg/NET`, then "
               "`edgecaffe experiment --networks pkg/NET`")
        raise _error(str(path), f"a model, not an experiment config (YAML); run models with "
                                f"--networks, as {how}")
    loaded = read_yaml(path, ConfigError)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise _error(str(path), "expected a mapping of keys at the top level")
    return loaded, str(path)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None
                ) -> ExperimentConfig:
    """Read a config file (ours or the original's), apply flag overrides (canonical keys), and
    validate every key against the schema (`experiment/schema.py`) before anything runs.

    Raises ConfigError naming the file, the key as spelled, the value and what is allowed."""
    raw, source = _read_keys(path)
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in raw.items():
        if key in IGNORED:
            continue
        if not isinstance(key, str) or key not in KEYS:
            close = difflib.get_close_matches(str(key), list(KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _error(source, f"unknown key {key!r}{hint} (valid keys: "
                                 f"{', '.join(sorted(set(KEYS)))})")
        values[KEYS[key]] = value
        spelled[KEYS[key]] = key
    for key, value in (overrides or {}).items():
        if value is not None:
            values[KEYS.get(key, key)] = value
            canonical = KEYS.get(key, key)
            spelled[canonical] = FLAG_NAMES.get(canonical, "--" + canonical.replace("_", "-"))
    if values.get("matrix") is not None:
        values["matrix"] = _normal_matrix(values["matrix"], source)
    checked = validate(values, spelled, source, ConfigError)
    large = checked.allow_large
    fields = {f.name: getattr(checked, f.name) for f in dataclasses.fields(checked)}
    raw_arrivals = fields.pop("arrivals")
    config = ExperimentConfig(source=source, **fields)
    check_memory(config.mem_limit, spelled.get("mem_limit", "mem_limit"), source, large,
                 ConfigError)
    if config.set_name is not None:
        config.networks = list(SETS[config.set_name])
    if isinstance(config.networks, str):
        config.networks = [n.strip() for n in config.networks.split(",") if n.strip()]
    config.networks = list(config.networks)
    if not config.networks:
        raise _error(source, "networks: give a list of zoo names, package folders or original "
                             "network folders")
    if config.pipeline is not None:
        config.networks, config.gated = pipeline_hook(config.pipeline, source)
    if config.gated:
        _check_gated(config, spelled.get("gated", "gated"))
    if isinstance(config.detections, dict) and sum(config.detections.values()) <= 0:
        raise _error(source, f"{spelled.get('detections', 'detections')}: counts must be whole "
                             "numbers >= 1 with weights >= 0 (not all 0), got "
                             f"{config.detections!r}")
    if config.matrix is not None:
        config.matrix = _checked_matrix(config.matrix, source, large)
    if raw_arrivals is not None:
        config.arrivals = _original_arrivals(raw_arrivals, source, config.resources_path)
    return config


def pipeline_hook(name: str, source: str) -> tuple[list[str], dict[str, str]]:
    """A pipeline's (stage names, {gated stage: parent}), from `edgecaffe.pipeline`
    (a built-in name or a YAML file; its stages' networks are resolved by
    `experiment.networks.resolve_network`). Raises ConfigError when this build has no
    pipeline module or the pipeline is not one an experiment can run."""
    try:
        from edgecaffe.pipeline import gated_networks
    except ImportError:
        raise _error(source, f"pipeline: {name!r}: this build has no pipeline support "
                             "(edgecaffe.pipeline.gated_networks); give networks and gated "
                             "instead") from None
    try:
        networks, gated = gated_networks(name)
    except errors.EdgeCaffeError as error:  # PipelineError: no such pipeline, or too deep
        raise _error(source, f"pipeline: {error}") from None
    return list(networks), dict(gated)


def _check_gated(config: ExperimentConfig, key: str) -> None:
    """Every gated network's parent is an ungated network of the run."""
    unconditional = config.unconditional()
    for child, parent in config.gated.items():
        if parent not in unconditional:
            raise _error(config.source, f"{key}: {child}: its parent {parent!r} is not one of "
                                        f"the ungated networks ({', '.join(unconditional)})")
    if not unconditional:
        raise _error(config.source, f"{key}: every network is gated; at least one must not be")


def _normal_matrix(matrix: Any, source: str) -> Any:
    """Matrix keys in our spelling, single values as one-element lists (then the schema)."""
    if not isinstance(matrix, dict):
        raise _error(source, "matrix: expected a mapping (sets, mem_limits, modes, ...)")
    normal = {}
    for key, value in matrix.items():
        if not isinstance(key, str) or key not in MATRIX_KEYS:
            close = difflib.get_close_matches(str(key), list(MATRIX_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _error(source, f"matrix: unknown key {key!r}{hint}")
        key = MATRIX_KEYS[key]
        if key != "repetitions" and value is not None and not isinstance(value, list):
            value = [value]
        normal[key] = value
    return normal


def _checked_matrix(matrix: Any, source: str, large: bool) -> dict[str, Any]:
    """The validated matrix as a dict; memory sizes and the number of runs within bounds."""
    normal = {f.name: getattr(matrix, f.name) for f in dataclasses.fields(matrix)}
    for limit in normal["mem_limits"] or []:
        check_memory(limit, "matrix.mem_limits", source, large, ConfigError)
    runs = normal["repetitions"]
    for key in ("sets", "mem_limits", "modes", "policies", "workers", "multipliers", "contexts",
                "context_shares"):
        runs *= len(normal[key] or [None])
    bound = BOUNDS["matrix_runs"]
    high = bound.large if large else bound.high
    if high is not None and runs > high:
        raise _error(source, f"matrix: {runs} runs is not allowed; expected at most {high:g}"
                     + ("" if large else " (more need allow-large: true or --allow-large)"))
    return normal


def set_name_of(networks: list[str]) -> str:
    """A folder name for a list of networks: their last path parts joined by '+' (`VGG+AgeNet`),
    never a path; when a name had to be shortened or changed (a folder given by path, unsafe
    characters), a hash of the full list follows so different lists get different names."""
    parts = [re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).name).strip("._") or "net"
             for name in networks]
    label = "+".join(parts)
    if parts != list(networks) or len(label) > 80:
        digest = hashlib.sha1("\0".join(networks).encode()).hexdigest()[:8]
        label = f"{label[:80]}-{digest}"
    return label


def expand_matrix(config: ExperimentConfig) -> list[tuple[str, ExperimentConfig]]:
    """Every run of a matrix config as (results subfolder, config); one run without a matrix."""
    if not config.matrix:
        return [(config.prefix or f"{config.mode}-{config.mem_limit}", config)]
    matrix = config.matrix
    sets = matrix.get("sets") or [config.set_name or config.networks]
    runs = []
    for network_set in sets:
        networks = list(SETS[network_set]) if isinstance(network_set, str) else list(network_set)
        set_label = network_set if isinstance(network_set, str) else set_name_of(networks)
        for limit in matrix.get("mem_limits") or [config.mem_limit]:
            for mode in matrix.get("modes") or [config.mode]:
                for policy in matrix.get("policies") or [config.policy]:
                    for workers in matrix.get("workers") or [config.workers]:
                        for multiplier in matrix.get("multipliers") or [config.multiplier]:
                            for context, share in _contexts(config):
                                for repetition in range(matrix.get("repetitions", 1)):
                                    run = replace(
                                        config, networks=networks, set_name=None,
                                        mem_limit=limit, mode=mode, policy=policy,
                                        workers=workers, multiplier=multiplier, matrix=None,
                                        context=context, context_share=share,
                                        # Common random numbers: one seed per repetition,
                                        # the same for every mode, limit and policy.
                                        seed=config.seed + repetition)
                                    name = f"{mode}{'-' + policy if policy else ''}-w{workers}"
                                    if multiplier is not None:
                                        name += f"-a{multiplier:g}"
                                    if config.gated:
                                        name += f"-{context}-p{share:g}"
                                    runs.append((f"{set_label}/{limit}/{name}-r{repetition}",
                                                 run))
    return runs


def _contexts(config: ExperimentConfig) -> list[tuple[str, float]]:
    """The matrix's (context policy, share) pairs (one, the config's, without a matrix axis)."""
    matrix = config.matrix or {}
    return [(context, share) for context in matrix.get("contexts") or [config.context]
            for share in matrix.get("context_shares") or [config.context_share]]


def arrivals_of(config: ExperimentConfig, service_ms: float | None = None
                ) -> tuple[list[Arrival], bool]:
    """The arrivals to run and whether they form a closed loop. `service_ms` (a request's loads
    and executions run alone: `runner.service_ms`) scales the gap when the config gives a
    multiplier."""
    arrivals, closed_loop = _plain_arrivals(config, service_ms)
    if config.gated:
        arrivals = with_detections(arrivals, config.gated, config.context_share,
                                   config.detections, config.seed)
    return arrivals, closed_loop


def _plain_arrivals(config: ExperimentConfig, service_ms: float | None
                    ) -> tuple[list[Arrival], bool]:
    closed_loop = config.arrival_mode == "batch"
    if config.arrivals is not None:
        return config.arrivals, closed_loop
    networks = config.unconditional()
    if closed_loop:
        return batches(networks, config.n_arrivals), True
    gap = config.mean_gap_ms
    if config.multiplier is not None:
        if not service_ms or not math.isfinite(service_ms):
            raise ConfigError(f"{config.source}: multiplier needs the networks' load and "
                              "execution times (profile the packages: edgecaffe profile)")
        gap = config.multiplier * service_ms
    count, seed = config.n_arrivals, config.seed
    if config.arrival_mode == "poisson":
        return poisson(networks, count, gap, seed), False
    if config.arrival_mode == "random-composition":
        return random_composition(networks, count, gap, seed), False
    if config.arrival_mode == "all-random":
        return all_random(networks, count, config.per_arrival, gap, seed), False
    gaps = close_normal_gaps(count, gap, seed=seed)  # stochastic: the original's normal gaps
    return [Arrival(i, g, tuple(networks)) for i, g in enumerate(gaps)], False
