"""Cache transforms: what each informer keeps of an object (client-go's TransformFunc).

Memory is the cost of a cache, and Pods, Services and ModuleDeployments are kept for the whole
cluster. Each transform keeps exactly the fields that desired/status/mapping read and drops the rest
(managedFields, annotations, other controllers' status, the module's URL, a Pod's other labels...). Strings
that repeat across objects (namespaces, label values, "TCP", timestamps of a burst) are interned: thousands
of objects share a handful of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..runtime.kube.client import JsonObj

__all__ = ["intern_md", "intern_pod", "intern_service", "slim_md", "slim_pod_for", "slim_service"]

_MD_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")
_SVC_META = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences", "deletionTimestamp")
# clusterIP(s), IP families and ports (nodePort) to re-create a deleted Service with the same addresses;
# the external and load-balancer settings because a Service that has any is never adopted.
_SVC_SPEC = ("type", "selector", "ports", "clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy",
             "externalIPs", "loadBalancerIP", "loadBalancerSourceRanges", "loadBalancerClass")
_POD_META = ("name", "namespace", "uid", "resourceVersion", "labels", "deletionTimestamp")


def _meta(obj: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return {}
    return {k: meta[k] for k in keys if k in meta}


def slim_md(md: JsonObj) -> JsonObj:
    """Keeps the module name, the serviceStrategy and our own ``status.moduleService``."""
    out: JsonObj = {"metadata": _meta(md, _MD_META)}
    spec = md.get("spec")
    if isinstance(spec, dict):
        slim: JsonObj = {}
        template = spec.get("template")
        try:
            name = template["spec"]["module"]["name"]  # type: ignore[index]
            slim["template"] = {"spec": {"module": {"name": name}}}
        except (KeyError, TypeError):
            if "template" in spec:
                slim["template"] = template  # odd shape: keep it so validation can report it
        strategy = spec.get("operationStrategy")
        if isinstance(strategy, dict) and "serviceStrategy" in strategy:
            slim["operationStrategy"] = {"serviceStrategy": strategy["serviceStrategy"]}
        out["spec"] = slim
    status = md.get("status")
    if isinstance(status, dict) and "moduleService" in status:
        out["status"] = {"moduleService": status["moduleService"]}
    intern_md(out)
    return out


def slim_service(svc: JsonObj) -> JsonObj:
    """Keeps what ownership, the diff and the status read; drops annotations and status."""
    spec = svc.get("spec")
    slim = {k: spec[k] for k in _SVC_SPEC if k in spec} if isinstance(spec, dict) else {}
    out = {"metadata": _meta(svc, _SVC_META), "spec": slim}
    intern_service(out)
    return out


def slim_pod_for(label_prefix: str) -> Callable[[JsonObj], JsonObj]:
    """Pods are the largest population: of each, its module labels (the only ones read), and its Ready
    condition's status when it has one (``status`` is absent otherwise)."""

    def slim_pod(pod: JsonObj) -> JsonObj:
        meta = _meta(pod, _POD_META)
        labels = meta.get("labels")
        if isinstance(labels, dict):
            meta["labels"] = {k: v for k, v in labels.items() if isinstance(k, str) and k.startswith(label_prefix)}
        out: JsonObj = {"metadata": meta}
        status = pod.get("status")
        conditions = status.get("conditions") if isinstance(status, dict) else None
        for c in conditions if isinstance(conditions, list) else ():
            if isinstance(c, dict) and c.get("type") == "Ready":
                out["status"] = {"conditions": [{"type": _READY, "status": c.get("status")}]}
                break
        intern_pod(out)
        return out

    return slim_pod


# ------------------------------------------------------------------------------------------ interning
# A decoded JSON object has a string object of its own for every value, even "true" or "TCP". Values that
# repeat across objects are interned, here and again after a list is compacted (which decodes anew).
_READY = sys.intern("Ready")


def _short(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) and len(value) <= 64 else value


def _intern_map(mapping: Any) -> None:
    if isinstance(mapping, dict):
        for k, v in mapping.items():
            mapping[k] = _short(v)


def _intern_meta(obj: JsonObj) -> None:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in ("namespace", "creationTimestamp", "deletionTimestamp"):
            if key in meta:
                meta[key] = _short(meta[key])
        _intern_map(meta.get("labels"))
        for ref in meta.get("ownerReferences") or ():
            if isinstance(ref, dict):
                for key in ("apiVersion", "kind"):
                    if key in ref:
                        ref[key] = _short(ref[key])


def intern_md(md: JsonObj) -> None:
    _intern_meta(md)
    status = md.get("status")
    ms = status.get("moduleService") if isinstance(status, dict) else None
    if isinstance(ms, dict):
        for key in ("type", "lastTransitionTime"):
            if key in ms:
                ms[key] = _short(ms[key])
        for c in ms.get("conditions") or ():
            if isinstance(c, dict):
                for key in ("type", "status", "reason", "lastTransitionTime"):
                    if key in c:
                        c[key] = _short(c[key])


def intern_service(svc: JsonObj) -> None:
    _intern_meta(svc)
    spec = svc.get("spec")
    if not isinstance(spec, dict):
        return
    for key in ("type", "ipFamilyPolicy"):
        if key in spec:
            spec[key] = _short(spec[key])
    for key in ("ipFamilies",):
        if isinstance(spec.get(key), list):
            spec[key] = [_short(v) for v in spec[key]]
    _intern_map(spec.get("selector"))
    for port in spec.get("ports") or ():
        if isinstance(port, dict):
            for key in ("name", "protocol", "targetPort"):
                if key in port:
                    port[key] = _short(port[key])


def intern_pod(pod: JsonObj) -> None:
    _intern_meta(pod)
    status = pod.get("status")
    for c in (status.get("conditions") or ()) if isinstance(status, dict) else ():
        if isinstance(c, dict):
            c["type"], c["status"] = _short(c.get("type")), _short(c.get("status"))
