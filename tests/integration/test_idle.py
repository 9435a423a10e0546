"""(j), (k) Idle means zero writes: a converged namespace left alone, and a restart over one."""

from __future__ import annotations

import anyio
import pytest

from controller.runtime.events import now_rfc3339
from tests.harness import (
    LABEL_PREFIX,
    api_client,
    controller_config,
    module_deployment,
    module_service,
    ready_condition,
    reconcile_count,
    request_count,
    running_controller,
    wait_for,
    wait_quiet,
    write_requests,
)

pytestmark = pytest.mark.asyncio


class TestIdle:
    """(j) 50 converged ModuleDeployments, then 30 s in which the controller writes nothing."""

    async def test_converged_namespace_sees_no_writes(self, kubeconfig: str, namespace: str) -> None:
        n = 50
        async with api_client(kubeconfig) as api, \
                running_controller(controller_config(kubeconfig, namespace)) as manager:
            mds = await api.create_mds(namespace, [module_deployment(f"md-{i:02d}", f"idle-{i:02d}",
                                                                     port=8000 + i) for i in range(n)])
            await api.wait_converged(namespace, mds, timeout=120)
            await wait_quiet(manager)
            before = await api.resource_versions(namespace)
            assert len(before) == 2 * n
            writes = request_count(manager.registry)
            assert writes >= 2 * n  # the metric does count our writes: at least one create + one status each

            # The point of this test, not synchronisation: a converged controller left alone for 30 s (watch
            # events for our own writes, bookmarks, no resync) must not write anything.
            await anyio.sleep(30)

            assert request_count(manager.registry) == writes, write_requests(manager.registry)
            assert await api.resource_versions(namespace) == before


class TestRestart:
    """(k) A new controller over a converged namespace reconciles every key and writes nothing."""

    async def test_restart_over_converged_namespace_writes_nothing(self, kubeconfig: str, namespace: str) -> None:
        config = controller_config(kubeconfig, namespace)
        async with api_client(kubeconfig) as api:
            async with running_controller(config) as first:
                mds = await api.create_mds(namespace, [module_deployment(f"md-{i:02d}", f"restart-{i:02d}")
                                                       for i in range(20)])
                # Every kind of status, not only Ready: a port conflict, a name conflict, a disabled one, Pods.
                await api.create_md(namespace, module_deployment("md-shared-a", "shared", port=8080))
                await api.create_md(namespace, module_deployment("md-shared-b", "shared", port=9090))
                await api.create_svc(namespace, {
                    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "taken-service"},
                    "spec": {"ports": [{"port": 80}], "selector": {"app": "x"}}})
                await api.create_md(namespace, module_deployment("md-taken", "taken"))
                await api.create_md(namespace, module_deployment("md-off", "off", enabled=False))
                for i, ready in enumerate((True, False)):
                    await api.create_pod(namespace, f"p{i}", {f"{LABEL_PREFIX}restart-00": "true"})
                    await api.set_pod_ready(namespace, f"p{i}", ready)

                await api.wait_converged(namespace, mds[1:], timeout=90)
                await api.wait_reason(namespace, "md-00", "ServiceReady",
                                      check=lambda ms: (ms.get("pods"), ms.get("readyPods")) == (2, 1))
                await api.wait_reason(namespace, "md-shared-b", "PortConflict")
                await api.wait_reason(namespace, "md-shared-a", "ServiceReady")
                await api.wait_reason(namespace, "md-taken", "NameConflict")
                await api.wait_reason(namespace, "md-off", "ServiceDisabled")
                await wait_quiet(first)
                assert request_count(first.registry) > 0
            before = await api.resource_versions(namespace)
            # Timestamps have 1 s resolution: let the clock leave the second of the last status write, so
            # that a restart which recomputed lastTransitionTime (instead of keeping it) would show.
            last = max(str(ready_condition(module_service(md))["lastTransitionTime"])
                       for md in await api.list_mds(namespace))

            async def later() -> bool:
                return now_rfc3339() > last
            await wait_for(later, what=f"the clock to pass {last}")

            async with running_controller(config) as second:
                await wait_quiet(second)
                keys = {md["spec"]["template"]["spec"]["module"]["name"] for md in await api.list_mds(namespace)}
                assert len(keys) == 23  # 20 + shared + taken + off
                # It did look at every key (the initial lists enqueue them all) ...
                assert reconcile_count(second.registry) >= len(keys)
                # ... and found nothing to write: no Service, status or Event write, no changed object.
                assert request_count(second.registry) == 0, write_requests(second.registry)
                assert await api.resource_versions(namespace) == before


class TestStatusEcho:
    """A status-only change of a ModuleDeployment (our own status write coming back, or someone else's
    edit) goes to the status lane: it costs no Service reconcile."""

    async def test_status_only_change_costs_no_service_reconcile(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, \
                running_controller(controller_config(kubeconfig, namespace)) as manager:
            md = await api.create_md(namespace, module_deployment("md-echo", "echo"))
            await api.wait_converged(namespace, [md])
            await wait_quiet(manager)
            before = reconcile_count(manager.registry)
            # Someone else overwrites our status: the status lane puts it back.
            await api.client.request("PATCH", api.md.path(namespace, "md-echo", "status"),
                                     content_type="application/merge-patch+json",
                                     body={"status": {"moduleService": {"port": 1}}})

            async def restored() -> bool:
                return module_service(await api.get_md(namespace, "md-echo") or {}).get("port") == 8080
            await wait_for(restored, timeout=30, what="the status lane to restore status.moduleService.port")
            await wait_quiet(manager)
            assert reconcile_count(manager.registry) == before, "a status-only change ran a Service reconcile"
