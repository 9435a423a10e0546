"""Helpers shared by integration and e2e tests: an async API client on the real control plane,
condition waits with deadlines (never bare sleeps), and an in-process controller runner."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, TypeVar

import anyio
from prometheus_client import CollectorRegistry

from controller.config import Config
from controller.kube.client import JsonObj, KubeClient, load_configuration
from controller.kube.errors import NotFound
from controller.kube.resources import MODULE_DEPLOYMENTS, PODS, SERVICES
from controller.manager import Manager
from controller.metrics import Metrics

T = TypeVar("T")

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
    """Polls ``fn`` until it returns something truthy; fails with the last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await anyio.sleep(interval)


class Api:
    """Thin test-side API helpers over the real API server."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def create_md(self, ns: str, md: JsonObj) -> JsonObj:
        return await self.client.request("POST", MODULE_DEPLOYMENTS.path(ns), body=md)

    async def get_md(self, ns: str, name: str) -> JsonObj | None:
        try:
            return await self.client.request("GET", MODULE_DEPLOYMENTS.path(ns, name))
        except NotFound:
            return None

    async def patch_md(self, ns: str, name: str, patch: JsonObj) -> JsonObj:
        return await self.client.request("PATCH", MODULE_DEPLOYMENTS.path(ns, name), body=patch,
                                         content_type="application/merge-patch+json")

    async def delete_md(self, ns: str, name: str) -> None:
        try:
            await self.client.request("DELETE", MODULE_DEPLOYMENTS.path(ns, name))
        except NotFound:
            pass

    async def get_svc(self, ns: str, name: str) -> JsonObj | None:
        try:
            return await self.client.request("GET", SERVICES.path(ns, name))
        except NotFound:
            return None

    async def list_svcs(self, ns: str) -> list[JsonObj]:
        return list((await self.client.request("GET", SERVICES.path(ns))).get("items") or [])

    async def create_svc(self, ns: str, svc: JsonObj) -> JsonObj:
        return await self.client.request("POST", SERVICES.path(ns), body=svc)

    async def patch_svc(self, ns: str, name: str, patch: JsonObj, *, manager: str = "someone-else") -> JsonObj:
        return await self.client.request("PATCH", SERVICES.path(ns, name), body=patch,
                                         params={"fieldManager": manager},
                                         content_type="application/merge-patch+json")

    async def delete_svc(self, ns: str, name: str) -> None:
        try:
            await self.client.request("DELETE", SERVICES.path(ns, name))
        except NotFound:
            pass

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
        try:
            await self.client.request("DELETE", PODS.path(ns, name), params={"gracePeriodSeconds": 0})
        except NotFound:
            pass

    async def events(self, ns: str) -> list[JsonObj]:
        return list((await self.client.request("GET", f"/api/v1/namespaces/{ns}/events")).get("items") or [])


@asynccontextmanager
async def api_client(kubeconfig: str) -> AsyncIterator[Api]:
    async with KubeClient(await load_configuration(kubeconfig)) as client:
        yield Api(client)


def controller_config(kubeconfig: str, namespace: str, **overrides: Any) -> Config:
    base = Config(kubeconfig=kubeconfig, namespaces=(namespace,), metrics_bind_address="0",
                  health_probe_bind_address="0", log_level="debug", cache_sync_timeout=60)
    return replace(base, **overrides)


@asynccontextmanager
async def running_controller(config: Config) -> AsyncIterator[Manager]:
    """Runs a Manager in a task group opened by the caller's test body (never across a fixture yield)
    and stops it on exit. Yields once its caches have synced."""
    async with KubeClient(await load_configuration(config.kubeconfig)) as client:
        registry = CollectorRegistry()
        manager = Manager(config, client, registry=registry, metrics=Metrics(registry), handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.run)
            await wait_for(_synced(manager), timeout=60, what="controller caches to sync")
            try:
                yield manager
            finally:
                tg.cancel_scope.cancel()


def _synced(manager: Manager) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return all(inf.has_synced for inf in manager.informers)
    return check
