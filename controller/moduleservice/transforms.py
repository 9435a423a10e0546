"""Cache transforms: what each informer keeps of an object (client-go's TransformFunc).

Memory is the cost of a cache, and Pods, Services and ModuleDeployments are kept for the whole
cluster. Each transform keeps exactly the fields that desired/status/mapping read and drops the rest
(managedFields, annotations, other controllers' status, the module's URL...). Namespace strings are
interned: thousands of objects share a handful of them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any

from ..runtime.kube.client import JsonObj

__all__ = ["slim_md", "slim_pod", "slim_service"]

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
    out = {k: meta[k] for k in keys if k in meta}
    ns = out.get("namespace")
    if isinstance(ns, str):
        out["namespace"] = sys.intern(ns)
    return out


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
    return out


def slim_service(svc: JsonObj) -> JsonObj:
    """Keeps what ownership, the diff and the status read; drops annotations and status."""
    spec = svc.get("spec")
    slim = {k: spec[k] for k in _SVC_SPEC if k in spec} if isinstance(spec, dict) else {}
    families = slim.get("ipFamilies")
    if isinstance(families, list):
        slim["ipFamilies"] = [sys.intern(f) if isinstance(f, str) else f for f in families]
    return {"metadata": _meta(svc, _SVC_META), "spec": slim}


def slim_pod(pod: JsonObj) -> JsonObj:
    """Pods are the largest population: metadata we index, the Ready condition and podIP."""
    status = pod.get("status")
    status = status if isinstance(status, dict) else {}
    ready = [c for c in status.get("conditions") or () if isinstance(c, dict) and c.get("type") == "Ready"]
    return {"metadata": _meta(pod, _POD_META), "status": {"conditions": ready, "podIP": status.get("podIP")}}
