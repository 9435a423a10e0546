"""a Service write the API server keeps refusing (403 from a quota or a webhook, 422,
500 when the nodePort range is full) shows on the ModuleDeployment: Ready False with reason
ServiceWriteFailed and the API's message, and one Warning Event whose count rises with each retry. When
the API accepts the write again, the Service is made and Ready returns.

The refusals come from tests/faultproxy.py between the controller and the real API server.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.moduleservice.mapping import ServiceKey
from controller.runtime.kube.client import JsonObj
from tests.controlplane import ControlPlane
from tests.faultproxy import FaultProxy
from tests.harness import (
    LABEL_PREFIX,
    Api,
    api_client,
    controller_config,
    module_deployment,
    ready_condition,
    running_controller,
    wait_for,
)

pytestmark = pytest.mark.asyncio


async def _warnings(api: Api, ns: str, involved: str) -> list[JsonObj]:
    return [e for e in await api.events(ns) if e.get("type") == "Warning" and e.get("reason") == "ServiceWriteFailed"
            and (e.get("involvedObject") or {}).get("name") == involved]


@pytest.mark.parametrize(("status", "verb"), [(403, "POST"), (422, "POST"), (500, "POST"), (422, "PATCH")])
async def test_refused_service_write_is_reported(controlplane: ControlPlane, namespace: str, tmp_path: Path,
                                                 status: int, verb: str) -> None:
    ns = namespace
    async with FaultProxy.for_controlplane(controlplane) as proxy, api_client(str(controlplane.kubeconfig)) as api:
        kubeconfig = proxy.write_kubeconfig(tmp_path / "kubeconfig")
        async with running_controller(controller_config(kubeconfig, ns, log_level="info")) as manager:
            if verb == "PATCH":  # an existing Service that needs an update the API refuses
                md = await api.create_md(ns, module_deployment("wf", "wf"))
                await api.wait_converged(ns, [md])
                proxy.fail_with(status, duration=600, methods=(verb,), path_contains="/services")
                await api.patch_svc(ns, "wf-service", {"spec": {"selector": {f"{LABEL_PREFIX}wf": None, "x": "y"}}})
            else:
                proxy.fail_with(status, duration=600, methods=(verb,), path_contains="/services")
                md = await api.create_md(ns, module_deployment("wf", "wf"))
            doing = "creating" if verb == "POST" else "updating"

            ms = await api.wait_reason(ns, "wf", "ServiceWriteFailed", timeout=60)
            cond = ready_condition(ms)
            assert cond["status"] == "False"
            assert cond["message"].startswith(f"{doing} Service wf-service failed: {status} "), cond
            assert f"injected by faultproxy: {status}" in cond["message"], "the API's message is shown"

            # Retries keep failing: still one Warning Event object, its count rising.
            async def repeated() -> bool:
                found = await _warnings(api, ns, "wf")
                return len(found) == 1 and int(found[0].get("count") or 0) >= 3
            await wait_for(repeated, timeout=60, what="the Warning Event's count to rise")
            assert proxy.stats.injected[status] >= 3
            (warning,) = await _warnings(api, ns, "wf")
            assert warning["message"] == cond["message"]

            proxy.resume()
            await api.wait_converged(ns, [md], timeout=120)
            assert len(await _warnings(api, ns, "wf")) == 1
            assert manager.reconciler.write_error(ServiceKey(ns, "wf-service")) is None
