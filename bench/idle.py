"""3. Idle: after convergence with N ModuleDeployments, windows of W seconds: the API writes the
controller made (its own rest_client_requests_total, POST/PUT/PATCH/DELETE) and the CPU seconds it used
(/proc/<pid>/stat)."""

from __future__ import annotations

import anyio

from tests.harness import module_deployment

from .common import (
    BenchResult,
    Sizes,
    api_requests,
    api_writes,
    cluster,
    create_mds,
    create_namespace,
    kube_client,
    say,
    server_version,
    wait_quiet,
)

NS = "bench"


async def run(sizes: Sizes) -> BenchResult:
    n, window = sizes.idle_mds, sizes.idle_window
    res = BenchResult("idle", f"3. Idle: {window:.0f} s windows after convergence with {n} ModuleDeployments")
    writes = res.figure(f"API writes per {window:.0f} s", "", target="0", bound=("le", 0.0), digits=0)
    reads = res.figure(f"API requests of any kind per {window:.0f} s", "", digits=0)
    cpu = res.figure(f"CPU seconds per {window:.0f} s", "s", digits=3)
    rss = res.figure("RSS", "MiB", digits=0)
    async with cluster("idle") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        await create_namespace(client, NS)
        ctl = cl.spawn("idle")
        await ctl.wait_ready()
        await create_mds(client, NS, [module_deployment(f"md-i{i}", f"i{i}") for i in range(n)],
                         sizes.load_concurrency)
        await wait_quiet(ctl, services=n, quiet_for=3.0)
        say(f"idle: converged with {n} ModuleDeployments; measuring {sizes.idle_runs} x {window:.0f} s")
        for run_no in range(sizes.idle_runs):
            before, cpu_before = await ctl.scrape(), ctl.cpu_seconds()
            await anyio.sleep(window)
            after, cpu_after = await ctl.scrape(), ctl.cpu_seconds()
            writes.values.append(api_writes(after) - api_writes(before))
            # The scrape itself is no API request; every request the controller made counts here.
            reads.values.append(sum(api_requests(after).values()) - sum(api_requests(before).values()))
            cpu.values.append(cpu_after - cpu_before)
            rss.values.append(ctl.rss() / 2**20)
            say(f"idle window {run_no + 1}/{sizes.idle_runs}: {writes.values[-1]:.0f} writes, "
                f"{reads.values[-1]:.0f} requests, {cpu.values[-1]:.3f} CPU s")
    res.notes.append(
        f"One control plane, {n} ModuleDeployments created at concurrency {sizes.load_concurrency}, then "
        f"{sizes.idle_runs} consecutive windows once the controller was quiet (empty queue, no write for 3 s). "
        "CPU includes serving the benchmark's /metrics scrapes (two per window)."
    )
    return res
