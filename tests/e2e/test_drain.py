"""SIGTERM drains in-flight reconciles at the process level (a README claim). A fault proxy holds the
controller's Service POST for a few seconds; SIGTERM arrives while it
is in flight; the process must let it finish (the Service exists, created by this process), release the
Lease and exit 0."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from controller.moduleservice.desired import service_name
from tests.controlplane import ControlPlane
from tests.e2e.common import log_time
from tests.e2e.procs import controller_processes
from tests.faultproxy import FaultProxy
from tests.harness import api_client, module_deployment, wait_for

pytestmark = pytest.mark.asyncio

HOLD = 4.0  # how long the proxy holds the Service POST


async def test_sigterm_waits_for_the_reconcile_in_flight(controlplane: ControlPlane, kubeconfig: str,
                                                         namespace: str, tmp_path: Path) -> None:
    async with FaultProxy.for_controlplane(controlplane) as proxy, api_client(kubeconfig) as api, \
            controller_processes(kubeconfig, namespace, tmp_path) as group:
        proxied = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
        proc = await group.start_ready(kubeconfig=proxied)
        await group.leader(api)
        proxy.slow_down(HOLD, duration=120, methods=("POST",), path_contains="/services")
        await api.create_md(namespace, module_deployment("md-drain", "drain"))

        async def in_flight() -> bool:
            return proxy.stats.delayed >= 1  # counted when the hold starts

        await wait_for(in_flight, timeout=30, what="the Service POST to be in flight", interval=0.02)
        signalled = time.monotonic()
        proc.terminate()
        assert await proc.wait_exit(timeout=30) == 0, proc.tail()
        took = time.monotonic() - signalled
        # The reconcile in flight finished: the Service exists, and this process logged creating it.
        assert await api.get_svc(namespace, service_name("drain")) is not None
        assert f"{namespace}/{service_name('drain')}" in proc.reconciled_keys("service_created")
        stopped = proc.events("workers_stopped")
        requested = proc.events("shutdown_requested")
        created = [r for r in proc.events("reconciled") if "service_created" in (r.get("actions") or [])]
        assert stopped
        assert requested
        assert created
        assert log_time(requested[0]) < log_time(created[0]) <= log_time(stopped[0])
        assert proc.events("lease_released")
        print(f"\n[drain] SIGTERM with a POST in flight: exit 0 after {took:.1f}s (POST held {HOLD:g}s)")
