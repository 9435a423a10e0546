"""The ModuleDeployment resource. Its group and version are configuration: a running controller uses
``Profile.resource`` (profiles.py); this constant is the seed profile's, for tests and benchmarks."""

from __future__ import annotations

from .profiles import PROFILES

__all__ = ["MODULE_DEPLOYMENTS"]

MODULE_DEPLOYMENTS = PROFILES["seed"].resource
