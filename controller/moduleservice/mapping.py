"""Event mapping: which Service keys an object change concerns. Pure functions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .desired import SERVICE_SUFFIX, service_name

__all__ = [
    "ServiceKey",
    "md_keys",
    "md_module",
    "md_service_change",
    "pod_in_scope",
    "pod_keys",
    "pod_modules",
    "pod_ready",
    "pod_relevant_change",
    "service_in_scope",
    "service_key",
]


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    """The work-queue item: a Service by namespace and name. Never an event or an object."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def md_module(md: Mapping[str, Any]) -> str:
    """The module name of a ModuleDeployment; "" when missing (its key is then "-service", which can
    never be a real Service, so the reconcile only reports InvalidSpec)."""
    spec = md.get("spec")
    try:
        name = spec["template"]["spec"]["module"]["name"]  # type: ignore[index]
    except (KeyError, TypeError):
        return ""
    return name if isinstance(name, str) else ""


def _ns(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")


def md_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> set[ServiceKey]:
    """Keys of the old and the new module name (a rename must clean up the old Service)."""
    return {ServiceKey(_ns(o), service_name(md_module(o))) for o in (old, new) if o is not None}


def service_key(svc: Mapping[str, Any]) -> ServiceKey | None:
    name = str((svc.get("metadata") or {}).get("name") or "")
    # Only names we could ever own; a foreign Service with such a name matters (NameConflict).
    return ServiceKey(_ns(svc), name) if name.endswith(SERVICE_SUFFIX) else None


def service_in_scope(svc: Mapping[str, Any]) -> bool:
    """Whether the Service cache keeps it: only names we could ever own."""
    return service_key(svc) is not None


def pod_in_scope(pod: Mapping[str, Any], label_prefix: str) -> bool:
    """Whether the Pod cache keeps it: only Pods with at least one module label; the rest of a large
    cluster's Pods would otherwise decide the controller's memory."""
    return next(pod_modules(pod, label_prefix), None) is not None


def pod_modules(pod: Mapping[str, Any], label_prefix: str) -> Iterator[tuple[str, str]]:
    """(module, label value) for every module label of the Pod."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    for key, value in labels.items():
        if key.startswith(label_prefix) and len(key) > len(label_prefix):
            yield key[len(label_prefix):], value


def pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def pod_keys(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, label_prefix: str) -> set[ServiceKey]:
    return {
        ServiceKey(_ns(o), service_name(module))
        for o in (old, new) if o is not None
        for module, _ in pod_modules(o, label_prefix)
    }


def md_service_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a ModuleDeployment update can change its Service: its spec (and generation), its deletion,
    a new incarnation. A change of status alone cannot; most are our own status writes coming back."""
    om, nm = old.get("metadata") or {}, new.get("metadata") or {}
    return (
        old.get("spec") != new.get("spec")
        or any(om.get(k) != nm.get(k) for k in ("generation", "deletionTimestamp", "uid", "creationTimestamp"))
    )


def pod_relevant_change(old: Mapping[str, Any], new: Mapping[str, Any], label_prefix: str) -> bool:
    """Only module labels and readiness feed our status; other Pod updates are noise."""
    return (
        dict(pod_modules(old, label_prefix)) != dict(pod_modules(new, label_prefix))
        or pod_ready(old) != pod_ready(new)
        or bool((old.get("metadata") or {}).get("deletionTimestamp"))
        != bool((new.get("metadata") or {}).get("deletionTimestamp"))
    )
