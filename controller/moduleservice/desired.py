"""The desired Service as a pure function of the ModuleDeployments that want it.

No I/O, no anyio, no client: everything here is deterministic and table-tested. The reconcile key is
the Service ``(namespace, "<module>-service")``; every ModuleDeployment in that namespace naming the
module contributes: the oldest valid one decides port/targetPort and is the
controller owner, all of them are owners, and the others report ``PortConflict`` if they disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .addresses import Addresses

__all__ = [
    "FIELD_MANAGER",
    "GROUP_LABEL",
    "MANAGED_BY_LABEL",
    "MANAGED_BY_VALUE",
    "MD_API_VERSION",
    "MD_KIND",
    "MODULE_LABEL",
    "SERVICE_SUFFIX",
    "DesiredService",
    "ModuleDeploymentView",
    "OwnerRef",
    "Port",
    "adoptable",
    "desired_service",
    "foreign_group",
    "is_managed",
    "module_of_service",
    "owner_groups",
    "parse_module_deployment",
    "service_name",
    "service_patch",
]

FIELD_MANAGER = "module-service-controller"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "module-service-controller"
MODULE_LABEL = "koupleless.alipay.com/module"
# Which install a Service belongs to when it has no owner reference to say so: the API group of the
# ModuleDeployments it serves. Every install sets the managed-by label alike; this one tells them apart.
GROUP_LABEL = "module-service-controller/api-group"
# The seed profile's; a running controller passes its profile's apiVersion (profiles.py) everywhere.
MD_API_VERSION = "koupleless.alipay.com/v1alpha1"
MD_KIND = "ModuleDeployment"
SERVICE_SUFFIX = "-service"
SERVICE_TYPE = "NodePort"
PORT_NAME = "http"

# A module name must make "<name>-service" a DNS-1035 label (<= 63) and "<prefix><name>" a label key
# whose name part is <= 63 and ends alphanumerically: hence <= 55 and this pattern.
_MODULE_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_MAX_MODULE_NAME = 63 - len(SERVICE_SUFFIX)
_IANA_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")


def service_name(module: str) -> str:
    return f"{module}{SERVICE_SUFFIX}"


def module_of_service(name: str) -> str | None:
    return name[: -len(SERVICE_SUFFIX)] if name.endswith(SERVICE_SUFFIX) else None


@dataclass(frozen=True, slots=True)
class Port:
    port: int
    target_port: int | str

    def __str__(self) -> str:
        return f"{self.port}->{self.target_port}"


@dataclass(frozen=True, slots=True)
class ModuleDeploymentView:
    """What this controller reads of a ModuleDeployment."""

    namespace: str
    name: str
    uid: str
    creation_timestamp: str
    generation: int
    module: str
    enabled: bool
    port: Port | None
    problems: tuple[str, ...] = ()
    deleting: bool = False

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def age_key(self) -> tuple[str, str]:
        # RFC 3339 timestamps in UTC sort lexicographically; the name breaks ties.
        return (self.creation_timestamp, self.name)


def _check_port(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"port must be an integer, got {value!r}"
    if not 1 <= value <= 65535:
        return f"port {value} is out of range 1..65535"
    return None


def _check_target_port(value: Any) -> str | None:
    if isinstance(value, bool):
        return f"targetPort must be an integer or a service name, got {value!r}"
    if isinstance(value, int):
        return None if 1 <= value <= 65535 else f"targetPort {value} is out of range 1..65535"
    if isinstance(value, str):
        if value.isdigit():
            return _check_target_port(int(value))
        if _IANA_SVC_NAME.match(value) and re.search("[a-z]", value) and "--" not in value:
            return None
        return f"targetPort {value!r} is not a valid IANA service name"
    return f"targetPort must be an integer or a service name, got {value!r}"


def _get(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def parse_module_deployment(md: Mapping[str, Any]) -> ModuleDeploymentView:
    """Reads and validates the fields we serve; never raises on bad input (it becomes ``problems``)."""
    meta = md.get("metadata") or {}
    raw_module = _get(md, "spec", "template", "spec", "module", "name")
    module = raw_module if isinstance(raw_module, str) else ""
    strategy = _get(md, "spec", "operationStrategy", "serviceStrategy")
    strategy = strategy if isinstance(strategy, Mapping) else {}
    enabled = strategy.get("enableModuleService") is True
    problems: list[str] = []
    port: Port | None = None
    if enabled:
        if not module:
            problems.append("spec.template.spec.module.name is required")
        elif len(module) > _MAX_MODULE_NAME or not _MODULE_NAME.match(module):
            problems.append(
                f"module name {module[:70]!r} does not make a valid Service name: use at most "
                f"{_MAX_MODULE_NAME} lowercase letters, digits and '-', starting with a letter"
            )
        raw_port = strategy.get("port")
        raw_target = strategy.get("targetPort")
        if raw_target is None or (raw_target in (0, "0") and not isinstance(raw_target, bool)):
            # Unset. Koupleless' module-controller writes 0 (the Go zero value of its int-or-string field)
            # into every ModuleDeployment it updates, and a Service's own defaulting reads 0 as "port".
            raw_target = raw_port
        if raw_port is None:
            problems.append("serviceStrategy.port is required when enableModuleService is true")
        elif (msg := _check_port(raw_port)) or (raw_target is not None and (msg := _check_target_port(raw_target))):
            problems.append(f"serviceStrategy.{msg}")
        else:
            target = int(raw_target) if isinstance(raw_target, str) and raw_target.isdigit() else raw_target
            port = Port(int(raw_port), target if target is not None else int(raw_port))
    generation = meta.get("generation")
    return ModuleDeploymentView(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        creation_timestamp=str(meta.get("creationTimestamp") or ""),
        generation=generation if isinstance(generation, int) else 0,
        module=module,
        enabled=enabled,
        port=port,
        problems=tuple(problems),
        deleting=bool(meta.get("deletionTimestamp")),
    )


@dataclass(frozen=True, slots=True)
class OwnerRef:
    name: str
    uid: str
    controller: bool
    api_version: str = MD_API_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version, "kind": MD_KIND, "name": self.name, "uid": self.uid,
            "controller": self.controller, "blockOwnerDeletion": True,
        }


@dataclass(frozen=True, slots=True)
class DesiredService:
    namespace: str
    name: str
    module: str
    port: Port
    selector: Mapping[str, str]
    labels: Mapping[str, str]
    owners: tuple[OwnerRef, ...]
    winner: str
    # contributor name -> the port it asked for, for those that lost to the oldest
    conflicts: Mapping[str, Port] = field(default_factory=dict)
    api_version: str = MD_API_VERSION  # of the owning ModuleDeployments

    @property
    def api_group(self) -> str:
        return self.api_version.split("/", 1)[0]

    def manifest(self, addresses: Addresses | None = None) -> dict[str, Any]:
        """The full object for a create (POST); with ``addresses``, asking for that clusterIP and nodePort."""
        out: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": dict(self.labels),
                "ownerReferences": [o.to_dict() for o in self.owners],
            },
            "spec": {
                "type": SERVICE_TYPE,
                "selector": dict(self.selector),
                "ports": [_port_dict(self.port)],
            },
        }
        return out if addresses is None else addresses.apply(out)


def _port_dict(port: Port, node_port: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": PORT_NAME, "protocol": "TCP", "port": port.port, "targetPort": port.target_port}
    if node_port:
        out["nodePort"] = node_port
    return out


def desired_service(
    namespace: str, module: str, mds: Iterable[ModuleDeploymentView], *, label_prefix: str,
    api_version: str = MD_API_VERSION,
) -> DesiredService | None:
    """None when no valid, enabled, live ModuleDeployment wants ``<module>-service``."""
    contributors = sorted(
        (md for md in mds if md.enabled and md.valid and not md.deleting and md.module == module),
        key=lambda md: md.age_key,
    )
    if not contributors:
        return None
    oldest = contributors[0]
    assert oldest.port is not None  # valid + enabled implies a port
    return DesiredService(
        namespace=namespace,
        name=service_name(module),
        module=module,
        port=oldest.port,
        selector={f"{label_prefix}{module}": "true"},
        labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODULE_LABEL: module, GROUP_LABEL: api_version.split("/", 1)[0]},
        owners=tuple(OwnerRef(md.name, md.uid, i == 0, api_version) for i, md in enumerate(contributors)),
        winner=oldest.name,
        conflicts={md.name: md.port for md in contributors[1:] if md.port is not None and md.port != oldest.port},
        api_version=api_version,
    )


def _ref_group(ref: Mapping[str, Any]) -> str:
    return str(ref.get("apiVersion", "")).split("/", 1)[0]


def _is_md_ref(ref: Mapping[str, Any], group: str) -> bool:
    # Any version of the group: a CRD version bump must not turn our own Services into NameConflicts.
    return ref.get("kind") == MD_KIND and _ref_group(ref) == group


def owner_groups(service: Mapping[str, Any]) -> frozenset[str]:
    """The API groups whose ModuleDeployments own ``service``: those of its owner references to
    ModuleDeployments or, when it has none, the one its group label names. Empty: nobody's.

    Not the managed-by label: every install of this controller sets it alike, so two installs serving
    different groups (a migration from sofa-serverless to Koupleless, say) would take each other's Services.
    """
    meta = service.get("metadata") or {}
    groups = frozenset(_ref_group(r) for r in meta.get("ownerReferences") or () if r.get("kind") == MD_KIND)
    if groups:
        return groups
    label = (meta.get("labels") or {}).get(GROUP_LABEL)
    return frozenset((label,)) if isinstance(label, str) and label else frozenset()


def is_managed(service: Mapping[str, Any], group: str) -> bool:
    """Ours: owned through the ModuleDeployments of ``group``, and through no other group's."""
    return owner_groups(service) == {group}


