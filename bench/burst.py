"""2. Burst: N ModuleDeployments created as fast as the API takes them -> all N Services right.

Controller: from the first MD create to the moment the last of the N Services is right (labels,
selector, port, type, the owner reference) on the benchmark's watch. Ceiling, in the same run: a raw
client writes the same N Services at the same concurrency into a namespace the controller does not
serve, from the first POST to the last ADDED on its own watch. A second ceiling, the pipeline, does what
the controller phase does minus the controller: at the same concurrency, each raw worker creates a
ModuleDeployment and then its Service (with the owner reference), so the API server absorbs the same 2N
writes. Every phase gets a fresh control plane; the order of the phases rotates between runs.
"""

from __future__ import annotations

import time

import anyio

from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.client import KubeClient
from controller.runtime.kube.resources import SERVICES
from tests.harness import module_deployment

from .common import (
    BenchError,
    BenchResult,
    Controller,
    Sizes,
    Watch,
    api_writes,
    bounded,
    burst_watch,
    cluster,
    create,
    create_mds,
    create_namespace,
    kube_client,
    raw_service,
    say,
    server_version,
    service_ok,
    wait_quiet,
)
from .report import load_average

NS = "bench"
RAW_NS = "bench-raw"


def _timeout(n: int) -> float:
    return 120.0 + n * 0.1


async def controller_phase(client: KubeClient, ctl: Controller, prefix: str, n: int,
                           concurrency: int) -> tuple[float, float, float]:
    """Returns (seconds to all Services right, seconds until the controller was quiet, writes per MD)."""
    modules, expected, watch = burst_watch(client, NS, prefix, n)
    writes_before = api_writes(await ctl.scrape())
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        started = time.perf_counter()
        created = await create_mds(client, NS, [module_deployment(f"md-{m}", m) for m in modules], concurrency)
        done = await watch.wait_all(expected, _timeout(n))
        tg.cancel_scope.cancel()
    quiet = await wait_quiet(ctl, quiet_for=1.0)
    # The controller says when it is done (controller_quiescent); a baseline tree without that gauge went
    # quiet when its last write was seen, quiet_for before this.
    quiet_at = time.perf_counter() - (0.0 if any(n == "controller_quiescent" for n, _, _ in quiet) else 1.0)
    # The owner references were checked by name on the watch; check the uids now that all creates returned.
    wrong = [name for name, (module, md) in expected.items()
             if not service_ok(watch.latest[name], module, md)
             or watch.latest[name]["metadata"]["ownerReferences"][0]["uid"] != created[md]["metadata"]["uid"]]
    if wrong:
        raise BenchError(f"{len(wrong)} Services not right after the burst, e.g. {watch.latest[wrong[0]]}")
    return done - started, quiet_at - started, (api_writes(quiet) - writes_before) / n


async def ceiling_phase(client: KubeClient, prefix: str, n: int, concurrency: int) -> float:
    names = [f"{prefix}-m{i}" for i in range(n)]
    watch = Watch(client, SERVICES.path(RAW_NS))

    async def one(module: str) -> None:
        await create(client, SERVICES.path(RAW_NS), raw_service(module))

    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        started = time.perf_counter()
        await bounded(concurrency, names, one)
        done = await watch.wait_all({f"{m}-service" for m in names}, _timeout(n))
        tg.cancel_scope.cancel()
    return done - started


