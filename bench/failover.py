"""6. Failover: three replicas with --leader-elect; signal the leader (SIGTERM: drains and releases the
Lease; SIGKILL: the Lease must expire), create a ModuleDeployment right after the signal, and time from
the signal to its Service on the benchmark's watch. The signalled replica is replaced by a fresh one
(and waited for until its caches synced) before the next run, so there are always two standbys.
"""

from __future__ import annotations

import signal
import time
import urllib.error

import anyio

from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.resources import SERVICES
from tests.harness import module_deployment

from .common import (
    BenchError,
    BenchResult,
    Cluster,
    Controller,
    Sizes,
    Watch,
    cluster,
    create,
    create_mds,
    create_namespace,
    kube_client,
    metric,
    say,
    server_version,
    wait_quiet,
)

NS = "bench"
LEASE = "module-service-controller"


async def find_leader(replicas: list[Controller], timeout: float) -> Controller:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        for ctl in replicas:
            if not ctl.alive():
                continue
            try:
                samples = await ctl.scrape()
            except (BenchError, urllib.error.URLError, OSError):
                continue
            if metric(samples, "leader_election_master_status", name=LEASE) == 1:
                return ctl
        await anyio.sleep(0.1)
    raise BenchError(f"no leader among {[c.name for c in replicas]} within {timeout:.0f}s")


def _args(lease: float, renew: float, retry: float) -> list[str]:
    return ["--leader-elect", "--leader-elect-namespace", "default",
            "--leader-elect-lease-duration", f"{lease:g}s", "--leader-elect-renew-deadline", f"{renew:g}s",
            "--leader-elect-retry-period", f"{retry:g}s"]


async def _setting(cl: Cluster, res: BenchResult, sizes: Sizes, lease: float, renew: float, retry: float,
                   watch: Watch) -> None:
    tag = f"{lease:g}/{renew:g}/{retry:g}"
    label = "default" if (lease, renew, retry) == (15.0, 10.0, 2.0) else "short"
    figs = {sig: res.figure(f"{signame} of the leader → new Service ({label} lease {tag} s)", "s", digits=2)
            for sig, signame in ((signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL"))}
    counter = 0

    def spawn() -> Controller:
        nonlocal counter
        counter += 1
        return cl.spawn(f"failover-{label}-{counter}", args=_args(lease, renew, retry), log_level="info")

    replicas = [spawn() for _ in range(3)]
    for ctl in replicas:
        await ctl.wait_ready()
    leader = await find_leader(replicas, timeout=3 * lease + 30)
    await wait_quiet(leader, services=sizes.failover_mds, lease_renewals=True)
    exit_codes: dict[str, list[int | None]] = {"SIGTERM": [], "SIGKILL": []}
    for sig, fig in figs.items():
        signame = signal.Signals(sig).name
        for run_no in range(sizes.failover_runs):
            leader = await find_leader(replicas, timeout=3 * lease + 30)
            module = f"fo-{label}-{signame.lower()}-{run_no}"
            signalled = time.perf_counter()
            leader.send(sig)
            await create(watch.client, MODULE_DEPLOYMENTS.path(NS), module_deployment(f"md-{module}", module))
            seen = await watch.wait(f"{module}-service", timeout=3 * lease + 60)
            fig.values.append(seen - signalled)
            exit_codes[signame].append(await leader.stop(None, timeout=renew + 30))
            replicas.remove(leader)
            fresh = spawn()
            replicas.append(fresh)
            await fresh.wait_ready()
            say(f"failover {label} {signame} run {run_no + 1}/{sizes.failover_runs}: "
                f"{fig.values[-1]:.2f}s (old leader exit code {exit_codes[signame][-1]})")
    for ctl in replicas:
        await ctl.stop()
    res.notes.append(f"{label} lease {tag} s: exit codes of the signalled leaders: "
                     f"SIGTERM {exit_codes['SIGTERM']}, SIGKILL {exit_codes['SIGKILL']} (-9 = killed).")


async def run(sizes: Sizes) -> BenchResult:
    res = BenchResult("failover", "6. Failover: 3 replicas with --leader-elect")
    async with cluster("failover") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        await create_namespace(client, NS)
        await create_mds(client, NS, [module_deployment(f"md-f{i}", f"f{i}") for i in range(sizes.failover_mds)],
                         sizes.load_concurrency)
        watch = Watch(client, SERVICES.path(NS))
        async with anyio.create_task_group() as tg:
            await tg.start(watch.run)
            for lease, renew, retry in sizes.failover_settings:
                await _setting(cl, res, sizes, lease, renew, retry, watch)
            tg.cancel_scope.cancel()
    res.notes.append(
        f"{sizes.failover_runs} runs per signal and lease setting, {sizes.failover_mds} ModuleDeployments present. "
        "Time from sending the signal to the new ModuleDeployment's Service on the benchmark's watch (the "
        "create is sent right after the signal). A SIGTERMed leader releases the Lease, so a standby takes "
        "over on its next retry (retry period, jittered up to 2.2x); after SIGKILL a standby must wait for "
        "the lease duration to pass since it last saw the record change."
    )
    return res