def foreign_group(service: Mapping[str, Any], group: str) -> str | None:
    """The other API group ``service`` is owned through, if any (it is then never written)."""
    others = owner_groups(service) - {group}
    return min(others) if others else None


def adoptable(service: Mapping[str, Any], desired: DesiredService) -> bool:
    """Exactly the Service Koupleless' module-controller creates for this module, and nothing else.

    That controller creates ``<module>-service`` once, with no labels, no owner references, the module
    selector, one port ``http`` and type NodePort, and never updates it; taking it over is what its users
    expect. Any other Service holding our name is someone's on purpose (a LoadBalancer, external IPs, an
    owner, another install's group label): NameConflict, never touched.
    """
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    ports = spec.get("ports") or []
    return (
        meta.get("name") == desired.name
        and not meta.get("deletionTimestamp")
        and not meta.get("ownerReferences")
        and GROUP_LABEL not in (meta.get("labels") or {})
        # Ours from before group labels existed may be taken back; another tool's (Helm's, say) never.
        and (meta.get("labels") or {}).get(MANAGED_BY_LABEL, MANAGED_BY_VALUE) == MANAGED_BY_VALUE
        and spec.get("type") == SERVICE_TYPE
        and not any(spec.get(k) for k in _NOT_ADOPTED_SPEC)
        and dict(spec.get("selector") or {}) == dict(desired.selector)
        and len(ports) == 1 and ports[0].get("name") == PORT_NAME
    )


