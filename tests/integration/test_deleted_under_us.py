"""A module Service deleted by someone else while a ModuleDeployment still wants it.

Koupleless' own module-controller deletes ``<module>-service`` by name on every reconcile of a terminating
ModuleDeployment, even while a newer version of the module still wants the Service. Clients reach the
module through its nodePort (and clusterIP), so the Service must come back at once and with the same
addresses, however often that happens, and one create per delete at most. The API server's audit log
(not the controller's own metrics) says who wrote what and when.
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from pathlib import Path

import anyio
import pytest

from controller.runtime.kube.client import JsonObj
from tests.audit import service_writes
from tests.controlplane import ControlPlane
from tests.faultproxy import FaultProxy
from tests.harness import api_client, controller_config, module_deployment, node_port, running_controller, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.core]

CONTROLLER_USER = "module-service-controller-test"
DELETES = 20
PACE = 0.5  # one delete every half second: 20 deletes in 10 s


def _addresses(svc: JsonObj) -> tuple[str, int]:
    return svc["spec"]["clusterIP"], node_port(svc)


async def test_every_delete_is_undone_with_the_same_addresses(controlplane: ControlPlane, namespace: str) -> None:
    kubeconfig = str(controlplane.user_kubeconfig(CONTROLLER_USER))
    async with api_client(str(controlplane.kubeconfig)) as api, \
            running_controller(controller_config(kubeconfig, namespace)):
        await api.create_md(namespace, module_deployment("beta-v2", "beta"))
        first = await api.wait_svc(namespace, "beta-service")
        addresses = _addresses(first)
        uids = [first["metadata"]["uid"]]
        started = time.monotonic()
        for i in range(DELETES):
            await anyio.sleep(max(0.0, started + i * PACE - time.monotonic()))  # pacing, not synchronisation
            await api.delete_svc(namespace, "beta-service")
            back = await api.wait_svc(namespace, "beta-service", lambda s: s["metadata"]["uid"] not in uids,
                                      timeout=30, what=f"beta-service re-created after delete {i + 1}")
            uids.append(back["metadata"]["uid"])
            assert _addresses(back) == addresses, f"delete {i + 1}: the re-created Service has new addresses"

        # From the API server's audit log: for each delete (by the test, as admin), the controller's create
        # that followed, and nothing else from the controller while the Service existed.
        async def all_audited() -> list[tuple[str, str, bool]] | None:
            writes = [(w.verb, w.user, w.succeeded) for w in service_writes(controlplane.audit_log, namespace)]
            return writes if len(writes) >= 2 * DELETES + 1 else None

        await wait_for(all_audited, timeout=30, what="the audit log to show every write")
        writes = service_writes(controlplane.audit_log, namespace)
        ours = [w for w in writes if w.user == CONTROLLER_USER]
        deletes = [w for w in writes if w.verb == "delete" and w.user != CONTROLLER_USER and w.succeeded]
        assert len(deletes) == DELETES
        assert [w.verb for w in ours] == ["create"] * (DELETES + 1), \
            f"the controller wrote more than one create per delete: {[(w.verb, w.code) for w in ours]}"
        assert all(w.succeeded for w in ours)
        # From the delete's arrival to the create's answer: the longest the module can have had no Service.
        gaps = [_seconds(c.at) - _seconds(d.received) for d, c in zip(deletes, ours[1:], strict=True)]
        p50 = statistics.median(gaps)
        p99 = sorted(gaps)[max(0, round(0.99 * len(gaps)) - 1)]
        print(f"\nre-create after a foreign delete ({DELETES} deletes in {time.monotonic() - started:.1f}s): "
              f"gap p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms; "
              f"creates per delete {(len(ours) - 1) / DELETES:.2f}; addresses kept {addresses}")
        # The target is p99 <= 1 s (the note reports the figures); the bound here only fails what the old
        # fight backoff did (1, 2, 4 ... 60 s), not a slow moment of a loaded machine.
        assert max(gaps) < 8.0, f"gaps {gaps}"


async def test_created_then_deleted_before_the_cache_saw_it(controlplane: ControlPlane, namespace: str,
                                                            tmp_path: Path) -> None:
    """The controller's Service watch is held while it creates the Service and someone deletes it; then
    the watch expires (410) and the relist finds no Service: the store never had one, so no event at all.
    The cache shows "no Service" again, exactly what it showed before the create: taken for the
    controller's own create still on its way, the Service was never re-created."""
    async with FaultProxy.for_controlplane(controlplane) as proxy, api_client(str(controlplane.kubeconfig)) as api:
        proxied = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
        async with running_controller(controller_config(proxied, namespace, watch_idle_timeout=60.0)) as manager:
            async def services_watched() -> bool:
                return proxy.watching("/services")

            await wait_for(services_watched, timeout=30, what="the controller's Service watch")
            proxy.stall_watches(existing=True, path_contains="/services")
            await api.create_md(namespace, module_deployment("gamma-v1", "gamma"))
            created = await api.wait_svc(namespace, "gamma-service", timeout=30)
            await api.delete_svc(namespace, "gamma-service")
            await api.wait_svc_gone(namespace, "gamma-service")
            proxy.fail_with(410, count=1, watch=True, path_contains="/services")
            proxy.release_watches()  # the re-watch meets 410: the controller relists Services
            back = await api.wait_svc(namespace, "gamma-service",
                                      lambda s: s["metadata"]["uid"] != created["metadata"]["uid"], timeout=60,
                                      what="gamma-service re-created after the create and delete the relist folded")
            assert _addresses(back) == _addresses(created)
            assert manager.serving
        proxy.resume()


def _seconds(stamp: str) -> float:
    """An audit stageTimestamp (RFC 3339, microseconds, Z) as seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
