"""The scheduler core's boundaries, read from the code and checked in a fresh interpreter:
`sched/` imports no model format, kernel or numpy; `sim/` does not import the threaded engine;
and reading the core's objects never changes them (no hidden state)."""

from __future__ import annotations

import ast
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from edgecaffe.sched import LayerInfo, NetworkInfo, Planner

SRC = Path(__file__).resolve().parent.parent / "src" / "edgecaffe"


def imported_modules(folder: Path) -> dict[str, set[str]]:
    """File -> the edgecaffe modules it imports (at any level, lazily or not)."""
    found: dict[str, set[str]] = {}
    for path in folder.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(SRC))] = {n for n in names if n.startswith("edgecaffe")}
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("sched", ("edgecaffe.model", "edgecaffe.ops", "edgecaffe.engine", "edgecaffe.sim",
               "edgecaffe.experiment", "edgecaffe.cli")),
    ("sim", ("edgecaffe.engine",)),
])
def test_no_import_arrow_leaves_the_core(folder, forbidden):
    offending = {path: sorted(n for n in names if n.startswith(forbidden))
                 for path, names in imported_modules(SRC / folder).items()}
    assert not {path: names for path, names in offending.items() if names}


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_importing_the_core_loads_no_numpy_model_or_kernel():
    loaded = loaded_after("import edgecaffe.sched")
    assert "numpy" not in loaded
    assert not {m for m in loaded if m.startswith(("edgecaffe.model", "edgecaffe.ops",
                                                   "edgecaffe.engine"))}


def test_importing_the_simulator_loads_no_engine():
    loaded = loaded_after("import edgecaffe.sim")
    assert not {m for m in loaded if m.startswith("edgecaffe.engine")}


def chain(name: str) -> NetworkInfo:
    layers = [LayerInfo(f"{name}{i}", "Conv", 100, 10, (f"b{i}",), (f"b{i + 1}",))
              for i in range(3)]
    buffers = {f"b{i}": 10 for i in range(4)}
    return NetworkInfo(name, layers, ("b0",), 10, frozenset({"b3"}), buffers)


def test_reading_a_tasks_links_changes_nothing():
    [instance] = Planner("masa").plan(0, [chain("n")])
    before = (instance.linked, [task._deps for task in instance.tasks])
    for task in instance.tasks:
        assert isinstance(task.deps, tuple) and isinstance(task.dependents, tuple)
    assert (instance.linked, [task._deps for task in instance.tasks]) == before
    # Linking is explicit, and shows.
    instance.tasks[-1].after(instance.tasks[0])
    assert instance.linked and instance.tasks[-1].has_own_links


def test_the_cli_gives_the_process_its_warning_display_back():
    from edgecaffe.cli import main

    before = warnings.showwarning
    assert main(["zoo", "list"]) == 0
    assert warnings.showwarning is before


def test_a_package_remembers_a_bounded_number_of_loads(tmp_path, zoo_model):
    from edgecaffe.model.package import open_package, split
    from edgecaffe.model.package.package import LOAD_LOG_LENGTH

    split(list(zoo_model("TinyAlex")), tmp_path / "p")
    package = open_package(tmp_path / "p")
    layer = next(entry["name"] for entry in package.manifest["layers"] if entry.get("weights"))
    for _ in range(LOAD_LOG_LENGTH + 10):
        package.read(layer)
    assert len(package.load_log) == LOAD_LOG_LENGTH


def test_errors_have_their_own_hierarchy():
    from edgecaffe.errors import ConfigError, DeviceError, EdgeCaffeError, LimitError, ReportError
    from edgecaffe.experiment import config
    from edgecaffe.model.errors import ModelError
    from edgecaffe.sched import Core

    for error in (ConfigError, LimitError, DeviceError, ReportError):
        assert issubclass(error, EdgeCaffeError) and not issubclass(error, ModelError)
    assert config.ConfigError is ConfigError
    for bad in ({"mode": "warp"}, {"granularity": "bytes"}, {"policy": "lifo"},
                {"workers": 0}, {"budget": "lots"}):
        with pytest.raises(ConfigError):
            Core({}, **bad)
