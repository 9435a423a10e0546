"""Errors shared by the framework's parts that are not API errors (those live in ``kube.errors``)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the flag."""
