"""(l) --namespace limits what the controller sees; (m) 200 ModuleDeployments created at once."""

from __future__ import annotations

import time

import pytest

from controller.moduleservice.desired import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from tests.harness import (
    api_client,
    controller_config,
    module_deployment,
    module_service,
    running_controller,
    service_problems,
    wait_quiet,
)

pytestmark = pytest.mark.asyncio


class TestNamespaceScope:
    """(l) A controller for namespace a ignores a ModuleDeployment in namespace b."""

    async def test_other_namespace_is_ignored(self, kubeconfig: str, namespace: str) -> None:
        other = f"{namespace[:55]}-b"
        async with api_client(kubeconfig) as api:
            await api.create_namespace(other)
            try:
                async with running_controller(controller_config(kubeconfig, namespace)) as manager:
                    # b first: had the controller seen it, it would have handled it before a's.
                    await api.create_md(other, module_deployment("md-b", "scoped"))
                    served = await api.create_md(namespace, module_deployment("md-a", "scoped"))
                    await api.wait_svc(namespace, "scoped-service", lambda s: not service_problems(
                        s, module="scoped", port=8080, owners=[served]))
                    await api.wait_reason(namespace, "md-a", "ServiceReady")
                    await wait_quiet(manager)

                    assert await api.list_svcs(other) == []
                    ignored = await api.get_md(other, "md-b")
                    assert ignored is not None
                    assert module_service(ignored) == {}
                    assert all(key.startswith(f"{namespace}/") for key in manager.mds.keys())  # noqa: SIM118
            finally:
                await api.delete_namespace(other)


class TestBurst:
    """(m) 200 ModuleDeployments created at once converge to 200 correct Services, no duplicates, no errors."""

    async def test_200_module_deployments_at_once(self, kubeconfig: str, namespace: str) -> None:
        n = 200
        async with api_client(kubeconfig) as api, \
                running_controller(controller_config(kubeconfig, namespace)) as manager:
            started = time.monotonic()
            mds = await api.create_mds(namespace, [
                module_deployment(f"md-{i:03d}", f"burst-{i:03d}", port=10000 + i, target_port=20000 + i)
                for i in range(n)
            ], concurrency=20)
            assert len({md["metadata"]["uid"] for md in mds}) == n

            # Every MD: its exact Service (port, targetPort, selector, owner) and a Ready status reporting it.
            await api.wait_converged(namespace, mds, timeout=max(30.0, 120 - (time.monotonic() - started)))

            ours = await api.list_svcs(namespace, label_selector=f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}")
            names = [svc["metadata"]["name"] for svc in ours]
            assert sorted(names) == sorted(f"burst-{i:03d}-service" for i in range(n))
            assert len(await api.list_svcs(namespace)) == n  # nothing else was created either
            # No key is left waiting in backoff with an error to retry.
            await wait_quiet(manager)
            # And no reconcile ever failed on the way (a 409 requeue is not an error).
            errors = sum(s.value for fam in manager.registry.collect() for s in fam.samples
                         if s.name == "controller_runtime_reconcile_errors_total")
            assert errors == 0
