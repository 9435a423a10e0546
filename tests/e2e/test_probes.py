"""Health probes of a real controller process.

- ``/readyz``: the process runs with a ServiceAccount token that may not list anything yet, so its
  informers cannot sync: /readyz stays 500 (and /healthz 200: the process is alive, just not ready)
  until the test binds the controller's shipped RBAC rules (manifests/rbac/role.yaml) in the namespace.
- ``/healthz``: the process reaches the API server through a TCP proxy the test can freeze: every
  connection stays open but no byte moves (a half-open stream, as after a silent network partition).
  Liveness follows controller-runtime: the process is not wedged, so /healthz stays 200
  through the partition (a restart cannot help), while the informers re-watch, relist after two silent
  watches, and recover once the proxy thaws.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
import yaml

from controller.moduleservice.desired import service_name
from tests.conftest import ROOT
from tests.controlplane import ControlPlane
from tests.e2e.common import Wanted, wait_service, wait_services_exact
from tests.e2e.procs import (
    controller_processes,
    create_service_account,
    freezable_proxy,
    request_token,
    write_kubeconfig,
)
from tests.harness import Api, api_client, module_deployment, service_strategy, wait_for

pytestmark = pytest.mark.asyncio

ROLE = ROOT / "manifests" / "rbac" / "role.yaml"
IDLE = 2.0


class TestProbes:
    async def test_g_readyz_is_200_only_after_the_caches_synced(self, kubeconfig: str, namespace: str,
                                                                tmp_path: Path) -> None:
        sa = "module-service-controller"
        async with api_client(kubeconfig) as api, \
                controller_processes(kubeconfig, namespace, tmp_path, leader_elect=False) as group:
            await create_service_account(api, namespace, sa)
            token = await request_token(api, namespace, sa)
            sa_kubeconfig = write_kubeconfig(kubeconfig, tmp_path / "sa.kubeconfig", token=token)
            proc = group.start(kubeconfig=sa_kubeconfig)

            async def probe_answers() -> tuple[int, str] | None:
                assert proc.alive, proc.tail()
                return await group.probe(proc, "/readyz")

            first = await wait_for(probe_answers, timeout=60, what="the probe port to answer")
            assert first[0] == 500

            async def list_forbidden() -> bool:
                return any("403" in str(r.get("error")) or "forbidden" in str(r.get("error")).lower()
                           for r in proc.events("list_failed"))

            await wait_for(list_forbidden, timeout=30, what="a forbidden list in the log")
            ready = await group.probe(proc, "/readyz?verbose")
            assert ready is not None
            assert ready[0] == 500
            assert f"[-]synced-moduledeployments-{namespace} failed" in ready[1]
            assert await group.probe(proc, "/healthz") == (200, "ok")

            rules = yaml.safe_load(ROLE.read_text())["rules"]
            rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
            await api.client.request("POST", f"{rbac}/roles", body={
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "module-service-controller"}, "rules": rules})
            await api.client.request("POST", f"{rbac}/rolebindings", body={
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                "metadata": {"name": "module-service-controller"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                            "name": "module-service-controller"},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]})
            granted = time.monotonic()
            await group.wait_ready(proc, timeout=90)
            ready_after = time.monotonic() - granted
            assert await group.probe(proc, "/readyz") == (200, "ok")

            # The shipped rules are enough for the controller to do its job in the namespace.
            md = await api.create_md(namespace, module_deployment("md-ready", "ready"))
            await wait_services_exact(api, namespace, {"ready": Wanted.of(md, 8080)}, timeout=30)
            print(f"\n[e2e g] /readyz 200 {ready_after:.1f}s after the RBAC grant")

    async def test_g_healthz_stays_200_while_the_api_is_partitioned(
            self, controlplane: ControlPlane, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
        args = ["--watch-idle-timeout", f"{IDLE:g}s"]
        async with api_client(kubeconfig) as api, freezable_proxy(controlplane.server) as proxy, \
                controller_processes(kubeconfig, namespace, tmp_path, leader_elect=False, args=args) as group, \
                anyio.create_task_group() as tg:
            # Only events, bookmarks and lists count as progress, and the API server sends a bookmark only
            # about once a minute: with a 2 s idle timeout the namespace must be busy for its watches to
            # stay healthy. One object per watched resource is touched every 0.5 s.
            md = await api.create_md(namespace, module_deployment("md-heartbeat", "heartbeat"))
            await api.create_svc(namespace, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "heartbeat"},
                                             "spec": {"ports": [{"port": 80}]}})
            await api.create_pod(namespace, "heartbeat", {})
            tg.start_soon(_heartbeat, api, namespace)

            proxied = write_kubeconfig(kubeconfig, tmp_path / "proxied.kubeconfig", server=proxy.url)
            proc = await group.start_ready(kubeconfig=proxied)

            # A live stream stays healthy for longer than the check's limit (an observation window, every
            # probe must pass).
            limit = 2 * IDLE + 5
            await wait_service(api, namespace, service_name("heartbeat"), timeout=30)
            window_end = proc.started_at + limit + 2
            while time.monotonic() < window_end:
                assert await group.probe(proc, "/healthz") == (200, "ok")
                await anyio.sleep(0.5)

            frozen = time.monotonic()
            before = await group.scrape(proc)
            relists_before = before.value("informer_relists_total", resource="moduledeployments", reason="stall") or 0
            proxy.freeze()

            async def relisting() -> bool:  # a relist after two silent watches was at least attempted
                metrics = await group.scrape(proc)
                value = metrics.value("informer_relists_total", resource="moduledeployments", reason="stall")
                return (value or 0) > relists_before

            await wait_for(relisting, timeout=4 * IDLE + 20, what="a relist after two silent watches", interval=0.2)
            # 200 all along, for longer than the old limit (2 x idle + 5 s) plus margin: an API partition
            # is no reason to restart. Still ready too: the caches are synced, only stale.
            window_end = frozen + limit + 5
            while time.monotonic() < window_end:
                assert await group.probe(proc, "/healthz") == (200, "ok")
                await anyio.sleep(0.5)
            assert await group.probe(proc, "/readyz") == (200, "ok")
            assert proc.alive

            proxy.thaw()
            thawed = time.monotonic()
            # And it works again: a port change reaches the Service and the status.
            md = await api.patch_md(namespace, "md-heartbeat", service_strategy(port=9090))
            await api.wait_converged(namespace, [md], timeout=30)
            recovered_after = time.monotonic() - thawed
            tg.cancel_scope.cancel()
            print(f"\n[e2e g] frozen API: /healthz 200 throughout; converged {recovered_after:.1f}s after the thaw")


async def _heartbeat(api: Api, namespace: str) -> None:
    """Touches one MD, one Service and one Pod every 0.5 s (load shaping, not synchronisation)."""
    n = 0
    while True:
        n += 1
        patch = {"metadata": {"annotations": {"e2e/heartbeat": str(n)}}}
        await api.patch_md(namespace, "md-heartbeat", patch)
        await api.patch_svc(namespace, "heartbeat", patch)
        await api.patch_pod(namespace, "heartbeat", patch)
        await anyio.sleep(0.5)
