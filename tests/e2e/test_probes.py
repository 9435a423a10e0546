"""Health probes of a real controller process (issue 4, end-to-end g).

- ``/readyz``: the process runs with a ServiceAccount token that may not list anything yet, so its
  informers cannot sync: /readyz stays 500 (and /healthz 200: the process is alive, just not ready)
  until the test binds the controller's shipped RBAC rules (manifests/rbac/role.yaml) in the namespace.
- ``/healthz``: the process reaches the API server through a TCP proxy the test can freeze: every
  connection stays open but no byte moves (a half-open stream, as after a silent network partition).
  With ``--watch-idle-timeout 2s`` the watch check must fail within 2 x idle + 5 s (plus the probe's
  own poll) and recover once the proxy thaws; the namespace is kept busy so that a healthy watch
  does see events within the idle timeout.
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

    async def test_g_healthz_fails_while_a_watch_is_stuck(self, controlplane: ControlPlane, kubeconfig: str,
                                                          namespace: str, tmp_path: Path) -> None:
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

            async def healthz(status: int) -> tuple[int, str] | None:
                got = await group.probe(proc, "/healthz?verbose")
                return got if got is not None and got[0] == status else None

            # A live stream stays healthy for longer than the check's limit (an observation window, every
            # probe must pass).
            limit = 2 * IDLE + 5
            await wait_service(api, namespace, service_name("heartbeat"), timeout=30)
            window_end = proc.started_at + limit + 2
            while time.monotonic() < window_end:
                assert await group.probe(proc, "/healthz") == (200, "ok")
                await anyio.sleep(0.5)

            frozen = time.monotonic()
            proxy.freeze()
            failed = await wait_for(lambda: healthz(500), timeout=limit + 5, what="/healthz 500", interval=0.2)
            failed_after = time.monotonic() - frozen
            assert f"[-]watch-moduledeployments-{namespace} failed: no progress for" in failed[1]
            assert "[+]ping ok" in failed[1]
            # Still ready: the caches are synced, only stale.
            assert await group.probe(proc, "/readyz") == (200, "ok")
            assert proc.alive

            proxy.thaw()
            thawed = time.monotonic()
            await wait_for(lambda: healthz(200), timeout=30, what="/healthz 200 again", interval=0.2)
            recovered_after = time.monotonic() - thawed
            # And it works again: a port change reaches the Service and the status.
            md = await api.patch_md(namespace, "md-heartbeat", service_strategy(port=9090))
            await api.wait_converged(namespace, [md], timeout=30)
            tg.cancel_scope.cancel()
            print(f"\n[e2e g] stuck watch: /healthz 500 {failed_after:.1f}s after the freeze "
                  f"(idle timeout {IDLE:g}s, check limit {limit:g}s); 200 again {recovered_after:.1f}s after the thaw")
            assert failed_after > IDLE


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
