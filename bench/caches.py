"""9. Caches and relists: what objects the controller does not serve cost it, and what three
replicas starting (or relisting) at once cost the API server.

On one cluster: M ModuleDeployments (spread over namespaces), P module Pods, and the M Services the
controller makes. Then, per phase ("module objects only", then "plus unrelated": U Pods without a module
label and S Services not named ``*-service``):
- RSS and time to /readyz of one fresh controller, once its start-up pass is quiet;
- a "relist storm": three fresh replicas started at the same moment (what a rollout, or a 410 that hits
  every replica, does), and the CPU kube-apiserver and etcd used until all three were ready.
Each phase runs the controller of this tree, with and without ``--streaming-lists``, and, when
``MSC_BENCH_BASELINE`` names a directory holding another tree's ``controller`` package (e.g.
``git archive <commit> controller | tar -x -C DIR``), that one too, for a before/after on the same cluster.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from tests.harness import module_deployment

from .common import (
    BenchResult,
    Cluster,
    Controller,
    Sizes,
    bounded,
    cluster,
    create,
    create_mds,
    create_namespace,
    create_pods_in,
    kube_client,
    metric,
    pod,
    say,
    server_version,
    wait_quiet,
)

NS = "bench"
SETTLE = 2.0
REPLICAS = 3


def _variants() -> list[tuple[str, list[str], list[str]]]:
    """(name, wrapper, extra flags) of each controller compared."""
    out: list[tuple[str, list[str], list[str]]] = [("this tree", [], []),
                                                   ("this tree --streaming-lists", [], ["--streaming-lists"])]
    baseline = os.environ.get("MSC_BENCH_BASELINE")
    if baseline and (Path(baseline) / "controller").is_dir():
        out.append((f"baseline {Path(baseline).name}", ["env", f"PYTHONPATH={baseline}"], []))
    return out


def _control_plane_cpu(cl: Cluster) -> float:
    cpu = cl.cpu()
    return cpu.get("kube-apiserver", 0.0) + cpu.get("etcd", 0.0)


async def _one(cl: Cluster, name: str, wrapper: list[str], args: list[str],
               services: int) -> tuple[float, float, dict[str, float]]:
    """(RSS MiB, seconds to ready, objects cached by resource) of a fresh controller."""
    ctl = cl.spawn(name, wrapper=wrapper, args=args)
    ready = await ctl.wait_ready(timeout=900)
    samples = await wait_quiet(ctl, services=services, quiet_for=2.0, timeout=900)
    await anyio.sleep(SETTLE)
    rss = ctl.rss() / 2**20
    cached = {r: metric(samples, "informer_objects", resource=r) for r in ("moduledeployments", "pods", "services")}
    await ctl.stop()
    return rss, ready - ctl.spawned, cached


async def _storm(cl: Cluster, name: str, wrapper: list[str], args: list[str]) -> tuple[float, float]:
    """(API server + etcd CPU seconds, seconds until the last replica was ready) for REPLICAS fresh
    replicas started together."""
    before = _control_plane_cpu(cl)
    started = time.perf_counter()
    ctls: list[Controller] = [cl.spawn(f"{name}-{i}", wrapper=wrapper,
                                       args=["--leader-elect", "--leader-elect-namespace", NS, *args])
                              for i in range(REPLICAS)]
    for ctl in ctls:
        await ctl.wait_ready(timeout=900)
    took = time.perf_counter() - started
    used = _control_plane_cpu(cl) - before
    for ctl in ctls:
        await ctl.stop()
    return used, took


async def run(sizes: Sizes) -> BenchResult:
    m, p = sizes.caches_mds, sizes.caches_module_pods
    u, s = sizes.caches_unrelated_pods, sizes.caches_unrelated_services
    res = BenchResult("caches", f"9. Caches: {m} ModuleDeployments, {p} module Pods; then {u} unrelated Pods "
                                f"and {s} unrelated Services")
    async with cluster("caches") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        namespaces = [f"{NS}-{k}" for k in range(sizes.caches_namespaces)]
        for ns in [NS, *namespaces]:
            await create_namespace(client, ns)
        m_ns, p_ns = m // len(namespaces), p // len(namespaces)
        started = time.perf_counter()
        await create_pods_in(client, [(ns, pod(f"mod-{j}", [f"m{j % m_ns}"])) for ns in namespaces
                                      for j in range(p_ns)], sizes.load_concurrency)
        for ns in namespaces:
            await create_mds(client, ns, [module_deployment(f"md-m{i}", f"m{i}") for i in range(m_ns)],
                             sizes.load_concurrency)
        builder = cl.spawn("caches-builder")
        await builder.wait_ready(timeout=900)
        await wait_quiet(builder, services=m, quiet_for=3.0, timeout=1800)
        await builder.stop()
        say(f"caches: {m} ModuleDeployments, {p} Pods and their Services in {time.perf_counter() - started:.0f}s")
        for phase in ("module objects only", "plus unrelated objects"):
            if phase != "module objects only":
                started = time.perf_counter()
                u_ns, s_ns = u // len(namespaces), s // len(namespaces)
                await create_pods_in(client, [(ns, pod(f"other-{j}", [])) for ns in namespaces for j in range(u_ns)],
                                     sizes.load_concurrency)

                async def service(item: tuple[str, int]) -> None:
                    await create(client, f"/api/v1/namespaces/{item[0]}/services", {
                        "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"other-{item[1]}"},
                        "spec": {"clusterIP": "None", "selector": {"app": "other"}, "ports": [{"port": 80}]}})

                await bounded(sizes.load_concurrency, [(ns, j) for ns in namespaces for j in range(s_ns)], service)
                say(f"caches: {u} unrelated Pods and {s} unrelated Services in {time.perf_counter() - started:.0f}s")
            for variant, wrapper, args in _variants():
                rss, ready, cached = await _one(cl, f"caches-one-{len(cl.controllers)}", wrapper, args, m)
                cpu, took = await _storm(cl, f"caches-storm-{len(cl.controllers)}", wrapper, args)
                key = f"{phase}, {variant}"
                res.figure(f"RSS, {key}", "MiB", digits=1).values.append(rss)
                res.figure(f"ready after, {key}", "s", digits=1).values.append(ready)
                res.figure(f"API server + etcd CPU, {REPLICAS} replicas starting, {key}", "s",
                           digits=1).values.append(cpu)
                res.figure(f"all {REPLICAS} ready after, {key}", "s", digits=1).values.append(took)
                res.facts[f"cached, {key}"] = ", ".join(f"{k} {v:.0f}" for k, v in cached.items())
                say(f"caches: {key}: RSS {rss:.1f} MiB, ready {ready:.1f}s, cached {cached}; storm: "
                    f"control plane CPU {cpu:.1f}s, all ready {took:.1f}s")
    res.notes.append(
        f"{len(namespaces)} namespaces. Module Pods carry one module label each; unrelated Pods none; unrelated "
        f"Services are headless and named other-N. RSS of one fresh process {SETTLE:.0f} s after its start-up pass "
        f"went quiet. The storm: {REPLICAS} fresh replicas with --leader-elect started at once; CPU is utime+stime "
        "of kube-apiserver and etcd from the spawn until the last /readyz 200. Load average is in the run header."
    )
    return res
