"""(b)-(e) The Service follows its ModuleDeployment: port changes, enable/disable, rename, deletion."""

from __future__ import annotations

import pytest

from controller.runtime.kube.client import JsonObj
from tests.harness import (
    api_client,
    controller_config,
    module_deployment,
    node_port,
    ready_condition,
    running_controller,
    service_problems,
    service_strategy,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.core]


class TestPortChange:
    """(b) port/targetPort changes update the Service in place; the allocated nodePort is kept."""

    async def test_port_and_target_port_changes_keep_node_port(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-port", "port-mod", port=8080, target_port=8080))
            svc = await api.wait_svc(namespace, "port-mod-service", lambda s: not service_problems(
                s, module="port-mod", port=8080, target_port=8080, owners=[md]))
            first_node_port, uid, cluster_ip = node_port(svc), svc["metadata"]["uid"], svc["spec"]["clusterIP"]
            await api.wait_reason(namespace, "md-port", "ServiceReady")

            steps: list[tuple[JsonObj, int, int | str]] = [
                ({"port": 9090}, 9090, 8080),
                ({"targetPort": 9091}, 9090, 9091),
                ({"targetPort": "web"}, 9090, "web"),  # a named container port
            ]
            for fields, port, target in steps:
                patched = await api.patch_md(namespace, "md-port", service_strategy(**fields))
                generation = patched["metadata"]["generation"]

                def updated(s: JsonObj, port: int = port, target: int | str = target) -> bool:
                    return not service_problems(s, module="port-mod", port=port, target_port=target, owners=[md])

                svc = await api.wait_svc(namespace, "port-mod-service", updated, what=f"Service at {port}->{target}")
                assert svc["metadata"]["uid"] == uid, "the Service was replaced instead of updated"
                assert node_port(svc) == first_node_port
                assert svc["spec"]["clusterIP"] == cluster_ip

                def observed(ms: JsonObj, generation: int = generation) -> bool:
                    return bool(ms.get("observedGeneration") == generation)

                ms = await api.wait_reason(namespace, "md-port", "ServiceReady", check=observed)
                assert (ms["port"], ms["targetPort"], ms["nodePort"]) == (port, target, first_node_port)


class TestEnableToggle:
    """(c) enableModuleService true -> false deletes the Service; false -> true creates it again."""

    async def test_disable_deletes_and_enable_recreates(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-toggle", "toggle-mod"))
            svc = await api.wait_svc(namespace, "toggle-mod-service", lambda s: not service_problems(
                s, module="toggle-mod", port=8080, owners=[md]))
            await api.wait_reason(namespace, "md-toggle", "ServiceReady")

            await api.patch_md(namespace, "md-toggle", service_strategy(enableModuleService=False))
            await api.wait_svc_gone(namespace, "toggle-mod-service")
            ms = await api.wait_reason(namespace, "md-toggle", "ServiceDisabled")
            assert ready_condition(ms)["status"] == "False"
            # Fields that described the Service are removed, not left stale.
            assert not {"nodePort", "clusterIP", "port", "pods"} & ms.keys(), ms
            await api.wait_event(namespace, reason="ServiceDeleted", involved="md-toggle")

            await api.patch_md(namespace, "md-toggle", service_strategy(enableModuleService=True))
            again = await api.wait_svc(namespace, "toggle-mod-service", lambda s: not service_problems(
                s, module="toggle-mod", port=8080, owners=[md]))
            assert again["metadata"]["uid"] != svc["metadata"]["uid"]
            ms = await api.wait_reason(namespace, "md-toggle", "ServiceReady")
            assert ms["nodePort"] == node_port(again)


class TestModuleRename:
    """(d) Renaming the module deletes the old Service and creates the new one."""

    async def test_rename_moves_the_service(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-rename", "old-mod"))
            await api.wait_svc(namespace, "old-mod-service", lambda s: not service_problems(
                s, module="old-mod", port=8080, owners=[md]))
            await api.wait_reason(namespace, "md-rename", "ServiceReady")

            rename = {"spec": {"template": {"spec": {"module": {"name": "new-mod"}}}}}
            await api.patch_md(namespace, "md-rename", rename)
            await api.wait_svc(namespace, "new-mod-service", lambda s: not service_problems(
                s, module="new-mod", port=8080, owners=[md]))
            await api.wait_svc_gone(namespace, "old-mod-service")
            ms = await api.wait_reason(namespace, "md-rename", "ServiceReady",
                                       check=lambda ms: ms.get("serviceName") == "new-mod-service")
            assert ms["observedGeneration"] == 2


class TestModuleDeploymentDeleted:
    """(e) Deleting the ModuleDeployment removes its Service (by us or by the garbage collector)."""

    async def test_delete_removes_the_service(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-gone", "gone-mod"))
            await api.wait_svc(namespace, "gone-mod-service", lambda s: not service_problems(
                s, module="gone-mod", port=8080, owners=[md]))

            await api.delete_md(namespace, "md-gone")
            await api.wait_svc_gone(namespace, "gone-mod-service", timeout=60)
            assert await api.get_md(namespace, "md-gone") is None
