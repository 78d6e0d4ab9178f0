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
    except yaml.YAMLError as failure:
        raise error(f"{path}: malformed YAML: {failure}") from None
