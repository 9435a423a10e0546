"""What a ModuleDeployment CRD object tells us, read purely: is our version served, and does its status
schema keep ``status.moduleService`` or silently prune it.

Koupleless' own CRD (koupleless.io) has a structural status without ``moduleService`` and without
``x-kubernetes-preserve-unknown-fields``: the API server drops our field and answers the PATCH with 200.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["not_served_reason", "status_pruned_reason"]


def _version(crd: Mapping[str, Any], version: str) -> Mapping[str, Any] | None:
    for v in (crd.get("spec") or {}).get("versions") or ():
        if isinstance(v, Mapping) and v.get("name") == version:
            return v
    return None


def not_served_reason(crd: Mapping[str, Any] | None, version: str) -> str | None:
    """Why ModuleDeployments of ``version`` cannot be listed through this CRD now; None when they can."""
    if crd is None:
        return "is not installed"
    v = _version(crd, version)
    if v is None or not v.get("served"):
        return f"does not serve version {version}"
    conditions = (crd.get("status") or {}).get("conditions") or ()
    established = any(c.get("type") == "Established" and c.get("status") == "True"
                      for c in conditions if isinstance(c, Mapping))
    return None if established else "is not established yet"


def status_pruned_reason(crd: Mapping[str, Any], version: str) -> str | None:
    """Why the API server would prune ``status.moduleService`` on this CRD; None when it keeps it."""
    v = _version(crd, version)
    if v is None:
        return None  # not_served_reason covers it; nothing to say about the schema
    if "status" not in (v.get("subresources") or {}):
        return "it has no status subresource"
    schema = (v.get("schema") or {}).get("openAPIV3Schema")
    if not isinstance(schema, Mapping):
        return None
    status = (schema.get("properties") or {}).get("status")
    if status is None:
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return None
        return "its schema has no status property"
    if not isinstance(status, Mapping) or status.get("x-kubernetes-preserve-unknown-fields"):
        return None
    if "moduleService" in (status.get("properties") or {}):
        return None
    return ("its status schema has no moduleService property and no x-kubernetes-preserve-unknown-fields, "
            "so the API server prunes it")
