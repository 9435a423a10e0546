"""A kopf peer of module-service-controller for the side-by-side benchmarks (bench/peers.py).

The same job, written as kopf's documentation shows: handlers for create/update/resume of a
ModuleDeployment that make its "<module>-service" with the official client and ``kopf.adopt`` (owner
reference), delete it when the service is disabled, and restore it when it is deleted. The Kubernetes
garbage collector deletes it with its ModuleDeployment. kopf's settings are its defaults (its state in
annotations on each ModuleDeployment; log lines are not posted as Events, ``settings.posting.loggers`` is
false) unless ``KOPF_PEER_TUNED=1``: then the executor for the synchronous handlers gets 16 threads.

Run: ``kopf run --standalone --all-namespaces peer.py`` with ``KUBECONFIG`` set.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import kopf
import kubernetes  # type: ignore[import-untyped]

GROUP, VERSION, PLURAL = "koupleless.alipay.com", "v1alpha1", "moduledeployments"
LABEL_PREFIX = os.environ.get("KOPF_PEER_LABEL_PREFIX", "module.koupleless.alipay.com/")
# The contract's labels, so that a state converged by one contender is converged for all.
MANAGED_BY = {"app.kubernetes.io/managed-by": "module-service-controller"}
MODULE_LABEL = "koupleless.alipay.com/module"
TUNED = os.environ.get("KOPF_PEER_TUNED") == "1"

_api: Any = None
_first = threading.Lock()
_first_done = False


def _say(line: str) -> None:
    """One JSON line on stderr in one write(2): print() writes the text and its newline apart, and kopf's log
    lines from the event-loop thread got in between, so the benchmark never saw the line."""
    os.write(2, (line + "\n").encode())


def _first_reconcile() -> None:
    """For the start-up benchmark: the wall time of the first reconcile, one line on stderr."""
    global _first_done
    with _first:
        if not _first_done:
            _first_done = True
            _say(f'{{"msg":"first_reconcile","unix":{time.time():.6f}}}')


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _api
    if TUNED:
        settings.execution.max_workers = 16
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.load_kube_config()
    _api = kubernetes.client.CoreV1Api()
    _say(f'{{"msg":"config","tuned":{str(TUNED).lower()},"posting_loggers":{str(settings.posting.loggers).lower()},'
         f'"max_workers":{settings.execution.max_workers or "null"}}}')


def _service(body: Any, module: str, port: int, target: int | str) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"{module}-service", "labels": {**MANAGED_BY, MODULE_LABEL: module}},
        "spec": {"type": "NodePort", "selector": {f"{LABEL_PREFIX}{module}": "true"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": target}]},
    }
    kopf.adopt(svc, owner=body)
    return svc


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(body: kopf.Body, spec: kopf.Spec, namespace: str, **_: Any) -> None:
    _first_reconcile()
    ensure(body, spec, namespace)


def ensure(body: Any, spec: Any, namespace: str) -> None:
    module = spec.get("template", {}).get("spec", {}).get("module", {}).get("name")
    strategy = spec.get("operationStrategy", {}).get("serviceStrategy", {})
    if not module:
        return
    name = f"{module}-service"
    if not strategy.get("enableModuleService") or not strategy.get("port"):
        try:
            current = _api.read_namespaced_service(name, namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return
            raise
        refs = current.metadata.owner_references or []
        if any(ref.controller and ref.uid == body["metadata"]["uid"] for ref in refs):
            _api.delete_namespaced_service(name, namespace, body=kubernetes.client.V1DeleteOptions(
                preconditions=kubernetes.client.V1Preconditions(uid=current.metadata.uid)))
        return
    port = int(strategy["port"])
    svc = _service(body, module, port, strategy.get("targetPort", port))
    try:
        _api.create_namespaced_service(namespace, svc)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise
        # It exists: a JSON merge patch of what we own (a strategic merge patch would add a second port beside
        # the old one instead of replacing it); a no-op patch when nothing changed, as kopf users write it.
        meta = svc["metadata"]
        patch = {"metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
                 "spec": svc["spec"]}
        _api.patch_namespaced_service(name, namespace, patch, _content_type="application/merge-patch+json")


@kopf.on.event("v1", "services", labels=MANAGED_BY)
def restore(event: kopf.RawEvent, **_: Any) -> None:
    """Someone deleted a Service that a ModuleDeployment still wants: re-run that ModuleDeployment's handler."""
    if event["type"] != "DELETED":
        return
    meta = event["object"]["metadata"]
    owner = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    if owner is None or owner.get("kind") != "ModuleDeployment":
        return
    custom = kubernetes.client.CustomObjectsApi()
    try:
        md = custom.get_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, owner["name"])
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return
        raise
    if md["metadata"]["uid"] == owner["uid"] and not md["metadata"].get("deletionTimestamp"):
        ensure(md, md.get("spec") or {}, meta["namespace"])
