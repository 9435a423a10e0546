"""(a) The seed's sample ModuleDeployment gets exactly the Service the seed document shows."""

from __future__ import annotations

import pytest

from tests.harness import SEED_MD, api_client, controller_config, running_controller, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.core]


class TestSeedSample:
    async def test_sample_gets_the_seed_service(self, kubeconfig: str, namespace: str) -> None:
        async with api_client(kubeconfig) as api, running_controller(controller_config(kubeconfig, namespace)):
            md = await api.create_md(namespace, SEED_MD)

            async def service() -> dict | None:  # type: ignore[type-arg]
                return await api.get_svc(namespace, "dynamic-provider-service")

            svc = await wait_for(service, what="dynamic-provider-service")
            spec = svc["spec"]
            assert spec["type"] == "NodePort"
            assert spec["selector"] == {"module.koupleless.alipay.com/dynamic-provider": "true"}
            assert len(spec["ports"]) == 1
            port = spec["ports"][0]
            assert (port["name"], port["protocol"], port["port"], port["targetPort"]) == ("http", "TCP", 8080, 8080)
            assert 30000 <= port["nodePort"] <= 32767
            assert spec["clusterIP"]
            assert spec["clusterIP"] != "None"
            assert spec["sessionAffinity"] == "None"
            assert spec["externalTrafficPolicy"] == "Cluster"
            refs = svc["metadata"]["ownerReferences"]
            assert refs == [{
                "apiVersion": "koupleless.alipay.com/v1alpha1", "kind": "ModuleDeployment",
                "name": "moduledeployment-sample-provider", "uid": md["metadata"]["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }]
            labels = svc["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "module-service-controller"
            assert labels["koupleless.alipay.com/module"] == "dynamic-provider"

            async def ready_status() -> dict | None:  # type: ignore[type-arg]
                got = await api.get_md(namespace, "moduledeployment-sample-provider")
                ms = ((got or {}).get("status") or {}).get("moduleService") or {}
                return ms if ms.get("conditions", [{}])[0].get("reason") == "ServiceReady" else None

            status = await wait_for(ready_status, what="status.moduleService Ready")
            assert status["serviceName"] == "dynamic-provider-service"
            assert status["nodePort"] == port["nodePort"]
            assert status["clusterIP"] == spec["clusterIP"]
            assert (status["port"], status["targetPort"], status["type"]) == (8080, 8080, "NodePort")
            assert (status["pods"], status["readyPods"]) == (0, 0)
            assert status["observedGeneration"] == md["metadata"]["generation"]