async def pipeline_phase(client: KubeClient, prefix: str, n: int, concurrency: int) -> float:
    modules, expected, watch = burst_watch(client, RAW_NS, prefix, n)

    async def one(module: str) -> None:
        md = await create(client, MODULE_DEPLOYMENTS.path(RAW_NS), module_deployment(f"md-{module}", module))
        svc = raw_service(module)
        svc["metadata"]["ownerReferences"] = [{
            "apiVersion": md["apiVersion"], "kind": md["kind"], "name": md["metadata"]["name"],
            "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        await create(client, SERVICES.path(RAW_NS), svc)

    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        started = time.perf_counter()
        await bounded(concurrency, modules, one)
        done = await watch.wait_all(expected, _timeout(n))
        tg.cancel_scope.cancel()
    return done - started


async def run(sizes: Sizes) -> BenchResult:
    n, conc = sizes.burst_mds, sizes.burst_concurrency
    res = BenchResult("burst", f"2. Burst: {n} ModuleDeployments at concurrency {conc}")
    ctl_rate = res.figure("controller: Services/s (first create → all right)", "1/s")
    ceil_rate = res.figure("ceiling: raw Service writes/s (same concurrency)", "1/s")
    pipe_rate = res.figure("pipeline ceiling: raw MD create + Service create per object, /s", "1/s")
    ratio = res.figure("controller / ceiling", "%", target="≥ 80 %", bound=("ge", 80.0))
    pipe_ratio = res.figure("controller / pipeline ceiling", "%")
    ctl_secs = res.figure(f"controller: time to all {n} Services right", "s", digits=2)
    ceil_secs = res.figure(f"ceiling: time to all {n} Services", "s", digits=2)
    pipe_secs = res.figure(f"pipeline ceiling: time to all {n} Services", "s", digits=2)
    quiet_secs = res.figure("controller: time until quiet (statuses + events written)", "s", digits=2)
    writes = res.figure("controller API writes per ModuleDeployment", "", digits=2)
    cpu_figs = {
        ("controller", "controller"): res.figure("CPU s, controller phase (until quiet): controller", "s"),
        ("controller", "kube-apiserver"): res.figure("CPU s, controller phase (until quiet): kube-apiserver", "s"),
        ("ceiling", "kube-apiserver"): res.figure("CPU s, ceiling phase: kube-apiserver", "s"),
        ("pipeline", "kube-apiserver"): res.figure("CPU s, pipeline phase: kube-apiserver", "s"),
    }
    warm = max(20, n // 10)
    loads: list[str] = []
    for run_no in range(sizes.burst_runs):
        order = ["controller", "ceiling", "pipeline"]
        for phase in order[run_no % 3:] + order[:run_no % 3]:
            # Every phase on a fresh control plane: kube-apiserver's CPU per Service create grows with the
            # Services that exist (about 7 ms at 0, 36 ms at 8,000 here), so a phase that ran after another
            # would pay for the other's objects.
            async with cluster(f"burst-{run_no + 1}-{phase}") as cl, kube_client(cl.kubeconfig) as client:
                res.facts["kube-apiserver"] = await server_version(client)
                await create_namespace(client, NS)
                await create_namespace(client, RAW_NS)
                ctl = cl.spawn("burst", args=["--namespace", NS])  # idle in the raw phases, as in life
                await ctl.wait_ready()
                # Warm-up, not counted: connections, the API server's caches, first allocations.
                if phase == "controller":
                    await controller_phase(client, ctl, "w", warm, conc)
                elif phase == "ceiling":
                    await ceiling_phase(client, "w", warm, conc)
                else:
                    await pipeline_phase(client, "w", warm, conc)
                await wait_quiet(ctl, quiet_for=1.0)
                cpu_before = cl.cpu(ctl)
                if phase == "controller":
                    secs, quiet, per_md = await controller_phase(client, ctl, "b", n, conc)
                    ctl_secs.values.append(secs)
                    quiet_secs.values.append(quiet)
                    writes.values.append(per_md)
                    res.facts[f"controller RSS after run {run_no + 1}"] = f"{ctl.rss() / 2**20:.0f} MiB"
                elif phase == "ceiling":
                    ceil_secs.values.append(await ceiling_phase(client, "b", n, conc))
                else:
                    pipe_secs.values.append(await pipeline_phase(client, "b", n, conc))
                cpu_after = cl.cpu(ctl)
                for (fig_phase, proc), fig in cpu_figs.items():
                    if fig_phase == phase:
                        fig.values.append(cpu_after[proc] - cpu_before[proc])
        ctl_rate.values.append(n / ctl_secs.values[-1])
        ceil_rate.values.append(n / ceil_secs.values[-1])
        pipe_rate.values.append(n / pipe_secs.values[-1])
        ratio.values.append(100 * ctl_rate.values[-1] / ceil_rate.values[-1])
        pipe_ratio.values.append(100 * ctl_rate.values[-1] / pipe_rate.values[-1])
        loads.append(f"{load_average()[0]:.2f}")
        say(f"burst run {run_no + 1}/{sizes.burst_runs}: controller {ctl_rate.values[-1]:.0f}/s, "
            f"ceiling {ceil_rate.values[-1]:.0f}/s ({ratio.values[-1]:.0f} %), pipeline "
            f"{pipe_rate.values[-1]:.0f}/s ({pipe_ratio.values[-1]:.0f} %), {writes.values[-1]:.2f} writes per MD, "
            f"load {loads[-1]}")
    res.facts["1-minute load average at the end of each run"] = ", ".join(loads)
    res.notes.append(
        f"{sizes.burst_runs} runs of three phases (controller, ceiling, pipeline; the order rotates between runs). "
        f"Every phase runs on a fresh control plane with a fresh controller (idle in the raw phases), after a "
        f"warm-up of {warm} objects of its own kind (not counted), and makes {n} Services with {conc} requests "
        f"in flight. The controller phase also carries the benchmark's {n} ModuleDeployment creates, and the "
        "controller writes each ModuleDeployment's status and an Event as well (see writes per "
        "ModuleDeployment; status and Events go in a lower-priority lane behind the Services), all on the same "
        "2-core machine as the API server."
    )
    return res
