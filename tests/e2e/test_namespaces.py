"""Namespace mode at scale: 60 namespaces with ``--leader-elect``.

Each (resource, namespace) pair is one long-lived watch, so the process holds 180 watch connections. They
used to share one pool of 100 with the LISTs, the writes and the Lease: the LISTs starved until the
cache-sync timeout, or the renewal timed out and leadership was lost. Here the leader must hold the Lease
(same holder, no transition, renewTime moving) for 60 s while a ModuleDeployment, hence a Service, appears
in every namespace.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from tests.controlplane import ControlPlane
from tests.e2e.common import Wanted, wait_services_exact
from tests.e2e.procs import controller_processes
from tests.harness import api_client, module_deployment

pytestmark = pytest.mark.asyncio

NAMESPACES = 60
HOLD = 60.0


async def test_60_namespaces_leader_keeps_the_lease_while_services_appear(
        controlplane: ControlPlane, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
    extra = [f"{namespace}-{i}" for i in range(1, NAMESPACES)]
    for ns in extra:
        controlplane.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace",
                                                             "metadata": {"name": ns}})
    namespaces = [namespace, *extra]
    args = [a for ns in extra for a in ("--namespace", ns)]
    try:
        async with api_client(kubeconfig) as api, \
                controller_processes(kubeconfig, namespace, tmp_path, args=args) as group:
            proc = await group.start_ready(timeout=180)
            leader = await group.leader(api, timeout=60)
            assert leader is proc
            first = await group.lease(api)
            assert first is not None
            transitions = first["spec"].get("leaseTransitions", 0)

            started = time.monotonic()
            renew_times = {first["spec"]["renewTime"]}
            created = 0
            mds: dict[str, dict[str, object]] = {}
            while time.monotonic() - started < HOLD:
                # Spread the writes over the window: one namespace gets its ModuleDeployment per second.
                if created < NAMESPACES:
                    ns = namespaces[created]
                    mds[ns] = await api.create_md(ns, module_deployment("md", "m"))
                    created += 1
                lease = await group.lease(api)
                assert lease is not None
                spec = lease["spec"]
                assert spec["holderIdentity"] == proc.identity, spec
                assert spec.get("leaseTransitions", 0) == transitions, spec
                renew_times.add(spec["renewTime"])
                assert proc.alive, proc.tail()
                await anyio.sleep(1.0)  # the observation period, not a synchronisation
            for ns in namespaces[created:]:
                mds[ns] = await api.create_md(ns, module_deployment("md", "m"))
            for ns in namespaces:
                await wait_services_exact(api, ns, {"m": Wanted.of(mds[ns], 8080)}, timeout=60)
            # The renewal kept going (every 2 s by default): many distinct renewTimes, never a lost lease.
            assert len(renew_times) >= HOLD / 4, sorted(renew_times)
            assert proc.alive
            assert not proc.events("leader_election_lost")
            assert await group.master_status(proc) == 1.0
            synced = proc.events("caches_synced")
            print(f"\n[namespaces] {NAMESPACES} namespaces: caches synced in {synced[0]['seconds']}s; "
                  f"{len(renew_times)} renewals seen in {HOLD:g}s; lease transitions {transitions}")
    finally:
        for ns in extra:
            controlplane.request(f"/api/v1/namespaces/{ns}", "DELETE")
