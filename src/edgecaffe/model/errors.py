"""Errors raised while reading or building models."""

from edgecaffe.errors import EdgeCaffeError


class ModelError(EdgeCaffeError):
    """A model file or definition that cannot be used; the message names file, layer and why."""
