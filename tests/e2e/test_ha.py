"""High availability with real controller processes.

Each test runs three ``module-service-controller`` processes with ``--leader-elect`` in its own namespace
(Lease, ModuleDeployments and Services all live there). Timing figures are printed; run with ``-s`` to
collect them.
"""

from __future__ import annotations

import functools
import random
import signal
import time
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from controller.moduleservice.desired import service_name
from tests.controlplane import ControlPlane
from tests.e2e.common import Wanted, exact_problems, log_time, wait_service, wait_services_exact
from tests.e2e.procs import JITTER_FACTOR, SHORT_LEASE, controller_processes
from tests.harness import Api, api_client, module_deployment, wait_for

pytestmark = [pytest.mark.asyncio, pytest.mark.core]

# Standby polling for a released Lease: attempts 1-2.2 s apart with a 1 s retry period; lease and renew
# deadline stay at their defaults (15 s / 10 s).
HANDOVER_RETRY = 1.0
# What the test can honestly tell on a loaded 2-core machine: the standby took over because the Lease was
# released, not because it expired (that takes the 15 s lease duration). Half of it leaves ~5 s of margin
# over the expected ~2-3 s; the hand-over time itself is a benchmark figure (bench/failover.py) and is
# printed here, not asserted tightly.
HANDOVER_BOUND = 15.0 / 2


