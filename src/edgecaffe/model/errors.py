"""Errors raised while reading or building models."""


class ModelError(ValueError):
    """A model file or definition that cannot be used; the message names file, layer and why."""
