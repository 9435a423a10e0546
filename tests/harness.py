"""Helpers shared by integration and e2e tests: an async API client on the real control plane,
condition waits with deadlines (never bare sleeps), and an in-process controller runner."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
from prometheus_client import CollectorRegistry

from controller.app import App
from controller.config import Config
from controller.moduleservice.desired import MANAGED_BY_LABEL, MANAGED_BY_VALUE, MODULE_LABEL
from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.client import JsonObj, KubeClient, load_configuration
from controller.runtime.kube.errors import NotFound
from controller.runtime.kube.resources import PODS, SERVICES, Resource
from controller.runtime.metrics import Metrics

T = TypeVar("T")

_ROOT = Path(__file__).resolve().parent.parent
# The CRD each profile is tested with: the seed's own, and ones shaped like the real Koupleless and
# sofa-serverless CRDs (tests/data/crds).
PROFILE_CRD_FILES = {
    "seed": _ROOT / "manifests" / "crd" / "moduledeployments.yaml",
    "koupleless": _ROOT / "tests" / "data" / "crds" / "koupleless.yaml",
    "sofa-serverless": _ROOT / "tests" / "data" / "crds" / "sofa-serverless.yaml",
}

SEED_MD: JsonObj = {
    "apiVersion": "koupleless.alipay.com/v1alpha1",
    "kind": "ModuleDeployment",
    "metadata": {"name": "moduledeployment-sample-provider"},
    "spec": {
        "baseDeploymentName": "dynamic-stock-deployment",
        "template": {"spec": {"module": {
            "name": "dynamic-provider", "version": "1.0.2",
            "url": "http://koupleless.oss-cn-shanghai.aliyuncs.com/module-packages/stable/"
                   "dynamic-provider-1.0.2-ark-biz.jar"}}},
        "replicas": 1,
        "operationStrategy": {
            "needConfirm": False, "grayTimeBetweenBatchSeconds": 120, "useBeta": False, "batchCount": 1,
            "upgradePolicy": "install_then_uninstall",
            "serviceStrategy": {"enableModuleService": True, "port": 8080, "targetPort": 8080},
        },
        "schedulingStrategy": {"schedulingPolicy": "scatter"},
    },
}


def module_deployment(name: str, module: str, *, port: int | None = 8080, target_port: int | str | None = None,
                      enabled: bool = True) -> JsonObj:
    md = copy.deepcopy(SEED_MD)
    md["metadata"] = {"name": name}
    md["spec"]["template"]["spec"]["module"]["name"] = module
    strategy: JsonObj = {"enableModuleService": enabled}
    if port is not None:
        strategy["port"] = port
    if target_port is not None:
        strategy["targetPort"] = target_port
    md["spec"]["operationStrategy"]["serviceStrategy"] = strategy
    return md


async def wait_for(fn: Callable[[], Awaitable[T | None]], *, timeout: float = 30.0, what: str = "condition",
                   interval: float = 0.05) -> T:
    """Polls ``fn`` until it returns something truthy; fails with the last value after ``timeout``. The one
    poll helper of the tests (:func:`poll` is its synchronous twin, for fixtures and plain tests)."""
    deadline = time.monotonic() + timeout
    while True:
        last = await fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await anyio.sleep(interval)


def poll(fn: Callable[[], T | None], *, timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> T:
    """:func:`wait_for` for synchronous code: polls ``fn`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


class Api:
    """Thin test-side API helpers over the real API server."""

    def __init__(self, client: KubeClient, md_resource: Resource = MODULE_DEPLOYMENTS) -> None:
        self.client = client
        self.md = md_resource  # the ModuleDeployment API of the profile under test

    async def create_md(self, ns: str, md: JsonObj) -> JsonObj:
        return await self.client.request("POST", self.md.path(ns), body={**md, "apiVersion": self.md.api_version})

    async def get_md(self, ns: str, name: str) -> JsonObj | None:
        try:
            return await self.client.request("GET", self.md.path(ns, name))
        except NotFound:
            return None

    async def patch_md(self, ns: str, name: str, patch: JsonObj) -> JsonObj:
        return await self.client.request("PATCH", self.md.path(ns, name), body=patch,
                                         content_type="application/merge-patch+json")

    async def delete_md(self, ns: str, name: str) -> None:
        with suppress(NotFound):
            await self.client.request("DELETE", self.md.path(ns, name))

    async def get_svc(self, ns: str, name: str) -> JsonObj | None:
        try:
            return await self.client.request("GET", SERVICES.path(ns, name))
        except NotFound:
            return None

    async def list_svcs(self, ns: str, *, label_selector: str | None = None) -> list[JsonObj]:
        params = {"labelSelector": label_selector} if label_selector else None
        return list((await self.client.request("GET", SERVICES.path(ns), params=params)).get("items") or [])

    async def create_svc(self, ns: str, svc: JsonObj) -> JsonObj:
        return await self.client.request("POST", SERVICES.path(ns), body=svc)

    async def patch_svc(self, ns: str, name: str, patch: JsonObj, *, manager: str = "someone-else") -> JsonObj:
        return await self.client.request("PATCH", SERVICES.path(ns, name), body=patch,
                                         params={"fieldManager": manager},
                                         content_type="application/merge-patch+json")

    async def delete_svc(self, ns: str, name: str) -> None:
        with suppress(NotFound):
            await self.client.request("DELETE", SERVICES.path(ns, name))

    async def create_pod(self, ns: str, name: str, labels: dict[str, str]) -> JsonObj:
        return await self.client.request("POST", PODS.path(ns), body={
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "base", "image": "example.invalid/base:1"}]},
        })

    async def set_pod_ready(self, ns: str, name: str, ready: bool) -> JsonObj:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return await self.client.request(
            "PATCH", PODS.path(ns, name, "status"), content_type="application/merge-patch+json",
            body={"status": {"phase": "Running", "podIP": "10.244.0.10", "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": now}]}},
        )

    async def patch_pod(self, ns: str, name: str, patch: JsonObj) -> JsonObj:
        return await self.client.request("PATCH", PODS.path(ns, name), body=patch,
                                         content_type="application/merge-patch+json")

    async def delete_pod(self, ns: str, name: str) -> None:
        with suppress(NotFound):
            await self.client.request("DELETE", PODS.path(ns, name), params={"gracePeriodSeconds": 0})

    async def events(self, ns: str) -> list[JsonObj]:
        return list((await self.client.request("GET", f"/api/v1/namespaces/{ns}/events")).get("items") or [])

    async def list_mds(self, ns: str) -> list[JsonObj]:
        return list((await self.client.request("GET", self.md.path(ns))).get("items") or [])

    async def create_mds(self, ns: str, mds: Iterable[JsonObj], *, concurrency: int = 20) -> list[JsonObj]:
        """Creates all of ``mds`` at once (at most ``concurrency`` requests in flight); returns them."""
        limiter = anyio.CapacityLimiter(concurrency)
        created: list[JsonObj] = []

        async def one(md: JsonObj) -> None:
            async with limiter:
                created.append(await self.create_md(ns, md))

        async with anyio.create_task_group() as tg:
            for md in mds:
                tg.start_soon(one, md)
        return created

    async def module_service(self, ns: str, name: str) -> JsonObj:
        """``status.moduleService`` of a ModuleDeployment ({} when absent or the MD is gone)."""
        return module_service(await self.get_md(ns, name) or {})

    async def wait_reason(self, ns: str, name: str, reason: str, *, timeout: float = 30.0,
                          check: Callable[[JsonObj], bool] | None = None) -> JsonObj:
        """Waits until the Ready condition of the MD's ``status.moduleService`` has ``reason`` (and
        ``check`` holds on the moduleService); returns the moduleService."""
        async def probe() -> JsonObj | None:
            ms = await self.module_service(ns, name)
            if ready_condition(ms).get("reason") == reason and (check is None or check(ms)):
                return ms
            return None
        return await wait_for(probe, timeout=timeout, what=f"{ns}/{name} status reason {reason}")

    async def wait_svc(self, ns: str, name: str, check: Callable[[JsonObj], bool] | None = None, *,
                       timeout: float = 30.0, what: str = "") -> JsonObj:
        """Waits until Service ``name`` exists (and ``check`` holds on it); returns it."""
        async def probe() -> JsonObj | None:
            svc = await self.get_svc(ns, name)
            return svc if svc is not None and (check is None or check(svc)) else None
        return await wait_for(probe, timeout=timeout, what=what or f"Service {ns}/{name}")

    async def wait_svc_gone(self, ns: str, name: str, *, timeout: float = 30.0) -> None:
        async def gone() -> bool:
            return await self.get_svc(ns, name) is None
        await wait_for(gone, timeout=timeout, what=f"Service {ns}/{name} to be gone")

    async def resource_versions(self, ns: str) -> dict[str, str]:
        """``kind/name -> resourceVersion`` of every Service and ModuleDeployment in ``ns``."""
        out = {f"Service/{s['metadata']['name']}": s["metadata"]["resourceVersion"] for s in await self.list_svcs(ns)}
        for md in await self.list_mds(ns):
            out[f"ModuleDeployment/{md['metadata']['name']}"] = md["metadata"]["resourceVersion"]
        return out

    async def wait_event(self, ns: str, *, reason: str, involved: str, type_: str = "Normal",
                         timeout: float = 30.0) -> JsonObj:
        """Waits until an Event with ``reason`` and ``type_`` about object ``involved`` exists."""
        async def probe() -> JsonObj | None:
            return next((e for e in await self.events(ns)
                         if e.get("reason") == reason and e.get("type") == type_
                         and (e.get("involvedObject") or {}).get("name") == involved), None)
        return await wait_for(probe, timeout=timeout, what=f"{type_} Event {reason} on {involved}")

    async def converged_problems(self, ns: str, mds: Iterable[Mapping[str, Any]]) -> list[str]:
        """What keeps ``mds`` (each the only ModuleDeployment of its module, service enabled) from being
        converged: each has its exact Service and a Ready status that reports that Service."""
        svcs = {s["metadata"]["name"]: s for s in await self.list_svcs(ns)}
        live = {m["metadata"]["name"]: m for m in await self.list_mds(ns)}
        problems: list[str] = []
        for md in mds:
            name = md["metadata"]["name"]
            module = md["spec"]["template"]["spec"]["module"]["name"]
            strategy = md["spec"]["operationStrategy"]["serviceStrategy"]
            svc = svcs.get(f"{module}-service")
            if svc is None:
                problems.append(f"{name}: no Service")
                continue
            wrong = service_problems(svc, module=module, port=strategy["port"],
                                     target_port=strategy.get("targetPort"), owners=[md])
            if wrong:
                problems.append(f"{name}: {wrong}")
                continue
            ms = module_service(live.get(name) or {})
            cond = ready_condition(ms)
            if (cond.get("status"), cond.get("reason")) != ("True", "ServiceReady"):
                problems.append(f"{name}: condition {cond}")
            elif (ms.get("serviceName"), ms.get("nodePort")) != (f"{module}-service", node_port(svc)):
                problems.append(f"{name}: status {ms}")
        return problems

    async def wait_converged(self, ns: str, mds: Iterable[Mapping[str, Any]], *, timeout: float = 60.0) -> None:
        mds = list(mds)
        last: list[str] = []

        async def done() -> bool:
            nonlocal last
            last = await self.converged_problems(ns, mds)
            return not last
        try:
            await wait_for(done, timeout=timeout, what=f"{len(mds)} ModuleDeployments to converge", interval=0.5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {len(last)} not converged, e.g. {last[:3]}") from None

    async def create_namespace(self, name: str) -> JsonObj:
        return await self.client.request("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    async def delete_namespace(self, name: str) -> None:
        with suppress(NotFound):
            await self.client.request("DELETE", f"/api/v1/namespaces/{name}")


# ---------------------------------------------------------------------------------------------- reading
LABEL_PREFIX = "module.koupleless.alipay.com/"


def module_service(md: Mapping[str, Any]) -> JsonObj:
    ms = (md.get("status") or {}).get("moduleService")
    return ms if isinstance(ms, dict) else {}


def ready_condition(module_service: Mapping[str, Any]) -> JsonObj:
    conditions = module_service.get("conditions") or [{}]
    first = conditions[0]
    return first if isinstance(first, dict) else {}


def owner_refs(svc: Mapping[str, Any]) -> set[tuple[str, str, bool]]:
    """(name, uid, controller) of every owner reference."""
    return {(r["name"], r["uid"], bool(r.get("controller")))
            for r in (svc.get("metadata") or {}).get("ownerReferences") or ()}


def service_problems(svc: Mapping[str, Any], *, module: str, port: int, target_port: int | str | None = None,
                     owners: Iterable[Mapping[str, Any]], label_prefix: str = LABEL_PREFIX,
                     api_version: str | None = None) -> list[str]:
    """Every way ``svc`` differs from the Service the controller must make for ``module``; ``owners`` are
    the contributing ModuleDeployments, oldest first (it alone is the controller owner)."""
    problems: list[str] = []
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(MODULE_LABEL) != module:
        problems.append(f"labels {labels}")
    if spec.get("type") != "NodePort":
        problems.append(f"type {spec.get('type')}")
    if spec.get("selector") != {f"{label_prefix}{module}": "true"}:
        problems.append(f"selector {spec.get('selector')}")
    ports = spec.get("ports") or []
    want = ("http", "TCP", port, port if target_port is None else target_port)
    got = [(p.get("name"), p.get("protocol"), p.get("port"), p.get("targetPort")) for p in ports]
    if got != [want]:
        problems.append(f"ports {got} != [{want}]")
    elif not 30000 <= int(ports[0].get("nodePort") or 0) <= 32767:
        problems.append(f"nodePort {ports[0].get('nodePort')}")
    wanted_refs = {(md["metadata"]["name"], md["metadata"]["uid"], i == 0) for i, md in enumerate(owners)}
    if owner_refs(svc) != wanted_refs:
        problems.append(f"owners {sorted(owner_refs(svc))} != {sorted(wanted_refs)}")
    refs = meta.get("ownerReferences") or []
    if any(r.get("blockOwnerDeletion") is not True or r.get("kind") != "ModuleDeployment" for r in refs):
        problems.append(f"ownerReferences {refs}")
    if api_version is not None and any(r.get("apiVersion") != api_version for r in refs):
        problems.append(f"ownerReferences apiVersion {[r.get('apiVersion') for r in refs]} != {api_version}")
    return problems


def service_strategy(**fields: Any) -> JsonObj:
    """A merge patch for ``spec.operationStrategy.serviceStrategy`` (camelCase field names)."""
    return {"spec": {"operationStrategy": {"serviceStrategy": fields}}}


def node_port(svc: Mapping[str, Any]) -> int:
    return int(svc["spec"]["ports"][0]["nodePort"])


@asynccontextmanager
async def api_client(kubeconfig: str, md_resource: Resource = MODULE_DEPLOYMENTS) -> AsyncIterator[Api]:
    async with KubeClient(await load_configuration(kubeconfig)) as client:
        yield Api(client, md_resource)


def controller_config(kubeconfig: str, namespace: str, **overrides: Any) -> Config:
    base = Config(kubeconfig=kubeconfig, namespaces=(namespace,), metrics_bind_address="0",
                  health_probe_bind_address="0", log_level="debug", cache_sync_timeout=60)
    return replace(base, **overrides)


@asynccontextmanager
async def running_controller(config: Config, *, wait_synced: bool = True) -> AsyncIterator[App]:
    """Runs the controller (an App) in a task group opened by the caller's test body (never across a fixture yield)
    and stops it on exit. Yields once its caches have synced (at once with ``wait_synced=False``)."""
    client = TrackingKubeClient(await load_configuration(config.kubeconfig))
    async with client:
        registry = CollectorRegistry()
        manager = App(config, client, registry=registry, metrics=Metrics(registry), handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.run)
            if wait_synced:
                await wait_for(_synced(manager), timeout=60, what="controller caches to sync")
            try:
                yield manager
            finally:
                # Let in-flight requests and queued Events finish first (bounded): a request cancelled
                # mid-flight leaves aiohttp's graceful TLS close to an event loop the test is about to close,
                # and the unclosed socket then fails a later test with a ResourceWarning.
                async def settled() -> bool:
                    return controller_quiet(manager) and client.in_flight == 0

                with suppress(AssertionError):
                    await wait_for(settled, timeout=10, what="the controller to settle before it stops")
                tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- controller
WRITE_METHODS = ("POST", "PATCH", "PUT", "DELETE")


class TrackingKubeClient(KubeClient):
    """Counts requests in flight (watches aside), and writes (every verb but GET) among them, so a test can
    tell "quiet" from "a write is on the wire but not yet counted by the metrics hook"."""

    in_flight = 0
    in_flight_writes = 0
    writes: list[tuple[str, str]] | None = None  # (method, path) of every write, once a test sets a list


    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> JsonObj:
        write = method.upper() != "GET"
        if write and self.writes is not None:
            self.writes.append((method.upper(), path))
        self.in_flight += 1
        self.in_flight_writes += write
        try:
            return await super().request(method, path, params=params, body=body, content_type=content_type,
                                         timeout=timeout)
        finally:
            self.in_flight -= 1
            self.in_flight_writes -= write


def _samples(registry: CollectorRegistry, name: str) -> Iterable[tuple[dict[str, str], float]]:
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                yield sample.labels, sample.value


def request_count(registry: CollectorRegistry, methods: Iterable[str] = WRITE_METHODS) -> float:
    """Requests the controller sent with one of ``methods`` (all codes, all hosts), from
    ``rest_client_requests_total``."""
    wanted = {m.upper() for m in methods}
    return sum(value for labels, value in _samples(registry, "rest_client_requests_total")
               if labels.get("method") in wanted)


def write_requests(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(method, code) -> count of every write request, for failure messages."""
    return {(labels["method"], labels["code"]): value
            for labels, value in _samples(registry, "rest_client_requests_total")
            if labels.get("method") in WRITE_METHODS and value}


def reconcile_count(registry: CollectorRegistry, result: str = "success") -> float:
    return sum(value for labels, value in _samples(registry, "controller_runtime_reconcile_total")
               if labels.get("result") == result)


def controller_quiet(app: App) -> bool:
    """The controller says it has acted on everything it has seen (``controller_quiescent``), and no write
    of its own is on the wire."""
    in_flight = app.client.in_flight_writes if isinstance(app.client, TrackingKubeClient) else 0
    return app.quiescent and in_flight == 0


async def wait_quiet(manager: App, *, timeout: float = 60.0) -> None:
    async def quiet() -> bool:
        return controller_quiet(manager)
    await wait_for(quiet, timeout=timeout, what="the controller to go quiet",
                   interval=0.1)


def _synced(manager: App) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(manager.serving)
    return check