class TestLeaderElection:
    async def test_a_exactly_one_leader(self, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
        async with api_client(kubeconfig) as api, controller_processes(kubeconfig, namespace, tmp_path) as group:
            procs = await group.start_many(3)
            leader = await group.leader(api)

            assert [p for p in procs if p.events("lease_acquired")] == [leader]
            lease = await group.lease(api)
            assert lease is not None
            spec = lease["spec"]
            assert spec["holderIdentity"] == leader.identity
            assert spec["leaseDurationSeconds"] == 15
            assert spec["leaseTransitions"] == 0
            assert spec["acquireTime"]
            assert spec["renewTime"]
            statuses = {p.name: await group.master_status(p) for p in procs}
            assert statuses == {p.name: (1.0 if p is leader else 0.0) for p in procs}
            # Only the leader runs workers; the standbys are warm (synced) but idle.
            assert [p for p in procs if p.events("workers_starting")] == [leader]

    async def test_b_sigterm_releases_and_standby_takes_over(self, kubeconfig: str, namespace: str,
                                                             tmp_path: Path) -> None:
        args = ["--leader-elect-retry-period", f"{HANDOVER_RETRY:g}s"]
        async with api_client(kubeconfig) as api, \
                controller_processes(kubeconfig, namespace, tmp_path, args=args) as group:
            procs = await group.start_many(3)
            old = await group.leader(api)
            old_identity = old.identity

            signalled, signalled_wall = time.monotonic(), time.time()
            old.terminate()
            # Once it has logged the signal its queue is shut down: the new MD can only be handled by
            # a standby, so the time to its Service is the hand-over time.
            async def stopping() -> bool:
                return bool(old.events("shutdown_requested"))

            await wait_for(stopping, timeout=5, what="the leader to log shutdown_requested", interval=0.005)
            await api.create_md(namespace, module_deployment("md-handover", "handover"))
            seen = await wait_service(api, namespace, service_name("handover"), timeout=15)
            failover = seen - signalled

            rc = await old.wait_exit(timeout=10)
            assert rc == 0, old.tail()
            assert await group.lease_holder(api) != old_identity
            released = old.events("lease_released")
            assert released, old.tail()
            release_ms = (log_time(released[0]) - signalled_wall) * 1000
            stopped_ms = (log_time(old.events("stopped")[-1]) - signalled_wall) * 1000

            new = await group.leader(api, exclude=[old], timeout=10)
            assert new.identity != old_identity
            key = f"{namespace}/{service_name('handover')}"
            assert key in new.reconciled_keys("service_created")
            assert key not in old.reconciled_keys("service_created")
            lease = await group.lease(api)
            assert lease is not None
            assert lease["spec"]["leaseTransitions"] == 1
            assert [p for p in procs if p.alive] == [p for p in procs if p is not old]
            # A standby stops at once on SIGTERM (nothing in flight) and leaves the Lease alone.
            standby = next(p for p in procs if p.alive and p is not new)
            standby.terminate()
            assert await standby.wait_exit(timeout=10) == 0, standby.tail()
            assert not standby.events("lease_released")
            assert await group.lease_holder(api) == new.identity
            print(f"\n[e2e b] SIGTERM hand-over: Service visible {failover:.2f}s after the signal "
                  f"(lease released {release_ms:.0f} ms after it, old leader stopped after {stopped_ms:.0f} ms, "
                  f"exit 0; retry period {HANDOVER_RETRY:g}s)")
            assert failover < HANDOVER_BOUND

    async def test_c_sigkill_failover_within_lease_duration(self, kubeconfig: str, namespace: str,
                                                            tmp_path: Path) -> None:
        s = SHORT_LEASE
        async with api_client(kubeconfig) as api, \
                controller_processes(kubeconfig, namespace, tmp_path, args=s.args()) as group:
            await group.start_many(3)
            old = await group.leader(api)

            killed = time.monotonic()
            old.kill()
            assert await old.wait_exit(timeout=5) == -signal.SIGKILL
            await api.create_md(namespace, module_deployment("md-failover", "failover"))
            seen = await wait_service(api, namespace, service_name("failover"), timeout=30)
            failover = seen - killed

            new = await group.leader(api, exclude=[old], timeout=10)
            assert f"{namespace}/{service_name('failover')}" in new.reconciled_keys("service_created")
            lease = await group.lease(api)
            assert lease is not None
            assert lease["spec"]["leaseTransitions"] == 1
            nominal = s.lease_duration + 2 * s.retry_period
            # A standby sees the dead leader's last renew up to one (jittered) retry interval late and
            # notices the expiry up to one more interval late: the hard bound uses the jittered interval.
            bound = s.lease_duration + 2 * s.retry_period * (1 + JITTER_FACTOR) + 0.5
            print(f"\n[e2e c] SIGKILL failover: Service visible {failover:.2f}s after the kill "
                  f"(lease {s.lease_duration:g}s/renew {s.renew_deadline:g}s/retry {s.retry_period:g}s; "
                  f"nominal {nominal:g}s, jittered bound {bound:g}s)")
            assert failover <= bound


class TestChurn:
    async def test_d_churn_while_leaders_are_killed(self, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
        """100 MDs created, ports changed, some deleted (and a few re-created) while the leader is SIGKILLed
        twice; a replacement process keeps three running. The final state must be exact."""
        rng = random.Random(4)
        n = 100
        ops: list[tuple[str, int]] = []
        for i in range(n):
            ops.append(("create", i))
            if i >= 15 and i % 3 == 0:
                ops.append(("port", i - 15))
            if i >= 25 and i % 4 == 0:
                ops.append(("delete", i - 25))
        for i in rng.sample(range(n), 20):
            ops.append(("port", i))
        for i in rng.sample(range(50, n), 10):
            ops.append(("delete", i))
        for i in (1, 5, 9):  # a new MD with the same name (new uid, new port) takes the Service over
            ops.append(("delete", i))
            ops.append(("recreate", i))

        wanted: dict[str, Wanted] = {}
        progress = {"done": 0}

        async def apply(api: Api, op: str, i: int) -> None:
            module, name = f"m{i:03d}", f"md-{i:03d}"
            if op in ("create", "recreate"):
                port = 8000 + i if op == "create" else 7000 + i
                md = await api.create_md(namespace, module_deployment(name, module, port=port))
                wanted[module] = Wanted.of(md, port)
            elif op == "port":
                if module not in wanted:
                    return
                port = wanted[module].port + 1000
                await api.patch_md(namespace, name, {"spec": {"operationStrategy": {"serviceStrategy": {
                    "port": port}}}})
                wanted[module] = Wanted(port, name, wanted[module].md_uid)
            else:
                await api.delete_md(namespace, name)
                wanted.pop(module, None)

        async def churn(api: Api) -> None:
            for op, i in ops:
                await apply(api, op, i)
                progress["done"] += 1
                # Pacing, not synchronisation: spread the ~200 changes over ~15 s so that both kills
                # land in the middle of them.
                await anyio.sleep(0.06)

        async with api_client(kubeconfig) as api, \
                controller_processes(kubeconfig, namespace, tmp_path, args=SHORT_LEASE.args()) as group:
            await group.start_many(3)
            first = await group.leader(api)
            started = time.monotonic()
            kills: list[str] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(churn, api)

                async def done_at_least(k: int) -> bool:
                    return progress["done"] >= k

                await wait_for(lambda: done_at_least(40), timeout=60, what="40 changes")
                first.kill()
                kills.append(f"{first.name} at change {progress['done']}")
                group.start()  # the Deployment's replacement
                second = await group.leader(api, exclude=[first], timeout=30)

                async def second_works() -> bool:
                    return bool(second.events("reconciled"))

                await wait_for(second_works, timeout=30, what="the second leader to reconcile")
                second.kill()
                second_kill_at = progress["done"]
                kills.append(f"{second.name} at change {second_kill_at}")
                group.start()
            churned = time.monotonic() - started
            assert progress["done"] == len(ops)
            assert second_kill_at < len(ops), "the second kill must land while the changes are still coming"
            assert not first.alive
            assert not second.alive
            assert len(group.alive) == 3

            took = await wait_services_exact(api, namespace, wanted, timeout=120)
            third = await group.leader(api, exclude=[first, second], timeout=30)
            lease = await group.lease(api)
            assert lease is not None
            assert lease["spec"]["leaseTransitions"] >= 2
            # The statuses follow: every remaining MD is Ready and reports its Service and nodePort.
            live = await api.list_mds(namespace)
            assert sorted(md["metadata"]["name"] for md in live) == sorted(w.md_name for w in wanted.values())
            await api.wait_converged(namespace, live, timeout=30)
            assert await exact_problems(api, namespace, wanted) == []
            print(f"\n[e2e d] {len(ops)} changes over {churned:.1f}s ({len(wanted)} Services wanted), "
                  f"killed {', '.join(kills)}; exact state {took:.1f}s after the last change; "
                  f"final leader {third.name}")


class TestApiServerLoss:
    async def test_e_leader_exits_when_it_cannot_renew(self, controlplane: ControlPlane, kubeconfig: str,
                                                       namespace: str, tmp_path: Path) -> None:
        """Runs on the e2e control plane (tests/e2e/conftest.py), never on the shared one."""
        cp = controlplane
        s = SHORT_LEASE
        async with api_client(kubeconfig) as api, \
                controller_processes(kubeconfig, namespace, tmp_path, args=s.args()) as group:
            procs = await group.start_many(3)
            wanted: dict[str, Wanted] = {}
            for i in range(5):
                md = await api.create_md(namespace, module_deployment(f"md-{i}", f"m{i}", port=8000 + i))
                wanted[f"m{i}"] = Wanted.of(md, 8000 + i)
            await wait_services_exact(api, namespace, wanted, timeout=30)
            leader = await group.leader(api)

            stop_wall, stop_mono = time.time(), time.monotonic()
            gone_after: list[float] = []

            async def stop_apiserver() -> None:
                # SIGKILL: gone at once (SIGTERM drains connections for up to 15 s), so the clock starts here.
                await anyio.to_thread.run_sync(functools.partial(cp.stop, "kube-apiserver", sig=signal.SIGKILL))
                gone_after.append(time.monotonic() - stop_mono)

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(stop_apiserver)
                    rc = await leader.wait_exit(timeout=s.renew_deadline + 10)
                    exited_after = time.monotonic() - stop_mono
                assert rc != 0, leader.tail()
                lost = leader.events("lease_lost")
                assert lost, leader.tail()
                assert lost[0]["reason"] == "renew_deadline_exceeded"
                lost_after = log_time(lost[0]) - stop_wall
                assert leader.events("leader_election_lost")
                # No write after the fence: nothing reconciled with an action once the lease was lost.
                late = [r for r in leader.records() if r.get("event") == "reconciled" and r.get("actions")
                        and log_time(r) >= log_time(lost[0])]
                assert late == []
                standbys_alive = [p.name for p in procs if p is not leader and p.alive]
            finally:
                restart = time.monotonic()
                cp.start("kube-apiserver")
                await anyio.to_thread.run_sync(cp.wait_ready)
            back = time.monotonic()
            print(f"\n[e2e e] kube-apiserver restarted and ready in {back - restart:.1f}s")

            # A Deployment would restart whatever exited; keep three processes running.
            replacements = [group.start() for _ in range(3 - len(group.alive))]
            new_md = await api.create_md(namespace, module_deployment("md-new", "mnew", port=9100))
            wanted["mnew"] = Wanted.of(new_md, 9100)
            await api.patch_md(namespace, "md-0", {"spec": {"operationStrategy": {"serviceStrategy": {"port": 9000}}}})
            wanted["m0"] = Wanted(9000, "md-0", wanted["m0"].md_uid)
            await api.delete_md(namespace, "md-1")
            del wanted["m1"]
            await wait_services_exact(api, namespace, wanted, timeout=90)
            converged_after = time.monotonic() - back
            new = await group.leader(api, exclude=[leader], timeout=30)
            for proc in replacements:
                await group.wait_ready(proc)
            statuses = [await group.master_status(p) for p in group.alive]
            assert sorted(statuses, key=lambda v: v or 0) == [0.0, 0.0, 1.0]
            print(f"\n[e2e e] apiserver stopped: lease_lost {lost_after:.2f}s and exit (rc {rc}) "
                  f"{exited_after:.2f}s after the stop began (renew deadline {s.renew_deadline:g}s; "
                  f"apiserver gone after {gone_after[0]:.2f}s); standbys alive: {standbys_alive}; "
                  f"exact state {converged_after:.1f}s after the apiserver was back, "
                  f"new leader {new.name}")
            # Its last renew was at most one retry period before the stop, so the fence falls within the
            # renew deadline of the stop; the slack is for a starved event loop on a loaded machine, and
            # the exit adds the task group's teardown and interpreter shutdown (~0.5 s idle, ~2 s loaded).
            assert lost_after <= s.renew_deadline + 1.5
            assert exited_after <= s.renew_deadline + 4.0
