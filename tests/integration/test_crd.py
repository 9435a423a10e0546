"""The ModuleDeployment CRD on the real control plane: round-trip, admission rules with field paths,
names and printer columns, the status subresource, and garbage collection of owned Services."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.errors import Invalid
from tests.controlplane import ControlPlane
from tests.harness import SEED_MD, Api, api_client, module_deployment, wait_for

CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/moduledeployments.koupleless.alipay.com"
STRATEGY = "spec.operationStrategy.serviceStrategy"
MODULE_NAME = "spec.template.spec.module.name"

pytestmark = pytest.mark.core


class TestSeedSample:
    pytestmark = pytest.mark.asyncio

    async def test_seed_sample_round_trips_exactly(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api:
            created = await api.create_md(namespace, SEED_MD)
            got = await api.get_md(namespace, SEED_MD["metadata"]["name"])
        assert got is not None
        for obj in (created, got):
            assert obj["apiVersion"] == SEED_MD["apiVersion"]
            assert obj["kind"] == SEED_MD["kind"]
            assert obj["metadata"]["name"] == SEED_MD["metadata"]["name"]
            assert obj["spec"] == SEED_MD["spec"]  # nothing pruned, defaulted or coerced
            assert obj["metadata"]["generation"] == 1
        # (a controller running on a shared control plane may have written status by the GET)
        assert "status" not in created

    @pytest.mark.parametrize("target_port", ["http", "h2c-web", 1, 65535])
    async def test_target_port_accepted(self, kubeconfig: str, namespace: str, target_port: int | str) -> None:
        async with api_client(kubeconfig) as api:
            created = await api.create_md(namespace, module_deployment("md", "provider", target_port=target_port))
        assert created["spec"]["operationStrategy"]["serviceStrategy"]["targetPort"] == target_port

    @pytest.mark.parametrize(
        ("module", "strategy"),
        [
            pytest.param("Odd_Name", {"enableModuleService": False}, id="disabled-odd-name"),
            pytest.param("Odd_Name", {}, id="no-strategy-fields-odd-name"),
            pytest.param("a" * 200, {"enableModuleService": False, "port": 8080}, id="disabled-long-name"),
            pytest.param("x", {"enableModuleService": False}, id="disabled-without-port"),
            pytest.param("a" * 55, {"enableModuleService": True, "port": 1}, id="enabled-55-chars"),
        ],
    )
    async def test_accepted_when_service_disabled_or_valid(
        self, kubeconfig: str, namespace: str, module: str, strategy: dict[str, Any]
    ) -> None:
        md = module_deployment("md", module)
        md["spec"]["operationStrategy"]["serviceStrategy"] = strategy
        async with api_client(kubeconfig) as api:
            created = await api.create_md(namespace, md)
        assert created["spec"]["template"]["spec"]["module"]["name"] == module
        assert created["spec"]["operationStrategy"]["serviceStrategy"] == strategy


class TestValidation:
    pytestmark = pytest.mark.asyncio

    @pytest.mark.parametrize(
        ("md", "field", "fragment"),
        [
            pytest.param(module_deployment("md", "provider", port=0), f"{STRATEGY}.port",
                         "port must be between 1 and 65535", id="port-0"),
            pytest.param(module_deployment("md", "provider", port=65536), f"{STRATEGY}.port",
                         "port must be between 1 and 65535", id="port-65536"),
            pytest.param(module_deployment("md", "provider", target_port=0), f"{STRATEGY}.targetPort",
                         "targetPort must be a port number between 1 and 65535", id="targetPort-0"),
            pytest.param(module_deployment("md", "provider", target_port=70000), f"{STRATEGY}.targetPort",
                         "targetPort must be a port number between 1 and 65535", id="targetPort-70000"),
            pytest.param(module_deployment("md", "provider", target_port="Web"), f"{STRATEGY}.targetPort",
                         "IANA service name", id="targetPort-bad-name"),
            pytest.param(module_deployment("md", "provider", port=None), f"{STRATEGY}.port",
                         "port is required when enableModuleService is true", id="enabled-without-port"),
            pytest.param(module_deployment("md", "Provider"), MODULE_NAME,
                         "must make a valid Service name", id="module-name-capitals"),
            pytest.param(module_deployment("md", "a" * 60), MODULE_NAME,
                         "must make a valid Service name", id="module-name-60-chars"),
        ],
    )
    async def test_rejected_with_field_path(
        self, kubeconfig: str, namespace: str, md: dict[str, Any], field: str, fragment: str
    ) -> None:
        async with api_client(kubeconfig) as api:
            with pytest.raises(Invalid) as caught:
                await api.create_md(namespace, copy.deepcopy(md))
            assert await api.get_md(namespace, "md") is None
        exc = caught.value
        assert exc.status == 422
        assert f"{field}: " in exc.message, exc.message
        assert fragment in exc.message, exc.message

    async def test_update_is_validated_too(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api:
            await api.create_md(namespace, module_deployment("md", "provider"))
            with pytest.raises(Invalid) as caught:
                await api.patch_md(namespace, "md", {"spec": {"operationStrategy": {"serviceStrategy": {"port": 0}}}})
        assert caught.value.status == 422
        assert f"{STRATEGY}.port: " in caught.value.message


class TestNamesAndColumns:
    pytestmark = pytest.mark.asyncio

    async def test_short_name_and_printer_columns(self, kubeconfig: str) -> None:
        async with api_client(kubeconfig) as api:
            crd = await api.client.request("GET", CRD_PATH)
            discovery = await api.client.request("GET", "/apis/koupleless.alipay.com/v1alpha1")
        assert crd["spec"]["names"]["shortNames"] == ["mddeploy"]
        assert crd["spec"]["scope"] == "Namespaced"
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1alpha1"
        columns = {c["name"]: (c["type"], c["jsonPath"]) for c in version["additionalPrinterColumns"]}
        assert columns == {
            "Module": ("string", ".spec.template.spec.module.name"),
            "Version": ("string", ".spec.template.spec.module.version"),
            "Replicas": ("integer", ".spec.replicas"),
            "Service": ("string", ".status.moduleService.serviceName"),
            "Age": ("date", ".metadata.creationTimestamp"),
        }
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        resources = {r["name"]: r for r in discovery["resources"]}
        assert resources["moduledeployments"]["shortNames"] == ["mddeploy"]

    async def test_kubectl_uses_short_name_and_columns(
        self, controlplane: ControlPlane, kubeconfig: str, namespace: str
    ) -> None:
        async with api_client(kubeconfig) as api:
            await api.create_md(namespace, SEED_MD)
        out = controlplane.kubectl("get", "mddeploy", "-n", namespace)
        header, row = out.strip().splitlines()
        assert header.split() == ["NAME", "MODULE", "VERSION", "REPLICAS", "SERVICE", "AGE"]
        assert row.split()[:4] == ["moduledeployment-sample-provider", "dynamic-provider", "1.0.2", "1"]


class TestStatusSubresource:
    pytestmark = pytest.mark.asyncio

    async def test_status_subresource_exists(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api:
            crd = await api.client.request("GET", CRD_PATH)
            assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
            md = copy.deepcopy(SEED_MD)
            md["status"] = {"moduleService": {"serviceName": "ignored-on-create"}}
            created = await api.create_md(namespace, md)
            assert "status" not in created  # status is not writable through the main resource
            name = SEED_MD["metadata"]["name"]
            # Only a key no controller writes: a controller may run on a shared control plane and own
            # status.moduleService. The schema preserves unknown status fields for other controllers.
            foreign = {"phase": "Running", "batches": [1, 2]}
            patched = await api.client.request(
                "PATCH", MODULE_DEPLOYMENTS.path(namespace, name, "status"), body={"status": {"foreign": foreign}},
                content_type="application/merge-patch+json",
            )
            assert patched["status"]["foreign"] == foreign
            assert patched["metadata"]["generation"] == created["metadata"]["generation"]
            # a spec change through /status is ignored, and a status change through the main resource too
            ignored = await api.client.request(
                "PATCH", MODULE_DEPLOYMENTS.path(namespace, name, "status"),
                body={"spec": {"replicas": 5}}, content_type="application/merge-patch+json",
            )
            assert ignored["spec"]["replicas"] == 1
            main = await api.patch_md(namespace, name, {"status": {"foreign": {"phase": "Failed"}}})
            assert main["status"]["foreign"] == foreign
            assert main["metadata"]["generation"] == created["metadata"]["generation"]

    async def test_status_condition_status_enum_enforced(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api:
            await api.create_md(namespace, SEED_MD)
            with pytest.raises(Invalid):
                await api.client.request(
                    "PATCH", MODULE_DEPLOYMENTS.path(namespace, SEED_MD["metadata"]["name"], "status"),
                    body={"status": {"moduleService": {"conditions": [{"type": "Ready", "status": "Yes"}]}}},
                    content_type="application/merge-patch+json",
                )


class TestGarbageCollection:
    pytestmark = pytest.mark.asyncio

    async def test_owned_service_collected_after_md_deleted(self, kubeconfig: str, namespace: str) -> None:
        # The service strategy is off and the Service name is not "<module>-service": a module-service
        # controller running on a shared control plane has no reason to touch either.
        md_body = module_deployment("gc-owner", "gc-module", enabled=False)
        async with api_client(kubeconfig) as api:
            md = await api.create_md(namespace, md_body)
            owner = {
                "apiVersion": md["apiVersion"], "kind": md["kind"], "name": md["metadata"]["name"],
                "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": False,
            }
            await api.create_svc(namespace, {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "gc-owned", "ownerReferences": [owner]},
                "spec": {"type": "NodePort", "selector": {"module.koupleless.alipay.com/gc-module": "true"},
                         "ports": [{"name": "http", "port": 8080, "targetPort": 8080}]},
            })
            bystander = await api.create_svc(namespace, {
                "apiVersion": "v1", "kind": "Service", "metadata": {"name": "gc-bystander"},
                "spec": {"ports": [{"port": 80}]},
            })
            svc = await api.get_svc(namespace, "gc-owned")
            assert svc is not None
            assert svc["metadata"]["ownerReferences"] == [owner]

            await api.delete_md(namespace, md["metadata"]["name"])
            await wait_for(_gone(api, namespace, "gc-owned"), timeout=90,
                           what="the garbage collector to delete the owned Service", interval=0.5)
            still = await api.get_svc(namespace, "gc-bystander")
            assert still is not None
            assert still["metadata"]["uid"] == bystander["metadata"]["uid"]


def _gone(api: Api, namespace: str, name: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await api.get_svc(namespace, name) is None
    return check
