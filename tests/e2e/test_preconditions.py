"""Writes carry preconditions (README claims with no live test before): a PATCH carries the
resourceVersion the controller saw, a DELETE the UID. The fault proxy holds the controller's Service
watch so its cache is stale on purpose; the API server must answer 409 and the controller must requeue,
never clobber the newer object."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.app import App
from controller.runtime.kube.client import JsonObj
from tests.controlplane import ControlPlane
from tests.faultproxy import FaultProxy
from tests.harness import (
    api_client,
    controller_config,
    module_deployment,
    running_controller,
    service_problems,
    service_strategy,
    wait_for,
)

pytestmark = pytest.mark.asyncio

# Long enough that no relist (two silent watches) refreshes the stale cache before the write is made, on a
# loaded machine; the proxy is resumed once the refusal is seen, and the watch then catches up.
IDLE = 30.0


def _count(manager: App, method: str, code: str) -> float:
    return float(sum(s.value for fam in manager.registry.collect() for s in fam.samples
                     if s.name == "rest_client_requests_total" and s.labels.get("method") == method
                     and s.labels.get("code") == code))


async def test_patch_with_a_stale_resource_version_is_refused_and_retried(
        controlplane: ControlPlane, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
    async with FaultProxy.for_controlplane(controlplane) as proxy, api_client(kubeconfig) as api:
        proxied = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
        async with running_controller(controller_config(proxied, namespace, watch_idle_timeout=IDLE)) as manager:
            md = await api.create_md(namespace, module_deployment("md-rv", "rv"))
            await api.wait_svc(namespace, "rv-service")
            proxy.stall_watches(existing=True, path_contains="/services")
            # Someone else changes the Service: the controller's cached resourceVersion is now stale.
            await api.patch_svc(namespace, "rv-service", {"metadata": {"annotations": {"team": "payments"}}})
            md = await api.patch_md(namespace, "md-rv", service_strategy(port=9090))

            async def refused() -> bool:
                return _count(manager, "PATCH", "409") >= 1

            await wait_for(refused, timeout=30, what="a PATCH refused for its stale resourceVersion")
            proxy.resume()  # the held watch ends; the re-watch brings the cache up to date

            def right(svc: JsonObj) -> bool:
                return not service_problems(svc, module="rv", port=9090, owners=[md])

            # With the cache current again the retry carries the current version and lands; the other
            # writer's annotation survives.
            svc = await api.wait_svc(namespace, "rv-service", right, timeout=60)
            assert svc["metadata"]["annotations"]["team"] == "payments"
        proxy.resume()


async def test_delete_with_a_stale_uid_is_refused_and_the_new_service_survives(
        controlplane: ControlPlane, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
    async with FaultProxy.for_controlplane(controlplane) as proxy, api_client(kubeconfig) as api:
        proxied = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
        async with running_controller(controller_config(proxied, namespace, watch_idle_timeout=IDLE)) as manager:
            await api.create_md(namespace, module_deployment("md-uid", "uid"))
            await api.wait_svc(namespace, "uid-service")
            proxy.stall_watches(existing=True, path_contains="/services")
            # The Service is replaced by someone else's (a new UID) while the controller cannot see it...
            await api.delete_svc(namespace, "uid-service")
            await api.wait_svc_gone(namespace, "uid-service")
            theirs = await api.create_svc(namespace, {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "uid-service", "labels": {"app": "someone-else"}},
                "spec": {"type": "ClusterIP", "selector": {"app": "someone-else"}, "ports": [{"port": 80}]},
            })
            # ...and then no ModuleDeployment wants it any more: the controller deletes by its cached UID.
            await api.patch_md(namespace, "md-uid", service_strategy(enableModuleService=False))

            async def refused() -> bool:
                return _count(manager, "DELETE", "409") >= 1

            await wait_for(refused, timeout=30, what="a DELETE refused for its stale UID")
            proxy.resume()  # the held watch ends; the re-watch brings the cache up to date
            await api.wait_reason(namespace, "md-uid", "ServiceDisabled", timeout=60)
            now = await api.get_svc(namespace, "uid-service")
            assert now is not None
            assert now["metadata"]["uid"] == theirs["metadata"]["uid"]
        proxy.resume()
