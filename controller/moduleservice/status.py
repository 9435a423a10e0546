"""``status.moduleService`` of a ModuleDeployment, computed purely.

Only this sub-object is ours: Koupleless' module-controller owns the rest of the status. We write it
through the status subresource with a merge patch, and only when it differs from what is cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import reasons
from .desired import DesiredService, ModuleDeploymentView, service_name

__all__ = [
    "REASON_DISABLED",
    "REASON_INVALID",
    "REASON_NAME_CONFLICT",
    "REASON_PENDING",
    "REASON_PORT_CONFLICT",
    "REASON_READY",
    "REASON_WRITE_FAILED",
    "Outcome",
    "module_service_status",
    "status_patch",
]

REASON_READY = reasons.READY
REASON_DISABLED = reasons.DISABLED
REASON_NAME_CONFLICT = reasons.NAME_CONFLICT
REASON_PORT_CONFLICT = reasons.PORT_CONFLICT
REASON_INVALID = reasons.INVALID
REASON_PENDING = reasons.PENDING
REASON_WRITE_FAILED = reasons.WRITE_FAILED


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the reconcile of one Service key found, shared by all ModuleDeployments of that key."""

    desired: DesiredService | None
    service: Mapping[str, Any] | None  # the live Service (after our write), if any and ours
    name_conflict: bool
    pods: int
    ready_pods: int
    # The last Service write of this key failed with this (the API's answer); None once one succeeds.
    write_error: str | None = None
    # The other API group whose ModuleDeployments own the Service holding the name, if any.
    foreign_group: str | None = None


def _condition(status: str, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "observedGeneration": generation}


def module_service_status(md: ModuleDeploymentView, outcome: Outcome) -> dict[str, Any]:
    """The full ``status.moduleService`` this ModuleDeployment should carry (without timestamps)."""
    gen = md.generation
    base: dict[str, Any] = {"observedGeneration": gen}
    if not md.enabled:
        return {**base, "conditions": [_condition("False", REASON_DISABLED, "enableModuleService is not true", gen)]}
    name = service_name(md.module) if md.module else None
    if name:
        base["serviceName"] = name
    if md.problems:
        return {**base, "conditions": [_condition("False", REASON_INVALID, "; ".join(md.problems), gen)]}
    if outcome.name_conflict:
        if outcome.foreign_group is not None:
            msg = (f"Service {name} belongs to the ModuleDeployments of API group {outcome.foreign_group} "
                   "(another install of module-service-controller); it is left untouched")
        else:
            msg = f"Service {name} exists and is not managed by module-service-controller; it is left untouched"
        return {**base, "conditions": [_condition("False", REASON_NAME_CONFLICT, msg, gen)]}
    if outcome.write_error is not None:
        return {**base, "conditions": [_condition("False", REASON_WRITE_FAILED, outcome.write_error, gen)]}
    desired = outcome.desired
    svc = outcome.service
    if desired is None or svc is None:
        return {**base, "conditions": [_condition("False", REASON_PENDING, "waiting for the Service", gen)]}
    spec = svc.get("spec") or {}
    ports = spec.get("ports") or [{}]
    out: dict[str, Any] = {
        **base,
        "type": spec.get("type"),
        "clusterIP": spec.get("clusterIP"),
        "port": desired.port.port,
        "targetPort": desired.port.target_port,
        "nodePort": ports[0].get("nodePort"),
        "pods": outcome.pods,
        "readyPods": outcome.ready_pods,
    }
    out = {k: v for k, v in out.items() if v is not None}
    mine = desired.conflicts.get(md.name)
    if mine is not None:
        msg = (f"asks for port {mine} but the oldest ModuleDeployment {desired.winner} sets {desired.port}; "
               f"the Service uses {desired.port}")
        out["conditions"] = [_condition("False", REASON_PORT_CONFLICT, msg, gen)]
    else:
        out["conditions"] = [_condition("True", REASON_READY, f"Service {name} serves port {desired.port}", gen)]
    return out


def status_patch(
    current: Mapping[str, Any] | None, wanted: dict[str, Any], now: str
) -> dict[str, Any] | None:
    """Merge patch for ``status.moduleService`` or None when nothing changed.

    ``lastTransitionTime`` moves only when the condition's status changes (Kubernetes convention), so a
    repeated reconcile produces an identical object and no write.
    """
    current = current or {}
    old_cond = next(iter(current.get("conditions") or []), None) or {}
    new_cond = dict(wanted["conditions"][0])
    if old_cond.get("status") == new_cond["status"] and old_cond.get("lastTransitionTime"):
        new_cond["lastTransitionTime"] = old_cond["lastTransitionTime"]
    else:
        new_cond["lastTransitionTime"] = now
    full = {**wanted, "conditions": [new_cond]}
    if full == dict(current):
        return None
    # Keys we no longer set are removed explicitly (merge-patch null), lists are replaced whole.
    body: dict[str, Any] = {k: None for k in current if k not in full}
    body.update(full)
    return {"status": {"moduleService": body}}
