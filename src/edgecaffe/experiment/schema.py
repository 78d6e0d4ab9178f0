"""The declared schema of experiment configs: every key's type, range and upper bound, in one table.

Validation is msgspec's (`msgspec.convert` into dataclasses built from `FIELDS`): strict types
(`true` is not a number, `"5"` is not an int, NaN fails every range), ranges and upper bounds.
The bounds keep a typo from exhausting a 512 MB device (`n-arrivals: 10**12` would allocate until
killed, `n-workers: 500` would start 500 threads); `allow-large: true` in the config (or the
`--allow-large` flag) raises them to the `large` column. Errors are one line: file, key (as the
user spelled it), value, what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from edgecaffe.sched import CONTEXTS, GRANULARITIES, MODES, POLICIES
from edgecaffe.workload import SETS

ARRIVAL_MODES = ("batch", "poisson", "stochastic", "random-composition", "all-random")
#: A memory size as text: a number and an optional unit (K, M, G; binary, as the original's).
MEMORY_PATTERN = r"^\s*[0-9]*\.?[0-9]+\s*([kKmMgG]?[iI]?[bB]?)\s*$"
DAY_MS = 86_400_000.0


@dataclass(frozen=True)
class Bound:
    """A numeric key's range: `low` (inclusive unless `low_open`), `high` normally and `large`
    with allow-large (None: no upper bound)."""

    kind: type
    low: float
    high: float | None
    large: float | None
    low_open: bool = False

    def type(self, allow_large: bool) -> Any:
        high = self.large if allow_large else self.high
        meta = {"gt" if self.low_open else "ge": self.kind(self.low)}
        if high is not None:
            meta["le"] = self.kind(high)
        return Annotated[self.kind, msgspec.Meta(**meta)]


BOUNDS: dict[str, Bound] = {
    "workers": Bound(int, 1, 64, 4096),
    "blas_threads": Bound(int, 1, 256, 4096),
    "n_arrivals": Bound(int, 1, 100_000, 100_000_000),
    "mean_gap_ms": Bound(float, 0, DAY_MS, 365 * DAY_MS, low_open=True),
    "seed": Bound(int, 0, 2**32 - 1, 2**63 - 1),
    "multiplier": Bound(float, 0, 1000, 1e9, low_open=True),
    "per_arrival": Bound(int, 1, 64, 4096),
    "repetitions": Bound(int, 1, 1000, 1_000_000),
    "arrival_time_ms": Bound(float, 0, DAY_MS, 365 * DAY_MS),
    "arrivals_count": Bound(int, 0, 100_000, 100_000_000),
    "mem_limit_bytes": Bound(int, 1, 2**40, 2**50),
    "matrix_runs": Bound(int, 1, 10_000, 10_000_000),
}

Memory = Annotated[str, msgspec.Meta(pattern=MEMORY_PATTERN)]
Context = Literal[CONTEXTS]  # type: ignore[valid-type]
Share = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1000)]
Weight = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
NetworkName = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
#: A file or folder name: no NUL byte (the OS refuses those), at most 4096 characters.
PathText = Annotated[str, msgspec.Meta(pattern=r"^[^\x00]*$", max_length=4096)]
Mode = Literal[tuple(MODES)]  # type: ignore[valid-type]
Policy = Literal[tuple(POLICIES)]  # type: ignore[valid-type]
SetName = Literal[tuple(SETS)]  # type: ignore[valid-type]
Names = Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=4096,
                                                  pattern=r"^[^\x00]*$")]],
                  msgspec.Meta(min_length=1, max_length=1000)]


def _fields(large: bool) -> list[tuple[str, Any, Any]]:
    """(canonical key, type, default) of every top-level key: the schema itself."""
    b = {key: bound.type(large) for key, bound in BOUNDS.items()}
    memory = Memory | Annotated[int, msgspec.Meta(ge=1)]
    return [
        ("mode", Mode, "masa"),
        ("policy", Policy | None, None),
        ("mem_limit", memory, "512M"),
        ("granularity", Literal[tuple(GRANULARITIES)], "layer"),  # type: ignore[valid-type]
        ("workers", b["workers"], 2),
        ("blas_threads", b["blas_threads"] | Literal["adaptive"] | None, None),
        ("networks", Names | PathText, ("GenderNet", "FaceNet", "AgeNet")),
        ("arrival_mode", Literal[ARRIVAL_MODES], "batch"),
        ("n_arrivals", b["n_arrivals"], 10),
        ("mean_gap_ms", b["mean_gap_ms"], 1000.0),
        ("seed", b["seed"], 0),
        ("arrivals", Annotated[list[_arrival_type(large)],  # type: ignore[valid-type]
                               msgspec.Meta(max_length=int(BOUNDS["arrivals_count"].large
                                                           if large else
                                                           BOUNDS["arrivals_count"].high))]
         | None, None),
        ("network_path", PathText, "."),
        ("resources_path", PathText, "."),
        ("output", PathText, "results"),
        ("prefix", PathText, ""),
        ("synthetic", bool, False),
        ("set_name", SetName | None, None),
        ("multiplier", b["multiplier"] | None, None),
        ("per_arrival", b["per_arrival"], 3),
        ("matrix", _matrix_type(large) | None, None),
        ("allow_large", bool, False),
        # Gated networks (the context-aware experiment): child -> parent, the context policy,
        # the share of requests whose parent finds something, and how many it finds.
        ("gated", dict[NetworkName, NetworkName] | None, None),
        ("context", Context, "aware"),
        ("context_share", Share, 1.0),
        ("detections", Count | dict[Count, Weight], 1),
        ("pipeline", NetworkName | None, None),
        ("keep_weights", bool, False),
    ]


def _arrival_type(large: bool) -> type:
    network = Annotated[str, msgspec.Meta(min_length=1, max_length=4096,
                                          pattern=r"^[^\x00]*$")] | _OriginalNetwork
    return dataclasses.make_dataclass("Arrival", [
        ("networks", Annotated[list[network], msgspec.Meta(min_length=1, max_length=64)]),
        ("time", BOUNDS["arrival_time_ms"].type(large), 0.0),
        ("pathToData", PathText | None, None),
    ])


@dataclass
class _OriginalNetwork:
    networkName: PathText | None = None  # noqa: N815 (the original's spelling)
    pathToNetwork: PathText | None = None  # noqa: N815


def _matrix_type(large: bool) -> type:
    workers, multiplier = BOUNDS["workers"].type(large), BOUNDS["multiplier"].type(large)
    memory = Memory | Annotated[int, msgspec.Meta(ge=1)]
    def many(kind: Any) -> Any:  # a matrix axis: at most 1000 values
        return Annotated[list[kind], msgspec.Meta(max_length=1000)] | None

    return dataclasses.make_dataclass("Matrix", [
        ("sets", many(SetName | Names), None),
        ("mem_limits", many(memory), None),
        ("modes", many(Mode), None),
        ("policies", many(Policy | None), None),
        ("workers", many(workers), None),
        ("multipliers", many(multiplier | None), None),
        ("contexts", many(Context), None),
        ("context_shares", many(Share), None),
        ("repetitions", BOUNDS["repetitions"].type(large), 1),
    ], kw_only=True)


_SCHEMAS: dict[bool, type] = {}


def schema(allow_large: bool = False) -> type:
    """The config dataclass msgspec validates into (built once per bound set)."""
    if allow_large not in _SCHEMAS:
        fields = [(key, kind, dataclasses.field(default=default))
                  for key, kind, default in _fields(allow_large)]
        _SCHEMAS[allow_large] = dataclasses.make_dataclass("ExperimentSchema", fields)
    return _SCHEMAS[allow_large]


def validate(values: dict[str, Any], spelled: dict[str, str], source: str,
             error: type[Exception]) -> Any:
    """`values` (canonical keys) -> a validated schema instance, or `error` with one line naming
    the source, the key as spelled in `spelled`, the value and what is allowed."""
    allow_large = values.get("allow_large", False) is True
    try:
        return msgspec.convert(values, schema(allow_large), str_keys=True)
    except msgspec.ValidationError as failure:
        raise error(_message(failure, values, spelled, source, allow_large)) from None


_AT = re.compile(r" - at `(?:key` in `)?\$(.*)`$")  # a bad mapping key: "at `key` in `$.x`"


def _message(failure: msgspec.ValidationError, values: dict[str, Any], spelled: dict[str, str],
             source: str, allow_large: bool) -> str:
    text = str(failure)
    match = _AT.search(text)
    expected = text[:match.start()] if match else text
    path = match.group(1) if match else ""
    steps = re.findall(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]", path)
    value: Any = values
    label = []
    for name, index in steps:
        try:
            value = value[int(index)] if index else value[name]
        except (KeyError, IndexError, TypeError):
            value = None
        label.append(f"[{index}]" if index else ("." if label else "") + spelled.get(name, name))
    key = "".join(label) or "config"
    names = [name for name, _ in steps if name]
    allowed = _allowed(names[-1] if names else "", expected)
    hint = ""
    if "<=" in expected and not allow_large:
        hint = " (a larger value needs allow-large: true or --allow-large)"
    return f"{source}: {key}: {_show(value)} is not allowed; {allowed}{hint}"


def _allowed(name: str, expected: str) -> str:
    choices = {"mode": MODES, "modes": MODES, "policy": POLICIES, "policies": POLICIES,
               "granularity": GRANULARITIES, "arrival_mode": ARRIVAL_MODES,
               "set_name": SETS, "sets": SETS, "context": CONTEXTS, "contexts": CONTEXTS}
    if expected.startswith("Invalid enum value") and name in choices:
        return f"choose from {', '.join(choices[name])}"
    if expected.startswith("Invalid enum value") and name == "blas_threads":
        return "choose from adaptive or a count (an integer >= 1)"
    if name in ("mem_limit", "mem_limits"):
        return "expected a memory size: bytes or a number with K, M or G (e.g. 512M, 1G)"
    if "matching regex" in expected and "x00" in expected:
        return "expected a name without NUL characters"
    if expected.startswith("Object contains unknown field"):
        return expected.replace("Object contains", "the mapping has an")
    return expected[0].lower() + expected[1:] if expected else "invalid"


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_memory(value: str | int, key: str, source: str, allow_large: bool,
                 error: type[Exception]) -> int:
    """A memory size in bytes within its bound (`parse_bytes` rules: '512M' = 512 MiB)."""
    from edgecaffe.sched import parse_bytes

    try:
        size = parse_bytes(value)
    except ValueError:
        raise error(f"{source}: {key}: {value!r} is not allowed; expected a positive memory "
                    "size: bytes or a number with K, M or G (e.g. 512M, 1G)") from None
    bound = BOUNDS["mem_limit_bytes"]
    high = bound.large if allow_large else bound.high
    if high is not None and size > high:
        raise error(f"{source}: {key}: {value!r} is not allowed; expected at most "
                    f"{int(high) >> 30} GiB" + ("" if allow_large else
                                                " (a larger value needs allow-large: true or "
                                                "--allow-large)"))
    return size
