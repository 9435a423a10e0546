"""5. Start-up: a fresh controller process with M ModuleDeployments (and their Services) present.

From the controller's own log (``--log-level info``): ``caches_synced`` carries ``seconds`` (the informers'
lists) and a timestamp; the first ``reconciled`` line is the first reconcile. Wall times are measured by
the benchmark from just before it spawned the process to those lines' timestamps. Finally, the time until
the start-up pass over every key has finished (controller_runtime_reconcile_total reaches M), and the
writes it made (a converged cluster needs none).
"""

from __future__ import annotations

import time

import anyio
import orjson

from controller.runtime.kube.client import JsonObj
from tests.harness import module_deployment

from .common import (
    BenchError,
    BenchResult,
    Controller,
    Sizes,
    api_writes,
    cluster,
    create_mds,
    create_namespace,
    kube_client,
    metric,
    parse_timestamp,
    say,
    server_version,
    wait_quiet,
)

NS = "bench"


class _Tail:
    """Reads a growing JSON-lines log incrementally."""

    def __init__(self, ctl: Controller) -> None:
        self.ctl = ctl
        self._offset = 0
        self._partial = b""

    def new_lines(self) -> list[JsonObj]:
        try:
            with self.ctl.log_path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        out = []
        for raw in complete:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict):
                out.append(line)
        return out


async def _one_start(cl_spawn: Controller, m: int) -> dict[str, float]:
    ctl = cl_spawn
    tail = _Tail(ctl)
    synced_line: JsonObj | None = None
    first_reconcile: JsonObj | None = None
    deadline = time.perf_counter() + 300
    while synced_line is None or first_reconcile is None:
        if not ctl.alive():
            raise BenchError(f"{ctl.name} exited with {ctl.proc.returncode}: {ctl.tail()}")
        if time.perf_counter() > deadline:
            raise BenchError(f"{ctl.name}: no caches_synced/reconciled line within 300s")
        for line in tail.new_lines():
            if line.get("event") == "caches_synced" and synced_line is None:
                synced_line = line
            elif line.get("event") == "reconciled" and first_reconcile is None:
                first_reconcile = line
        await anyio.sleep(0.02)
    synced_ts = parse_timestamp(synced_line.get("timestamp"))
    first_ts = parse_timestamp(first_reconcile.get("timestamp"))
    if synced_ts is None or first_ts is None:
        raise BenchError(f"unparseable timestamps in {synced_line} / {first_reconcile}")
    # Every key reconciled once: the start-up pass is over.
    while True:
        samples = await ctl.scrape()
        if metric(samples, "controller_runtime_reconcile_total") >= m:
            all_done = time.perf_counter()
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"{ctl.name}: start-up pass did not finish within 300s")
        await anyio.sleep(0.05)
    samples = await wait_quiet(ctl, services=m, quiet_for=1.0)
    return {
        "log_seconds": float(synced_line.get("seconds") or 0.0),
        "synced": synced_ts - ctl.spawned_wall,
        "first": first_ts - ctl.spawned_wall,
        "all": all_done - ctl.spawned,
        "writes": api_writes(samples),
    }


async def run(sizes: Sizes) -> BenchResult:
    m = sizes.startup_mds
    res = BenchResult("startup", f"5. Start-up with {m} ModuleDeployments and their Services present")
    log_secs = res.figure("caches synced: `seconds` in the caches_synced log line", "s", digits=2)
    synced = res.figure("process start → caches synced", "s", digits=2)
    first = res.figure("process start → first reconcile", "s", target="≤ 5 s", bound=("le", 5.0), digits=2)
    every = res.figure(f"process start → all {m} keys reconciled", "s", digits=2)
    writes = res.figure("API writes during start-up (converged cluster)", "", digits=0)
    async with cluster("startup") as cl, kube_client(cl.kubeconfig) as client:
        res.facts["kube-apiserver"] = await server_version(client)
        await create_namespace(client, NS)
        builder = cl.spawn("startup-builder")
        await builder.wait_ready()
        started = time.perf_counter()
        await create_mds(client, NS, [module_deployment(f"md-s{i}", f"s{i}") for i in range(m)],
                         sizes.load_concurrency)
        await wait_quiet(builder, services=m, quiet_for=3.0, timeout=1800)
        say(f"startup: {m} ModuleDeployments converged in {time.perf_counter() - started:.0f}s")
        await builder.stop()
        for run_no in range(sizes.startup_runs):
            ctl = cl.spawn(f"startup-{run_no}", log_level="info")
            out = await _one_start(ctl, m)
            await ctl.stop()
            log_secs.values.append(out["log_seconds"])
            synced.values.append(out["synced"])
            first.values.append(out["first"])
            every.values.append(out["all"])
            writes.values.append(out["writes"])
            say(f"startup run {run_no + 1}/{sizes.startup_runs}: synced after {out['synced']:.2f}s "
                f"(lists {out['log_seconds']:.2f}s), first reconcile {out['first']:.2f}s, "
                f"all keys {out['all']:.2f}s, {out['writes']:.0f} writes")
    res.notes.append(
        f"{sizes.startup_runs} fresh processes, one after the other, each started with `--log-level info` on "
        f"the converged cluster; process start = just before the benchmark spawned it, so the figures include "
        "the Python interpreter starting and importing the controller."
    )
    return res
