"""(f)-(h) Who owns the Service: hand edits are undone, foreign Services are left alone, ModuleDeployments
of one module share one Service."""

from __future__ import annotations

import pytest

from controller.runtime.events import now_rfc3339
from controller.runtime.kube.client import JsonObj
from tests.harness import (
    LABEL_PREFIX,
    Api,
    api_client,
    controller_config,
    module_deployment,
    node_port,
    owner_refs,
    ready_condition,
    running_controller,
    service_problems,
    service_strategy,
    wait_for,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.core]


async def _wait_correct(api: Api, ns: str, module: str, owners: list[JsonObj], port: int = 8080, *,
                        not_rv: str | None = None, not_uid: str | None = None, timeout: float = 30.0) -> JsonObj:
    """Waits for exactly the Service the controller must make; ``not_rv``/``not_uid`` exclude the version
    or object seen before a change, so the wait cannot be satisfied by the state it started from."""
    def check(svc: JsonObj) -> bool:
        meta = svc["metadata"]
        return (not service_problems(svc, module=module, port=port, owners=owners)
                and meta["resourceVersion"] != not_rv and meta["uid"] != not_uid)
    return await api.wait_svc(ns, f"{module}-service", check, timeout=timeout,
                              what=f"{module}-service as the controller makes it")


