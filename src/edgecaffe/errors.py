"""The project's own error types, under one base.

Everything the `edgecaffe` command prints as a one-line user error derives from `EdgeCaffeError`;
any other exception is a bug and is reported as an internal error with its traceback. The classes
stay importable from where they were first defined (`edgecaffe.model.errors.ModelError`,
`edgecaffe.ops.base.OpError`, ...). `EdgeCaffeError` keeps `ValueError` as a base so callers that
caught `ValueError` before still work.
"""


class EdgeCaffeError(ValueError):
    """Bad input or an environment we cannot use; the message names file, key or flag and why."""


class UsageError(EdgeCaffeError):
    """A command-line flag or argument combination that cannot be used."""


class ConfigError(EdgeCaffeError):
    """A setting that cannot be used (a config key, a flag, an engine argument: mode, policy,
    granularity, workers, budget); names the file or argument, the value and what is allowed."""


class LimitError(EdgeCaffeError):
    """A real memory limit that cannot be set up: not root, no memory cgroup, swapon refused."""


class DeviceError(EdgeCaffeError):
    """A device profile that cannot be used; names the file and key."""


class ReportError(EdgeCaffeError):
    """Results folders a report cannot be made from; names the folder and file."""