# Settings Koupleless' module-controller never makes: whoever did wants more than a module Service.
_NOT_ADOPTED_SPEC = ("externalIPs", "loadBalancerIP", "loadBalancerSourceRanges", "loadBalancerClass")


def _normalized_ports(ports: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    # Server defaults (SetDefaults_Service): protocol TCP, targetPort = port. nodePort is allocated and
    # never compared.
    out = []
    for p in ports:
        target = p.get("targetPort", p.get("port"))
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        out.append((p.get("name", ""), p.get("protocol", "TCP"), p.get("port"), target))
    return out


def service_patch(actual: Mapping[str, Any], desired: DesiredService) -> dict[str, Any] | None:
    """A JSON merge patch that makes ``actual`` match ``desired`` on the fields we own, or None.

    Only owned fields are compared (labels we set, selector, the one port, type, owner references),
    so an idle controller writes nothing. Merge patch (not apply) because ports and selector must be
    *replaced*: an apply would leave a port or selector key added by someone else in place. Foreign
    labels, annotations and owner references survive. The caller adds resourceVersion as a
    precondition.
    """
    meta = actual.get("metadata") or {}
    spec = actual.get("spec") or {}
    patch_meta: dict[str, Any] = {}
    patch_spec: dict[str, Any] = {}

    labels = meta.get("labels") or {}
    label_patch = {k: v for k, v in desired.labels.items() if labels.get(k) != v}
    if label_patch:
        patch_meta["labels"] = label_patch

    refs = list(meta.get("ownerReferences") or [])
    group = desired.api_group
    ours = [r for r in refs if _is_md_ref(r, group)]
    wanted = [o.to_dict() for o in desired.owners]
    if _ref_set(ours) != _ref_set(wanted):
        patch_meta["ownerReferences"] = [r for r in refs if not _is_md_ref(r, group)] + wanted

    selector = spec.get("selector") or {}
    if dict(selector) != dict(desired.selector):
        patch_spec["selector"] = {**{k: None for k in selector if k not in desired.selector}, **desired.selector}

    if spec.get("type") != SERVICE_TYPE:
        patch_spec["type"] = SERVICE_TYPE

    ports = spec.get("ports") or []
    if _normalized_ports(ports) != _normalized_ports([_port_dict(desired.port)]):
        # Keep the allocated nodePort so clients pinned to it keep working across a port change.
        node_port = next((p.get("nodePort") for p in ports if p.get("name") == PORT_NAME), None)
        if node_port is None and len(ports) == 1:
            node_port = ports[0].get("nodePort")
        patch_spec["ports"] = [_port_dict(desired.port, node_port if isinstance(node_port, int) else None)]
    elif "type" in patch_spec:
        patch_spec["ports"] = [_port_dict(desired.port)]

    if not patch_meta and not patch_spec:
        return None
    out: dict[str, Any] = {}
    if patch_meta:
        out["metadata"] = patch_meta
    if patch_spec:
        out["spec"] = patch_spec
    return out


def _ref_set(refs: Iterable[Mapping[str, Any]]) -> set[tuple[Any, ...]]:
    return {
        (r.get("uid"), r.get("name"), bool(r.get("controller")), bool(r.get("blockOwnerDeletion")))
        for r in refs
    }