class TestHandEdits:
    """(f) Changes made by hand to fields we own are undone; what others add to other fields stays."""

    async def test_deleted_by_hand_is_recreated(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-del", "del-mod"))
            svc = await _wait_correct(api, namespace, "del-mod", [md])

            await api.delete_svc(namespace, "del-mod-service")
            again = await _wait_correct(api, namespace, "del-mod", [md], not_uid=svc["metadata"]["uid"])
            ms = await api.wait_reason(namespace, "md-del", "ServiceReady",
                                       check=lambda ms: ms.get("nodePort") == node_port(again))
            assert ms["clusterIP"] == again["spec"]["clusterIP"]

    async def test_ports_edited_by_hand_are_restored(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-ports", "ports-mod"))
            svc = await _wait_correct(api, namespace, "ports-mod", [md])
            allocated = node_port(svc)

            http = {"name": "http", "protocol": "TCP", "port": 9999, "targetPort": 8080, "nodePort": allocated}
            edited = await api.patch_svc(namespace, "ports-mod-service", {"spec": {"ports": [http]}})
            assert edited["spec"]["ports"][0]["port"] == 9999
            restored = await _wait_correct(api, namespace, "ports-mod", [md],
                                           not_rv=edited["metadata"]["resourceVersion"])
            assert node_port(restored) == allocated
            assert restored["metadata"]["uid"] == svc["metadata"]["uid"]

            extra = {"name": "extra", "protocol": "TCP", "port": 9998, "targetPort": 9998}
            edited = await api.patch_svc(namespace, "ports-mod-service",
                                         {"spec": {"ports": [*restored["spec"]["ports"], extra]}})
            assert [p["name"] for p in edited["spec"]["ports"]] == ["http", "extra"]
            restored = await _wait_correct(api, namespace, "ports-mod", [md],
                                           not_rv=edited["metadata"]["resourceVersion"])
            assert node_port(restored) == allocated

    async def test_selector_edited_by_hand_is_restored(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-sel", "sel-mod"))
            await _wait_correct(api, namespace, "sel-mod", [md])
            key = f"{LABEL_PREFIX}sel-mod"

            edited = await api.patch_svc(namespace, "sel-mod-service", {"spec": {"selector": {key: "false"}}})
            assert edited["spec"]["selector"] == {key: "false"}
            await _wait_correct(api, namespace, "sel-mod", [md], not_rv=edited["metadata"]["resourceVersion"])

            edited = await api.patch_svc(namespace, "sel-mod-service", {"spec": {"selector": {"app": "other"}}})
            assert edited["spec"]["selector"] == {key: "true", "app": "other"}
            await _wait_correct(api, namespace, "sel-mod", [md], not_rv=edited["metadata"]["resourceVersion"])

    async def test_foreign_label_and_annotation_survive_updates(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, module_deployment("md-meta", "meta-mod"))
            await _wait_correct(api, namespace, "meta-mod", [md])

            edited = await api.patch_svc(namespace, "meta-mod-service", {"metadata": {
                "labels": {"team": "payments"}, "annotations": {"example.com/note": "keep me"}}})
            assert edited["metadata"]["labels"]["team"] == "payments"

            # Our later writes: a port change on the ModuleDeployment, then a selector repair.
            await api.patch_md(namespace, "md-meta", service_strategy(port=9090))
            updated = await _wait_correct(api, namespace, "meta-mod", [md], port=9090)
            assert updated["metadata"]["labels"]["team"] == "payments"
            assert updated["metadata"]["annotations"]["example.com/note"] == "keep me"

            edited = await api.patch_svc(namespace, "meta-mod-service", {"spec": {"selector": {"app": "x"}}})
            updated = await _wait_correct(api, namespace, "meta-mod", [md], port=9090,
                                          not_rv=edited["metadata"]["resourceVersion"])
            assert updated["metadata"]["labels"]["team"] == "payments"
            assert updated["metadata"]["annotations"]["example.com/note"] == "keep me"


class TestForeignService:
    """(g) A Service with our name that we do not manage is never changed or deleted."""

    async def test_foreign_service_is_left_alone_until_deleted(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            foreign = await api.create_svc(namespace, {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "taken-service", "labels": {"app": "someone-else"}},
                "spec": {"type": "ClusterIP", "selector": {"app": "someone-else"},
                         "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
            })
            md = await api.create_md(namespace, module_deployment("md-taken", "taken"))

            ms = await api.wait_reason(namespace, "md-taken", "NameConflict")
            assert ready_condition(ms)["status"] == "False"
            assert ms["serviceName"] == "taken-service"
            assert "nodePort" not in ms
            await api.wait_event(namespace, reason="NameConflict", involved="md-taken", type_="Warning")
            now = await api.get_svc(namespace, "taken-service")
            assert now is not None
            assert now["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
            assert now["spec"] == foreign["spec"]
            assert now["metadata"].get("labels") == {"app": "someone-else"}
            assert not now["metadata"].get("ownerReferences")

            # Not ours, so not ours to delete either when no ModuleDeployment wants the name any more.
            await api.patch_md(namespace, "md-taken", service_strategy(enableModuleService=False))
            await api.wait_reason(namespace, "md-taken", "ServiceDisabled")
            now = await api.get_svc(namespace, "taken-service")
            assert now is not None
            assert now["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
            await api.patch_md(namespace, "md-taken", service_strategy(enableModuleService=True))
            await api.wait_reason(namespace, "md-taken", "NameConflict")

            await api.delete_svc(namespace, "taken-service")
            ours = await _wait_correct(api, namespace, "taken", [md], not_uid=foreign["metadata"]["uid"])
            await api.wait_reason(namespace, "md-taken", "ServiceReady",
                                  check=lambda ms: ms.get("nodePort") == node_port(ours))


async def _create_younger(api: Api, ns: str, older: JsonObj, md: JsonObj) -> JsonObj:
    """Creates ``md`` in a later creationTimestamp second than ``older`` (1 s resolution), so that age,
    not the name tie-break, decides which one is the oldest."""
    stamp = str(older["metadata"]["creationTimestamp"])

    async def next_second() -> bool:
        return now_rfc3339() > stamp
    await wait_for(next_second, what=f"the clock to pass {stamp}")
    created = await api.create_md(ns, md)
    assert created["metadata"]["creationTimestamp"] > stamp
    return created


class TestSharedService:
    """(h) ModuleDeployments of one module share one Service; the oldest is its controller and decides."""

    async def test_shared_service_follows_its_owners(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            # Names sort against age, so only creationTimestamp can make md-z-old the oldest.
            old = await api.create_md(namespace, module_deployment("md-z-old", "shared"))
            svc = await _wait_correct(api, namespace, "shared", [old])
            new = await _create_younger(api, namespace, old, module_deployment("md-a-new", "shared"))

            both = await _wait_correct(api, namespace, "shared", [old, new])
            assert both["metadata"]["uid"] == svc["metadata"]["uid"]
            assert owner_refs(both) == {("md-z-old", old["metadata"]["uid"], True),
                                        ("md-a-new", new["metadata"]["uid"], False)}
            for name in ("md-z-old", "md-a-new"):
                ms = await api.wait_reason(namespace, name, "ServiceReady")
                assert ms["nodePort"] == node_port(svc)

            await api.delete_md(namespace, "md-z-old")
            moved = await _wait_correct(api, namespace, "shared", [new], timeout=60)
            assert moved["metadata"]["uid"] == svc["metadata"]["uid"], "the Service was recreated, not kept"
            assert owner_refs(moved) == {("md-a-new", new["metadata"]["uid"], True)}
            await api.wait_reason(namespace, "md-a-new", "ServiceReady")

            await api.delete_md(namespace, "md-a-new")
            await api.wait_svc_gone(namespace, "shared-service", timeout=60)

    async def test_ports_disagree_oldest_wins(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            old = await api.create_md(namespace, module_deployment("md-z-old", "contested", port=8080))
            await _wait_correct(api, namespace, "contested", [old])
            new = await _create_younger(api, namespace, old,
                                        module_deployment("md-a-new", "contested", port=9090))

            ms = await api.wait_reason(namespace, "md-a-new", "PortConflict")
            assert ready_condition(ms)["status"] == "False"
            assert "md-z-old" in ready_condition(ms)["message"]
            svc = await _wait_correct(api, namespace, "contested", [old, new], port=8080)
            old_ms = await api.wait_reason(namespace, "md-z-old", "ServiceReady")
            assert old_ms["port"] == 8080
            await api.wait_event(namespace, reason="PortConflict", involved="md-a-new", type_="Warning")

            # With the oldest gone, the remaining one's port is the Service's.
            await api.delete_md(namespace, "md-z-old")
            moved = await _wait_correct(api, namespace, "contested", [new], port=9090, timeout=60)
            assert moved["metadata"]["uid"] == svc["metadata"]["uid"]
            ms = await api.wait_reason(namespace, "md-a-new", "ServiceReady")
            assert (ms["port"], ms["nodePort"]) == (9090, node_port(svc))
