"""README claims that had no live test: hand edits to the
Service's type, our labels and its owner references are undone, and an update is announced with a
``ServiceUpdated`` Event."""

from __future__ import annotations

import pytest

from controller.moduleservice.desired import MODULE_LABEL
from controller.runtime.kube.client import JsonObj
from tests.harness import (
    Api,
    api_client,
    controller_config,
    module_deployment,
    running_controller,
    service_problems,
    service_strategy,
    wait_for,
)

pytestmark = pytest.mark.asyncio


async def _wait_correct(api: Api, ns: str, module: str, owners: list[JsonObj], *, port: int = 8080,
                        not_rv: str) -> JsonObj:
    def check(svc: JsonObj) -> bool:
        return not service_problems(svc, module=module, port=port, owners=owners) \
            and svc["metadata"]["resourceVersion"] != not_rv
    return await api.wait_svc(ns, f"{module}-service", check, timeout=30, what=f"{module}-service restored")


async def test_type_labels_and_owner_references_edited_by_hand_are_restored(kubeconfig: str, namespace: str) -> None:
    async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
        md = await api.create_md(namespace, module_deployment("md-edit", "edit-mod"))
        svc = await api.wait_svc(namespace, "edit-mod-service",
                                 lambda s: not service_problems(s, module="edit-mod", port=8080, owners=[md]))
        name = "edit-mod-service"
        patches: list[JsonObj] = [{"spec": {"type": "ClusterIP"}},
                                  {"metadata": {"labels": {MODULE_LABEL: "someone-else"}}},
                                  {"metadata": {"ownerReferences": []}}]
        for patch in patches:
            edited = await api.patch_svc(namespace, name, patch)
            assert service_problems(edited, module="edit-mod", port=8080, owners=[md]), patch  # the edit landed
            restored = await _wait_correct(api, namespace, "edit-mod", [md],
                                           not_rv=edited["metadata"]["resourceVersion"])
            assert restored["metadata"]["uid"] == svc["metadata"]["uid"], patch  # patched, not re-created


async def test_a_port_change_is_announced_with_service_updated(kubeconfig: str, namespace: str) -> None:
    async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
        md = await api.create_md(namespace, module_deployment("md-ev", "ev-mod"))
        svc = await api.wait_svc(namespace, "ev-mod-service")
        md = await api.patch_md(namespace, "md-ev", service_strategy(port=9090))
        await _wait_correct(api, namespace, "ev-mod", [md], port=9090, not_rv=svc["metadata"]["resourceVersion"])

        async def updated() -> list[JsonObj] | None:
            events = [e for e in await api.events(namespace) if e.get("reason") == "ServiceUpdated"]
            return events or None

        events = await wait_for(updated, timeout=30, what="a ServiceUpdated Event")
        assert all(e["type"] == "Normal" for e in events)
        assert {e["involvedObject"]["kind"] for e in events} <= {"ModuleDeployment", "Service"}
