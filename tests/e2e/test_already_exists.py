"""A create that meets AlreadyExists is never turned into an overwrite (a README claim with no live test
before).

The fault proxy holds the controller's Service watch, so a Service created by someone else is not in its
cache when a ModuleDeployment asks for that name: the controller POSTs and gets 409 AlreadyExists. It must
requeue (never replace the object), and once its cache sees the Service (the proxy lets the watch go)
report NameConflict and leave it exactly as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.faultproxy import FaultProxy
from tests.harness import api_client, controller_config, module_deployment, running_controller, wait_for

pytestmark = pytest.mark.asyncio

# Long enough that no relist (two silent watches) refreshes the stale cache before the write is made, on a
# loaded machine; the proxy is resumed once the refusal is seen, and the watch then catches up.
IDLE = 30.0


async def test_already_exists_is_requeued_never_overwritten(controlplane: ControlPlane, kubeconfig: str,
                                                            namespace: str, tmp_path: Path) -> None:
    async with FaultProxy.for_controlplane(controlplane) as proxy, api_client(kubeconfig) as api:
        proxied = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
        config = controller_config(proxied, namespace, watch_idle_timeout=IDLE)
        async with running_controller(config) as manager:
            async def services_watched() -> bool:
                return proxy.watching("/services")

            await wait_for(services_watched, timeout=30, what="the controller's Service watch")
            proxy.stall_watches(existing=True, path_contains="/services")
            foreign = await api.create_svc(namespace, {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "race-service", "labels": {"app": "someone-else"}},
                "spec": {"type": "ClusterIP", "selector": {"app": "someone-else"},
                         "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
            })
            await api.create_md(namespace, module_deployment("md-race", "race"))

            def conflicts() -> float:
                return sum(s.value for fam in manager.registry.collect() for s in fam.samples
                           if s.name == "rest_client_requests_total" and s.labels.get("method") == "POST"
                           and s.labels.get("code") == "409")

            async def got_409() -> bool:
                return conflicts() >= 1

            await wait_for(got_409, timeout=30, what="the controller's POST to meet AlreadyExists")
            proxy.resume()  # the held watch ends; the re-watch delivers the Service
            await api.wait_reason(namespace, "md-race", "NameConflict", timeout=60)
            now = await api.get_svc(namespace, "race-service")
            assert now is not None
            assert now["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
            assert now["spec"] == foreign["spec"]
            assert now["metadata"].get("labels") == {"app": "someone-else"}
        proxy.resume()
