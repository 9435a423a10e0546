"""1. Latency: sequential ModuleDeployment creates -> the Service visible on our own watch.

Controller latency: from the MD create call returning to the ADDED event of ``<module>-service`` on the
benchmark's watch of Services. Floor, interleaved with it in the same run: a raw client POSTs the same
Service into a namespace the controller does not serve, timed from issuing the POST to the ADDED event
on its own watch: one write round trip plus watch delivery, the least any controller needs after it
learns of a change. Overhead = controller percentile - floor percentile, per run.
"""

from __future__ import annotations

import time

import anyio

from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.client import KubeClient
from controller.runtime.kube.resources import SERVICES
from tests.harness import module_deployment

from .common import (
    BenchResult,
    Sizes,
    Watch,
    cluster,
    create,
    create_namespace,
    kube_client,
    percentile,
    raw_service,
    say,
    server_version,
)

NS = "bench"
RAW_NS = "bench-raw"
TIMEOUT = 30.0


async def controller_once(client: KubeClient, watch: Watch, module: str) -> float:
    """Milliseconds from the MD create returning to its Service on the watch."""
    await create(client, MODULE_DEPLOYMENTS.path(NS), module_deployment(f"md-{module}", module))
    returned = time.perf_counter()
    return (await watch.wait(f"{module}-service", TIMEOUT) - returned) * 1000


async def floor_once(client: KubeClient, watch: Watch, module: str) -> float:
    """Milliseconds from issuing the Service POST to the Service on the raw client's own watch."""
    issued = time.perf_counter()
    await create(client, SERVICES.path(RAW_NS), raw_service(module))
    return (await watch.wait(f"{module}-service", TIMEOUT) - issued) * 1000


def _target(who: str, q: int) -> tuple[str, tuple[str, float] | None]:
    if who != "over" or q == 90:
        return "", None
    bound = 5.0 if q == 50 else 25.0
    return f"≤ {bound:.0f} ms", ("le", bound)


async def run(sizes: Sizes) -> BenchResult:
    res = BenchResult("latency", f"1. Latency: {sizes.latency_mds} sequential creates")
    labels = (("ctl", "controller latency"), ("floor", "floor latency (raw POST → own watch)"),
              ("over", "overhead (controller - floor)"))
    figs = {(who, q): res.figure(f"{label} p{q}", "ms", digits=2, target=_target(who, q)[0], bound=_target(who, q)[1])
            for who, label in labels for q in (50, 90, 99)}
    async with cluster("latency") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        await create_namespace(client, NS)
        await create_namespace(client, RAW_NS)
        ctl = cl.spawn("latency", args=["--namespace", NS])
        await ctl.wait_ready()
        for run_no in range(sizes.latency_runs):
            ctl_ms: list[float] = []
            floor_ms: list[float] = []
            watch_ctl = Watch(client, SERVICES.path(NS))
            watch_raw = Watch(client, SERVICES.path(RAW_NS))
            async with anyio.create_task_group() as tg:
                await tg.start(watch_ctl.run)
                await tg.start(watch_raw.run)
                for i in range(sizes.latency_warmup + sizes.latency_mds):
                    module = f"r{run_no}-m{i}"
                    # Alternate the order so neither side always runs right after the other's writes.
                    if i % 2 == 0:
                        c = await controller_once(client, watch_ctl, module)
                        f = await floor_once(client, watch_raw, module)
                    else:
                        f = await floor_once(client, watch_raw, module)
                        c = await controller_once(client, watch_ctl, module)
                    if i >= sizes.latency_warmup:
                        ctl_ms.append(c)
                        floor_ms.append(f)
                tg.cancel_scope.cancel()
            for q in (50, 90, 99):
                c, f = percentile(ctl_ms, q), percentile(floor_ms, q)
                figs["ctl", q].values.append(c)
                figs["floor", q].values.append(f)
                figs["over", q].values.append(c - f)
            say(f"latency run {run_no + 1}/{sizes.latency_runs}: controller p50 {percentile(ctl_ms, 50):.2f} ms "
                f"p99 {percentile(ctl_ms, 99):.2f} ms; floor p50 {percentile(floor_ms, 50):.2f} ms "
                f"p99 {percentile(floor_ms, 99):.2f} ms")
        res.facts["controller RSS after"] = f"{ctl.rss() / 2**20:.0f} MiB"
    res.notes.append(
        f"{sizes.latency_runs} runs x {sizes.latency_mds} creates (+{sizes.latency_warmup} warm-up creates per run, "
        "not counted); controller and floor interleaved one create at a time. Percentiles are per run; the "
        "table shows the median run with the min and max run. The controller serves only the benchmark's "
        "namespace (`--namespace bench`) so the floor's writes do not reach it."
    )
    return res
