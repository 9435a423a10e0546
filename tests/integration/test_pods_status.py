"""(i) status.moduleService.pods / readyPods count the Pods carrying the module label (value "true").
(ii) Pods count only in status: a Pod list that is slow to come (30k Pods at start-up) holds the status
lane, never the Services."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.runtime.kube.client import JsonObj
from tests.controlplane import ControlPlane
from tests.faultproxy import FaultProxy
from tests.harness import (
    LABEL_PREFIX,
    Api,
    api_client,
    controller_config,
    module_deployment,
    running_controller,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.core]


async def _counts(api: Api, ns: str, md: str, pods: int, ready: int) -> JsonObj:
    def check(ms: JsonObj) -> bool:
        return (ms.get("pods"), ms.get("readyPods")) == (pods, ready)
    return await api.wait_reason(ns, md, "ServiceReady", check=check)


class TestPodCounts:
    async def test_counts_follow_labels_readiness_and_deletion(self, kubeconfig: str, namespace: str) -> None:
        key = f"{LABEL_PREFIX}pods-mod"
        async with api_client(kubeconfig) as api, \
                running_controller(controller_config(kubeconfig, namespace)) as manager:
            await api.create_md(namespace, module_deployment("md-pods", "pods-mod"))
            await _counts(api, namespace, "md-pods", 0, 0)
            svc = await api.get_svc(namespace, "pods-mod-service")
            assert svc is not None

            await api.create_pod(namespace, "p1", {key: "true"})
            await api.create_pod(namespace, "p2", {key: "true"})
            await api.create_pod(namespace, "p3", {f"{LABEL_PREFIX}other-mod": "true"})  # another module
            await api.create_pod(namespace, "p4", {key: "false"})
            await _counts(api, namespace, "md-pods", 2, 0)

            await api.set_pod_ready(namespace, "p1", True)
            await _counts(api, namespace, "md-pods", 2, 1)
            await api.set_pod_ready(namespace, "p2", True)
            await api.set_pod_ready(namespace, "p3", True)  # counted nowhere here: 3 would show below
            await _counts(api, namespace, "md-pods", 2, 2)

            await api.set_pod_ready(namespace, "p1", False)
            await _counts(api, namespace, "md-pods", 2, 1)

            await api.patch_pod(namespace, "p2", {"metadata": {"labels": {key: "false"}}})
            await _counts(api, namespace, "md-pods", 1, 0)

            await api.patch_pod(namespace, "p4", {"metadata": {"labels": {key: "true"}}})
            await _counts(api, namespace, "md-pods", 2, 0)
            await api.set_pod_ready(namespace, "p4", True)
            await _counts(api, namespace, "md-pods", 2, 1)

            await api.patch_pod(namespace, "p1", {"metadata": {"labels": {key: None}}})  # label removed
            await _counts(api, namespace, "md-pods", 1, 1)

            await api.delete_pod(namespace, "p4")
            await _counts(api, namespace, "md-pods", 0, 0)

            # A Pod with no module label is not cached; it counts once it gains one.
            await api.create_pod(namespace, "p5", {"app": "plain"})
            await api.patch_pod(namespace, "p5", {"metadata": {"labels": {key: "true"}}})
            await _counts(api, namespace, "md-pods", 1, 0)
            # Watch events arrive in order, so every earlier Pod change is in the cache by now.
            assert sorted(manager.pods.keys()) == [f"{namespace}/p2", f"{namespace}/p3", f"{namespace}/p5"]
            await api.patch_pod(namespace, "p5", {"metadata": {"labels": {key: None}}})
            await _counts(api, namespace, "md-pods", 0, 0)

            # Pods feed the status only: the Service itself was never written.
            after = await api.get_svc(namespace, "pods-mod-service")
            assert after is not None
            assert after["metadata"]["resourceVersion"] == svc["metadata"]["resourceVersion"]


class TestPodListDoesNotHoldServices:
    async def test_services_are_made_while_the_pod_list_is_held(self, controlplane: ControlPlane, namespace: str,
                                                               tmp_path: Path) -> None:
        ns = namespace
        async with FaultProxy.for_controlplane(controlplane) as proxy, \
                api_client(str(controlplane.kubeconfig)) as api:
            await api.create_md(ns, module_deployment("md-early", "early"))
            await api.create_pod(ns, "p1", {f"{LABEL_PREFIX}early": "true"})
            # Every Pod request (the list, then the watch) is held until resume().
            proxy.slow_down(600, duration=600, methods=("GET",), path_contains="/pods")
            kubeconfig = proxy.write_kubeconfig(tmp_path / "kubeconfig")
            async with running_controller(controller_config(kubeconfig, ns), wait_synced=False) as manager:
                async def service() -> JsonObj | None:
                    return await api.get_svc(ns, "early-service")
                await wait_for(service, timeout=30, what="the Service while the Pod list is held")
                assert not manager.serving, "the Pod informer cannot have synced: its list is held"
                # Status counts Pods: none is written from an empty Pod cache (it would say 0 Pods).
                assert await api.module_service(ns, "md-early") == {}
                proxy.resume()
                await _counts(api, ns, "md-early", 1, 0)
