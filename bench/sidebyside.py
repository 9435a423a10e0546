"""7-8. Side by side with the peers (bench/peers/): controller-runtime and kopf doing the same job.

7. Burst, then idle: per round and per contender (the order rotates between rounds) a fresh control plane,
   the contender alone on it, a warm-up, then N ModuleDeployments created at concurrency C; the time from
   the first create until the last of the N Services is right on the benchmark's own watch, the
   contender's CPU and its API writes until it is quiet, then its writes and CPU in an idle window.
8. Memory and start-up: one control plane with M ModuleDeployments, P module Pods and the M Services
   (converged by this controller, whose Services are the contract's, so the state is converged for every
   contender). Per round, in rotated order, a fresh process of each contender: the time from its spawn to
   its first reconcile, the writes it makes at start-up, and its RSS once it is quiet.

API writes are counted by the API server (apiserver_request_total for Services, Events, and updates of
ModuleDeployments), the same measure for every contender. Ratios are per round, to the reference
controller-runtime contender of the same round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.resources import SERVICES
from tests.harness import module_deployment

from .common import (
    _LIVE_CONTROLLERS,
    QUIET_FAMILIES,
    BenchError,
    BenchResult,
    Cluster,
    Figure,
    Sizes,
    bounded,
    burst_watch,
    cluster,
    cpu_delta,
    create,
    create_mds,
    create_namespace,
    create_pods_in,
    kube_client,
    metric,
    pod,
    raw_service,
    say,
    server_version,
    wait_quiet,
)
from .contenders import (
    CR_PODS,
    CR_TUNED,
    FLOOR,
    KOPF,
    MSC,
    Contender,
    Process,
    apiserver_writes,
    build_peers,
    burst_contenders,
    floor_selected,
    memory_contenders,
)
from .report import load_average
from .restart import LateModuleDeployment, PodChurn, StatusWatch

NS = "bench"
SETTLE = 2.0


def rotated(items: Sequence[Contender], round_no: int) -> list[Contender]:
    k = round_no % len(items)
    return [*items[k:], *items[:k]]


def spawn(cl: Cluster, contender: Contender, peers: dict[str, Path], name: str, *,
          log_level: str = "warning") -> Process:
    proc = Process(contender, peers, cl.kubeconfig, cl.workdir, name, log_level=log_level)
    cl.controllers.append(proc)
    _LIVE_CONTROLLERS.append(proc)
    return proc


async def wait_settled(proc: Process, cl: Cluster, *, quiet_for: float, timeout: float) -> float:
    """Waits until no contender write has reached the API server for ``quiet_for`` seconds and, where the
    contender has metrics, its work queue is empty and no worker is busy. Returns the write count then."""
    deadline = time.perf_counter() + timeout
    last, changed = -1.0, time.perf_counter()
    while True:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.proc.returncode}: {proc.tail()}")
        writes = await apiserver_writes(cl.cp)
        now = time.perf_counter()
        if writes != last:
            last, changed = writes, now
        busy = False
        if proc.has_metrics:
            samples = await proc.scrape(QUIET_FAMILIES)
            if any(name == "controller_quiescent" for name, _, _ in samples):
                busy = metric(samples, "controller_quiescent") != 1  # this controller says when it is done
            else:
                busy = (metric(samples, "workqueue_depth") > 0
                        or metric(samples, "controller_runtime_active_workers") > 0)
        if not busy and now - changed >= quiet_for:
            return writes
        if now > deadline:
            raise BenchError(f"{proc.name} did not go quiet within {timeout:.0f}s ({writes:.0f} writes so far)")
        await anyio.sleep(0.5)


@dataclass(frozen=True)
class Timing:
    total: float  # from the first create to the last Service right
    creates: float  # from the first create to the return of the last one


async def _burst_once(client: KubeClient, prefix: str, n: int, concurrency: int, timeout: float,
                      ns: str = NS) -> Timing:
    modules, expected, watch = burst_watch(client, ns, prefix, n)
    async with anyio.create_task_group() as tg:
        await tg.start(watch.run)
        started = time.perf_counter()
        created = await create_mds(client, ns, [module_deployment(f"md-{m}", m) for m in modules], concurrency)
        creates = time.perf_counter()
        done = await watch.wait_all(expected, timeout)
        tg.cancel_scope.cancel()
    wrong = [name for name, (_, md) in expected.items()
             if watch.latest[name]["metadata"]["ownerReferences"][0]["uid"] != created[md]["metadata"]["uid"]]
    if wrong:
        raise BenchError(f"{len(wrong)} Services owned by the wrong ModuleDeployment, e.g. {wrong[0]}")
    return Timing(done - started, creates - started)


async def _floor_once(client: KubeClient, prefix: str, n: int, concurrency: int, timeout: float) -> Timing:
    """A controller that costs nothing: each Service is POSTed (with its owner reference) the moment its
    ModuleDeployment's create returns, before any watch could tell of it, while the ModuleDeployment creates
    keep ``concurrency`` in flight. Timed like the contenders."""
    modules, expected, watch = burst_watch(client, NS, prefix, n)
    async with anyio.create_task_group() as tg, anyio.create_task_group() as services:
        await tg.start(watch.run)

        async def service_of(md: JsonObj) -> None:
            module = md["metadata"]["name"].removeprefix("md-")
            svc = raw_service(module)
            svc["metadata"]["ownerReferences"] = [{
                "apiVersion": md["apiVersion"], "kind": md["kind"], "name": md["metadata"]["name"],
                "uid": md["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
            await create(client, SERVICES.path(NS), svc)

        async def one(module: str) -> None:
            md = await create(client, MODULE_DEPLOYMENTS.path(NS), module_deployment(f"md-{module}", module))
            services.start_soon(service_of, md)

        started = time.perf_counter()
        await bounded(concurrency, modules, one)
        creates = time.perf_counter()
        done = await watch.wait_all(expected, timeout)
        tg.cancel_scope.cancel()
    return Timing(done - started, creates - started)


def _ratio_figures(res: BenchResult, what: str, unit_of: dict[str, Figure], ref: Contender,
                   contenders: Sequence[Contender], *, bounds: dict[str, tuple[str, float, str]] | None = None) -> None:
    """Per-round ratios of each contender's figure to the reference contender's, as figures."""
    base = unit_of[ref.key].values
    for c in contenders:
        if c.key == ref.key:
            continue
        vals = unit_of[c.key].values
        target, bound = "", None
        if bounds and c.key in bounds:
            op, limit, target = bounds[c.key]
            bound = (op, limit)
        fig = res.figure(f"{what}: {c.label} / {ref.label}", "x", target=target, bound=bound, digits=2)
        fig.values = [v / b for v, b in zip(vals, base, strict=False) if b and math.isfinite(v) and math.isfinite(b)]


# The targets of the side-by-side figures, for this controller (the key of _ratio_figures' bounds).
BURST_TIME_TARGET = 0.80  # x controller-runtime tuned
BURST_FLOOR_TARGET = 1.05  # x the floor
BURST_CPU_TARGET = 1.5
BURST_RSS_TARGET = 1.2
KOPF_TIME_TARGET = 0.5


def _le(limit: float) -> tuple[str, float, str]:
    return ("le", limit, f"≤ {limit:g}x")


async def run_burst(sizes: Sizes) -> BenchResult:
    n, conc, rounds = sizes.vs_burst_mds, sizes.burst_concurrency, sizes.vs_runs
    res = BenchResult("vs-burst", f"7. Side by side, burst and idle: {n} ModuleDeployments at concurrency {conc}")
    peers = await anyio.to_thread.run_sync(build_peers)
    contenders = burst_contenders()
    timed = (*contenders, FLOOR) if floor_selected() else contenders
    secs = {c.key: res.figure(f"time to all {n} Services right: {c.label}", "s", digits=2) for c in timed}
    creates = {c.key: res.figure(f"time to the last ModuleDeployment create's answer: {c.label}", "s", digits=2)
               for c in timed}
    cpu = {c.key: res.figure(f"CPU s until quiet: {c.label}", "s") for c in contenders}
    writes = {c.key: res.figure(f"API writes per ModuleDeployment: {c.label}", "", digits=2) for c in contenders}
    rss = {c.key: res.figure(f"RSS after the burst: {c.label}", "MiB", digits=0) for c in contenders}
    idle = {c.key: res.figure(f"API writes in {sizes.idle_window:.0f} s idle: {c.label}", "", target="0",
                              bound=("le", 0.0), digits=0) for c in contenders}
    idle_cpu = {c.key: res.figure(f"CPU s in {sizes.idle_window:.0f} s idle: {c.label}", "s", digits=3)
                for c in contenders}
    cpu_used: dict[str, list[str]] = {c.key: [] for c in timed}
    warm = max(10, n // 10)
    timeout = 180.0 + n * 0.5
    loads: list[str] = []
    for round_no in range(rounds):
        for c in rotated(timed, round_no):
            async with cluster(f"vs-burst-{round_no + 1}-{c.key}") as cl, kube_client(cl.kubeconfig) as client:
                res.facts["kube-apiserver"] = await server_version(client)
                await create_namespace(client, NS)
                if c is FLOOR:
                    await _floor_once(client, "w", warm, conc, timeout)
                    cpu_cp = cl.cpu()
                    timing = await _floor_once(client, "b", n, conc, timeout)
                    secs[c.key].values.append(timing.total)
                    creates[c.key].values.append(timing.creates)
                    cpu_used[c.key].append(cpu_delta(cpu_cp, cl.cpu()))
                    say(f"vs-burst round {round_no + 1}/{rounds} {c.key}: {timing.total:.1f}s (creates "
                        f"{timing.creates:.1f}s), CPU {cpu_used[c.key][-1]}, load {load_average()[0]:.2f}")
                    continue
                proc = spawn(cl, c, peers, f"vs-{c.key}-{round_no}")
                await proc.wait_ready(timeout=180)
                await _burst_once(client, "w", warm, conc, timeout)
                await wait_settled(proc, cl, quiet_for=1.0, timeout=timeout)
                writes_before, cpu_before = await apiserver_writes(cl.cp), proc.cpu_seconds()
                cpu_cp = cl.cpu(proc)
                timing = await _burst_once(client, "b", n, conc, timeout)
                cpu_used[c.key].append(cpu_delta(cpu_cp, cl.cpu(proc)))
                secs[c.key].values.append(timing.total)
                creates[c.key].values.append(timing.creates)
                writes_after = await wait_settled(proc, cl, quiet_for=1.0, timeout=timeout)
                cpu[c.key].values.append(proc.cpu_seconds() - cpu_before)
                writes[c.key].values.append((writes_after - writes_before) / n)
                rss[c.key].values.append(proc.rss() / 2**20)
                cpu_before = proc.cpu_seconds()
                await anyio.sleep(sizes.idle_window)
                idle[c.key].values.append(await apiserver_writes(cl.cp) - writes_after)
                idle_cpu[c.key].values.append(proc.cpu_seconds() - cpu_before)
                say(f"vs-burst round {round_no + 1}/{rounds} {c.key}: {timing.total:.1f}s (creates "
                    f"{timing.creates:.1f}s; CPU meanwhile {cpu_used[c.key][-1]}), "
                    f"CPU until quiet {cpu[c.key].values[-1]:.1f}s, {writes[c.key].values[-1]:.2f} writes/MD, "
                    f"RSS {rss[c.key].values[-1]:.0f} MiB, idle writes {idle[c.key].values[-1]:.0f}, "
                    f"load {load_average()[0]:.2f}")
                await proc.stop()
        loads.append(f"{load_average()[0]:.2f}")
    _ratio_figures(res, "time to all Services", secs, CR_TUNED, timed, bounds={MSC.key: _le(BURST_TIME_TARGET)})
    if FLOOR.key in secs:
        _ratio_figures(res, "time to all Services", secs, FLOOR, (MSC,), bounds={MSC.key: _le(BURST_FLOOR_TARGET)})
    if KOPF.key in secs:
        _ratio_figures(res, "time to all Services", secs, KOPF, (MSC,), bounds={MSC.key: _le(KOPF_TIME_TARGET)})
    _ratio_figures(res, "CPU s", cpu, CR_TUNED, contenders, bounds={MSC.key: _le(BURST_CPU_TARGET)})
    _ratio_figures(res, "RSS after the burst", rss, CR_TUNED, contenders, bounds={MSC.key: _le(BURST_RSS_TARGET)})
    res.facts["1-minute load average after each round"] = ", ".join(loads)
    for c in timed:
        res.facts[f"CPU used from the first create to the last Service, per round, with '{c.label}'"] = \
            " | ".join(cpu_used[c.key])
    for c in timed:
        res.facts[f"configuration of '{c.label}'"] = c.config
    res.notes.append(
        f"{rounds} rounds; in each, every contender runs alone on a fresh control plane (the order rotates between "
        f"rounds), serving all namespaces, after a warm-up of {warm} ModuleDeployments (not counted). The floor "
        "is a round without any controller: the benchmark writes each Service itself right after its "
        "ModuleDeployment, the moment its create returns. It bounds what the API server can take on this "
        "machine, not the contenders: one Python process then creates, POSTs and watches, and where that "
        "process is the bottleneck a contender, which is a second process, can beat it. Time: from the "
        f"first of {n} creates ({conc} in flight) until the last Service is right on the benchmark's watch (labels, "
        "selector, port, type, controller owner reference; uids checked afterwards). CPU: from the first create "
        "until quiet (no contender write for 1 s and, where the contender has metrics, an empty work queue), "
        "which includes what each contender writes besides the Service (this controller: status and an Event; "
        "kopf: its progress annotations). Writes are counted by the "
        f"API server. RSS: VmRSS once quiet. Idle: a {sizes.idle_window:.0f} s window right after. Ratios are per "
        "round.")
    return res


async def _build_loaded_cluster(cl: Cluster, client: KubeClient, sizes: Sizes, peers: dict[str, Path]) -> str:
    m, p, k = sizes.vs_memory_mds, sizes.vs_memory_pods, sizes.memory_modules_per_pod
    namespaces = [f"{NS}-{i}" for i in range(sizes.memory_namespaces)]
    for ns in namespaces:
        await create_namespace(client, ns)
    m_ns, p_ns = m // len(namespaces), p // len(namespaces)
    started = time.perf_counter()
    await create_pods_in(client, [(ns, pod(f"base-{j}", [f"m{(j + x) % m_ns}" for x in range(k)]))
                                  for ns in namespaces for j in range(p_ns)], sizes.load_concurrency)
    builder = spawn(cl, MSC, peers, "vs-memory-builder")
    await builder.wait_ready(timeout=300)
    for ns in namespaces:
        await create_mds(client, ns, [module_deployment(f"md-m{i}", f"m{i}") for i in range(m_ns)],
                         sizes.load_concurrency)
    await wait_quiet(builder, services=m_ns * len(namespaces), quiet_for=3.0, timeout=3600)
    await builder.stop()
    return (f"{m_ns * len(namespaces)} ModuleDeployments, {p_ns * len(namespaces)} Pods ({k} module labels each) and "
            f"their Services in {len(namespaces)} namespaces, converged by this controller in "
            f"{time.perf_counter() - started:.0f} s")


async def _remove_kopf_annotations(client: KubeClient, namespaces: Sequence[str], concurrency: int) -> int:
    """kopf keeps its state in annotations on every ModuleDeployment it handled; the next contender must not
    cache them. Returns how many ModuleDeployments were cleaned."""
    targets: list[tuple[str, str, dict[str, None]]] = []
    for ns in namespaces:
        params: dict[str, str | int | bool] = {"limit": 500}
        while True:
            page = await client.request("GET", MODULE_DEPLOYMENTS.path(ns), params=params, timeout=120)
            for md in page.get("items") or []:
                notes = md["metadata"].get("annotations") or {}
                kopf_keys = {key: None for key in notes if key.startswith("kopf.zalando.org/")}
                if kopf_keys:
                    targets.append((ns, md["metadata"]["name"], kopf_keys))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            params["continue"] = token

    async def one(item: tuple[str, str, dict[str, None]]) -> None:
        ns, name, keys = item
        await client.request("PATCH", MODULE_DEPLOYMENTS.path(ns, name), body={"metadata": {"annotations": keys}},
                             content_type="application/merge-patch+json")

    await bounded(concurrency, targets, one)
    return len(targets)


LATE_TARGET = 1.0  # x controller-runtime tuned caching Pods: a ModuleDeployment created while down
STATUS_TARGET = 1.5  # x its own cache sync: every status right again
QUIET_RSS_TARGET = 0.75
EMPTY_RSS_TARGET = 40.0  # MiB


async def run_memory(sizes: Sizes) -> BenchResult:
    m, p, rounds = sizes.vs_memory_mds, sizes.vs_memory_pods, sizes.vs_runs
    res = BenchResult("vs-memory", f"8. Side by side, start-up and memory: {m} ModuleDeployments, {p} module Pods "
                                   f"and {m} Services present")
    peers = await anyio.to_thread.run_sync(build_peers)
    contenders = memory_contenders()
    ours = [c for c in contenders if c.kind == "msc"]
    first = {c.key: res.figure(f"process start → first reconcile: {c.label}", "s", digits=2)
             for c in contenders}
    late = {c.key: res.figure(f"process start → a ModuleDeployment created while it was down has its Service: "
                              f"{c.label}", "s", digits=2) for c in contenders}
    synced = {c.key: res.figure(f"process start → caches synced: {c.label}", "s", digits=2) for c in ours}
    statuses = {c.key: res.figure(f"process start → every status right again: {c.label}", "s", digits=2)
                for c in ours}
    settled = {c.key: res.figure(f"process start → quiet (start-up pass over): {c.label}", "s", digits=2)
               for c in ours}
    start_writes = {c.key: res.figure(f"API writes until quiet after start: {c.label}", "", digits=0)
                    for c in contenders}
    rss = {c.key: res.figure(f"RSS once quiet: {c.label}", "MiB", digits=1) for c in contenders}
    empty = {c.key: res.figure(f"RSS at empty start: {c.label}", "MiB", digits=1) for c in contenders}
    if MSC.key in empty:
        empty[MSC.key].target, empty[MSC.key].bound = f"≤ {EMPTY_RSS_TARGET:g} MiB", ("le", EMPTY_RSS_TARGET)
    namespaces = [f"{NS}-{i}" for i in range(sizes.memory_namespaces)]
    m_ns, p_ns = m // len(namespaces), p // len(namespaces)
    timeout = 300.0 + m * 0.3
    async with cluster("vs-memory") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        # Empty start first, on the empty cluster.
        for c in contenders:
            proc = spawn(cl, c, peers, f"vs-empty-{c.key}")
            await proc.wait_ready(timeout=180)
            await anyio.sleep(SETTLE)
            empty[c.key].values.append(proc.rss() / 2**20)
            await proc.stop()
        res.facts["state"] = await _build_loaded_cluster(cl, client, sizes, peers)
        say(f"vs-memory: {res.facts['state']}")
        churn = PodChurn(client, namespaces, p_ns, m_ns, sizes.memory_modules_per_pod, sizes.vs_restart_pod_every,
                         sizes.load_concurrency)
        for round_no in range(rounds):
            for c in rotated(contenders, round_no):
                if c.kind == "msc":
                    await churn.toggle()  # while it is down: some statuses go stale
                late_md = LateModuleDeployment(client, namespaces[-1], f"{round_no}-{c.key}")
                async with anyio.create_task_group() as tg:
                    await tg.start(late_md.start)
                    watch = StatusWatch(client, churn.expected_pods())
                    if c.kind == "msc":
                        await tg.start(watch.run)
                    writes_before = await apiserver_writes(cl.cp)
                    proc = spawn(cl, c, peers, f"vs-{c.key}-{round_no}", log_level="info")
                    first[c.key].values.append(await proc.wait_first_reconcile(timeout=300))
                    late[c.key].values.append(await late_md.service_at(timeout) - proc.spawned)
                    if c.kind == "msc":
                        statuses[c.key].values.append(await watch.wait(timeout) - proc.spawned)
                        await wait_quiet(proc, timeout=timeout)  # its own word: both lanes done
                        settled[c.key].values.append(time.perf_counter() - proc.spawned)
                    try:
                        writes_after = await wait_settled(proc, cl, quiet_for=3.0, timeout=timeout)
                    except BenchError as exc:
                        res.notes.append(f"Round {round_no + 1}, {c.label}: {exc}; RSS read then.")
                        writes_after = await apiserver_writes(cl.cp)
                    tg.cancel_scope.cancel()
                if c.kind == "msc":
                    synced_wall = proc.log_event_wall("caches_synced")
                    synced[c.key].values.append(math.nan if synced_wall is None else synced_wall - proc.spawned_wall)
                await anyio.sleep(SETTLE)
                rss[c.key].values.append(proc.rss() / 2**20)
                start_writes[c.key].values.append(writes_after - writes_before)
                await proc.stop()
                await late_md.delete()
                extra = (f", every status right {statuses[c.key].values[-1]:.2f}s, caches synced "
                         f"{synced[c.key].values[-1]:.2f}s" if c.kind == "msc" else "")
                say(f"vs-memory round {round_no + 1}/{rounds} {c.key}: first reconcile "
                    f"{first[c.key].values[-1]:.2f}s, late ModuleDeployment's Service {late[c.key].values[-1]:.2f}s"
                    f"{extra}, {start_writes[c.key].values[-1]:.0f} writes, RSS {rss[c.key].values[-1]:.0f} MiB, "
                    f"load {load_average()[0]:.2f}")
                if c.kind == "kopf":
                    cleaned = await _remove_kopf_annotations(client, namespaces, sizes.load_concurrency)
                    say(f"vs-memory: removed kopf's annotations from {cleaned} ModuleDeployments")
    _ratio_figures(res, "created while down → its Service", late, CR_PODS, contenders,
                   bounds={MSC.key: _le(LATE_TARGET)})
    for c in ours:
        fig = res.figure(f"every status right again / caches synced: {c.label}", "x", digits=2)
        if c.key == MSC.key:
            fig.target, fig.bound = f"≤ {STATUS_TARGET:g}x", ("le", STATUS_TARGET)
        fig.values = [a / b for a, b in zip(statuses[c.key].values, synced[c.key].values, strict=False)
                      if b and math.isfinite(a) and math.isfinite(b)]
    _ratio_figures(res, "first reconcile", first, CR_PODS, contenders)
    _ratio_figures(res, "RSS once quiet", rss, CR_PODS, contenders, bounds={MSC.key: _le(QUIET_RSS_TARGET)})
    for c in contenders:
        res.facts[f"configuration of '{c.label}'"] = c.config
    res.facts["stale statuses at each start of this controller"] = (
        f"{churn.stale} (every {sizes.vs_restart_pod_every}th module Pod deleted, or created again, while it was down)")
    res.notes.append(
        f"One control plane; the state is built once. {rounds} rounds; in each, a fresh process of every contender "
        "in turn (the order rotates between rounds), alone on the cluster. Just before each start the benchmark "
        "creates one more ModuleDeployment, in the last namespace and named to come last in a list (the worst case "
        "for a start-up pass in list order), and deletes it (and its Service) after the run. Before each start "
        f"of this controller every {sizes.vs_restart_pod_every}th module Pod is deleted, or created again, so "
        "that many statuses are stale. First reconcile: from just before the benchmark spawns the process to the "
        "timestamp of its first reconcile in its log (this controller: its first `reconciled` line, with "
        "`--log-level info`; the peers print one `first_reconcile` line), so it includes the interpreter or "
        "binary starting and the initial lists. Created while down: from the spawn to that ModuleDeployment's "
        "Service right on the benchmark's watch. Every status right again: from the spawn until every "
        "ModuleDeployment's status.moduleService is right on a cluster-wide watch (Ready, its Service's name, the "
        "Pod count the cluster has); controller-runtime writes no status, so that figure is this controller's "
        "alone, beside its own cache sync (its `caches_synced` line). Writes: what the contender wrote from its "
        "start until quiet (no write for 3 s): the late ModuleDeployment's Service, and for this controller the "
        "stale statuses and an Event each. RSS: "
        f"VmRSS {SETTLE:.0f} s after quiet. kopf's annotations are removed after each kopf run so that no other "
        "contender caches them. Ratios are per round, to controller-runtime caching the same objects.")
    return res


SCALE_TARGET = 1.2  # time per ModuleDeployment in the large burst / in the small one


async def run_scale(sizes: Sizes) -> BenchResult:
    small, large, conc, rounds = sizes.vs_burst_mds, sizes.vs_scale_mds, sizes.burst_concurrency, sizes.vs_runs
    res = BenchResult("vs-scale", f"10. Side by side, scale: a burst of {large} ModuleDeployments beside one of "
                                  f"{small}, at concurrency {conc}")
    peers = await anyio.to_thread.run_sync(build_peers)
    contenders = tuple(c for c in burst_contenders() if c.kind == "msc" or c is CR_TUNED)
    per_md: dict[tuple[str, int], Figure] = {}
    cpu_md: dict[tuple[str, int], Figure] = {}
    creates_md: dict[tuple[str, int], Figure] = {}
    for c in contenders:
        for n in (small, large):
            per_md[(c.key, n)] = res.figure(f"time per ModuleDeployment, burst of {n}: {c.label}", "ms", digits=2)
            creates_md[(c.key, n)] = res.figure(f"creates' time per ModuleDeployment, burst of {n}: {c.label}", "ms",
                                                digits=2)
            cpu_md[(c.key, n)] = res.figure(f"CPU per ModuleDeployment until quiet, burst of {n}: {c.label}", "ms",
                                            digits=2)
    cpu_used: dict[str, list[str]] = {c.key: [] for c in contenders}
    for round_no in range(rounds):
        for c in rotated(contenders, round_no):
            async with cluster(f"vs-scale-{round_no + 1}-{c.key}") as cl, kube_client(cl.kubeconfig) as client:
                res.facts["kube-apiserver"] = await server_version(client)
                proc = spawn(cl, c, peers, f"vs-scale-{c.key}-{round_no}")
                await proc.wait_ready(timeout=180)
                for n, ns in ((small, f"{NS}-small"), (large, f"{NS}-large")):
                    await create_namespace(client, ns)
                    timeout = 180.0 + n * 0.5
                    if n == small:
                        await _burst_once(client, "w", max(10, small // 10), conc, timeout, ns=ns)
                        await wait_settled(proc, cl, quiet_for=1.0, timeout=timeout)
                    cpu_before, cpu_cp = proc.cpu_seconds(), cl.cpu(proc)
                    timing = await _burst_once(client, "b", n, conc, timeout, ns=ns)
                    cpu_used[c.key].append(f"{n}: {cpu_delta(cpu_cp, cl.cpu(proc))}")
                    await wait_settled(proc, cl, quiet_for=1.0, timeout=timeout)
                    per_md[(c.key, n)].values.append(1000 * timing.total / n)
                    creates_md[(c.key, n)].values.append(1000 * timing.creates / n)
                    cpu_md[(c.key, n)].values.append(1000 * (proc.cpu_seconds() - cpu_before) / n)
                    say(f"vs-scale round {round_no + 1}/{rounds} {c.key}: burst of {n}: {timing.total:.1f}s "
                        f"(creates {timing.creates:.1f}s), {per_md[(c.key, n)].values[-1]:.2f} ms and "
                        f"{cpu_md[(c.key, n)].values[-1]:.2f} ms CPU per ModuleDeployment; CPU meanwhile "
                        f"{cpu_used[c.key][-1]}; load {load_average()[0]:.2f}")
                await proc.stop()
    for c in contenders:
        fig = res.figure(f"time per ModuleDeployment, {large} / {small}: {c.label}", "x", digits=2)
        if c.key in (MSC.key, CR_TUNED.key):
            fig.target, fig.bound = f"≤ {SCALE_TARGET:g}x", ("le", SCALE_TARGET)
        fig.values = [b / a for a, b in zip(per_md[(c.key, small)].values, per_md[(c.key, large)].values,
                                            strict=False) if a]
    for c in contenders:
        res.facts[f"CPU used from the first create to the last Service, per burst, with '{c.label}'"] = \
            " | ".join(cpu_used[c.key])
        res.facts[f"configuration of '{c.label}'"] = c.config
    res.notes.append(
        f"{rounds} rounds; in each, every contender alone on a fresh control plane (the order rotates), serving all "
        f"namespaces: a warm-up of {max(10, small // 10)}, a burst of {small} ModuleDeployments in one namespace, "
        f"quiet, then a burst of {large} in another, each timed like bench 7 (first create to the last Service "
        "right on the benchmark's watch) and divided by its size. The creates' time per ModuleDeployment is "
        "when the benchmark's last create returned: where it grows with the burst, the API server (and the "
        "machine) is what slows down, not the contender. The CPU of every process during each burst is "
        "listed below. Both contenders meet the same API server, so the ratio of their ratios says which one "
        "slows down more with scale.")
    return res
