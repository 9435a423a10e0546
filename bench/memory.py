"""4. Memory: RSS of the controller with M ModuleDeployments, P labelled Pods and the M Services cached.

Empty start: fresh processes on the empty cluster, RSS once their caches synced. Loaded: the process
that converged everything (it created the M Services), then fresh processes started on the full cluster,
each measured once its caches synced and its start-up reconciles finished. Bytes per cached object =
(median loaded RSS - median empty RSS) / objects in the controller's informer stores.
"""

from __future__ import annotations

import time

import anyio

from tests.harness import module_deployment

from .common import (
    BenchResult,
    Controller,
    Sizes,
    cluster,
    cpu_delta,
    create_mds,
    create_namespace,
    create_pods_in,
    kube_client,
    median,
    metric,
    pod,
    say,
    server_version,
    wait_quiet,
)

NS = "bench"
SETTLE = 2.0


async def _rss_after_settle(ctl: Controller) -> float:
    await anyio.sleep(SETTLE)
    return ctl.rss() / 2**20


async def run(sizes: Sizes) -> BenchResult:
    m, p, k = sizes.memory_mds, sizes.memory_pods, sizes.memory_modules_per_pod
    res = BenchResult("memory", f"4. Memory: {m} ModuleDeployments, {p} labelled Pods, {m} Services cached")
    empty = res.figure("RSS at empty start", "MiB", digits=1)
    loaded = res.figure("RSS with everything cached", "MiB", target="≤ 300 MiB", bound=("le", 300.0), digits=1)
    per_obj = res.figure("bytes per cached object", "B", digits=0)
    async with cluster("memory") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        namespaces = [f"{NS}-{k}" for k in range(sizes.memory_namespaces)]
        for ns in namespaces:
            await create_namespace(client, ns)
        for i in range(sizes.memory_runs - 1):
            ctl = cl.spawn(f"memory-empty-{i}")
            await ctl.wait_ready()
            empty.values.append(await _rss_after_settle(ctl))
            await ctl.stop()
        builder = cl.spawn("memory-builder")
        await builder.wait_ready()
        empty.values.append(await _rss_after_settle(builder))
        say(f"memory: empty RSS {[round(v, 1) for v in empty.values]} MiB; creating {p} Pods, then {m} "
            f"ModuleDeployments in {len(namespaces)} namespaces")
        m_ns, p_ns = m // len(namespaces), p // len(namespaces)
        started = time.perf_counter()
        await create_pods_in(client, [(ns, pod(f"base-{j}", [f"m{(j + x) % m_ns}" for x in range(k)]))
                                      for ns in namespaces for j in range(p_ns)], sizes.load_concurrency)
        say(f"memory: {p} Pods created in {time.perf_counter() - started:.0f}s")
        started = time.perf_counter()
        cpu_before = cl.cpu(builder)
        for ns in namespaces:
            await create_mds(client, ns, [module_deployment(f"md-m{i}", f"m{i}") for i in range(m_ns)],
                             sizes.load_concurrency)
        say(f"memory: {m} ModuleDeployments created in {time.perf_counter() - started:.0f}s")
        samples = await wait_quiet(builder, services=m, quiet_for=3.0, timeout=1800)
        converged = time.perf_counter() - started
        res.facts["convergence"] = (f"{converged:.0f} s from the first ModuleDeployment create to quiet; CPU used "
                                    f"meanwhile: {cpu_delta(cpu_before, cl.cpu(builder))}")
        say(f"memory: converged {converged:.0f}s after the first ModuleDeployment")
        objects = metric(samples, "informer_objects")
        cached = {r: metric(samples, "informer_objects", resource=r) for r in ("moduledeployments", "pods", "services")}
        res.facts["objects cached"] = (
            f"{objects:.0f} ({cached['moduledeployments']:.0f} ModuleDeployments, {cached['pods']:.0f} Pods, "
            f"{cached['services']:.0f} Services)")
        loaded.values.append(await _rss_after_settle(builder))
        await builder.stop()
        for i in range(sizes.memory_runs - 1):
            ctl = cl.spawn(f"memory-fresh-{i}")
            await ctl.wait_ready(timeout=300)
            await wait_quiet(ctl, services=m, quiet_for=2.0)
            loaded.values.append(await _rss_after_settle(ctl))
            await ctl.stop()
        say(f"memory: loaded RSS {[round(v, 1) for v in loaded.values]} MiB")
    # One figure from the medians; min/max pair the extremes.
    for lo, hi in ((median(loaded.values), median(empty.values)), (min(loaded.values), max(empty.values)),
                   (max(loaded.values), min(empty.values))):
        per_obj.values.append((lo - hi) * 2**20 / objects)
    res.notes.append(
        f"Spread over {sizes.memory_namespaces} namespaces ({m // sizes.memory_namespaces} ModuleDeployments and "
        f"{p // sizes.memory_namespaces} Pods each). Pods carry {k} module labels each (Pod j: modules j, j+1, j+2 "
        f"mod {m // sizes.memory_namespaces} of its namespace), so each module selects {k * p // m} Pods; the Pods "
        "are created first, then the ModuleDeployments. Loaded RSS: run 1 is the "
        f"process that converged everything, runs 2..{sizes.memory_runs} are fresh processes started on the full "
        f"cluster. RSS read {SETTLE:.0f} s after the state was reached. Bytes per object: median, with the "
        "min and max derived from the extreme RSS pairs."
    )
    return res
