"""Reading the project's YAML inputs (configs, descriptions, device profiles) with errors that
name the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, error: type[Exception]) -> Any:
    """The parsed file; an unreadable or malformed one raises `error` naming it."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as failure:
        raise error(f"{path}: cannot read: {failure.strerror}") from None
    except UnicodeDecodeError:
        raise error(f"{path}: not a YAML file (binary data, not UTF-8 text; an image or a "
                    "model given where a YAML file was expected?)") from None
    except yaml.YAMLError as failure:
        raise error(f"{path}: malformed YAML: {_one_line(failure)}") from None


def _one_line(failure: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: what went wrong, and where."""
    problem = getattr(failure, "problem", None)
    mark = getattr(failure, "problem_mark", None)
    if problem is None or mark is None:
        return " ".join(str(failure).split())
    context = getattr(failure, "context", None)
    return (f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
            + (f" ({context})" if context else ""))
