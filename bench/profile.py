"""Profile: py-spy on the controller process during a burst and during a start-up.

``py-spy record --format raw --nonblocking`` samples the controller at 100 Hz, idle samples left out. The
raw (collapsed-stack) files are kept and summarised: where the CPU went by package, the functions and lines
with the most self time, and the controller's own functions by inclusive time.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio

from tests.harness import module_deployment

from .burst import NS, controller_phase
from .common import (
    BenchError,
    Sizes,
    cluster,
    create_mds,
    create_namespace,
    kube_client,
    metric,
    say,
    wait_quiet,
)

RATE = 100


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _frame(frame: str) -> tuple[str, str, str]:
    """'func (path/to/file.py:12)' -> (func, short file, line)."""
    func, _, rest = frame.partition(" (")
    loc = rest.rstrip(")")
    path, _, line = loc.rpartition(":")
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return func, path, line


def _package(path: str) -> str:
    if path.startswith("controller/"):
        return "controller (our code)"
    head = path.split("/", 1)[0]
    if head.endswith(".py"):
        head = head[:-3]
    return {"asyncio": "asyncio (event loop)", "selectors": "asyncio (event loop)", "ssl": "ssl"}.get(head, head)


def summarise(raw: Path, seconds: float, top: int = 12) -> list[str]:
    stacks: list[tuple[list[str], int]] = []
    for line in raw.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if stack and num.isdigit():
            stacks.append((stack.split(";"), int(num)))
    total = sum(n for _, n in stacks)
    if not total:
        return ["py-spy recorded no samples."]
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    by_pkg: Counter[str] = Counter()
    incl_ours: Counter[str] = Counter()
    for frames, n in stacks:
        func, path, line = _frame(frames[-1])
        self_fn[f"`{func}` ({path})"] += n
        self_line[f"`{func}` ({path}:{line})"] += n
        by_pkg[_package(path)] += n
        seen: set[str] = set()
        for fr in frames:
            f, p, _ = _frame(fr)
            if p.startswith("controller/"):
                key = f"`{f}` ({p})"
                if key not in seen:
                    seen.add(key)
                    incl_ours[key] += n

    def pct(n: int) -> str:
        return f"{100 * n / total:.1f} %"

    busy = total / RATE
    out = [f"{total} samples at {RATE} Hz = {busy:.1f} s of CPU-busy time in {seconds:.1f} s of wall time "
           f"({100 * busy / seconds:.0f} % of one core; idle samples excluded).", "",
           "| Self time by package | share |", "|---|--:|"]
    out += [f"| {k} | {pct(n)} |" for k, n in by_pkg.most_common(top)]
    out += ["", "| Hottest functions (self time) | share |", "|---|--:|"]
    out += [f"| {k} | {pct(n)} |" for k, n in self_fn.most_common(top)]
    out += ["", "| Hottest lines (self time) | share |", "|---|--:|"]
    out += [f"| {k} | {pct(n)} |" for k, n in self_line.most_common(8)]
    out += ["", "| Controller functions (inclusive time) | share |", "|---|--:|"]
    out += [f"| {k} | {pct(n)} |" for k, n in incl_ours.most_common(top)]
    return out


async def _stop_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        await anyio.to_thread.run_sync(lambda: spy.wait(timeout=60))
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


async def burst(sizes: Sizes, exe: str, raw: Path) -> list[str]:
    """py-spy attached (--pid) to a running controller during a burst."""
    n, conc = sizes.profile_mds, sizes.burst_concurrency
    async with cluster("profile-burst") as cl, kube_client(cl.kubeconfig) as client:
        await create_namespace(client, NS)
        ctl = cl.spawn("profile-burst", args=["--namespace", NS])
        await ctl.wait_ready()
        spy_log = cl.workdir / "py-spy.log"
        with spy_log.open("wb") as log:
            spy = subprocess.Popen([exe, "record", "--pid", str(ctl.pid), "--rate", str(RATE), "--format", "raw",
                                    "--nonblocking", "--output", str(raw)], stdout=log, stderr=subprocess.STDOUT)
        try:
            await anyio.sleep(1.0)  # let py-spy attach
            if spy.poll() is not None:
                raise BenchError(f"py-spy exited: {spy_log.read_text(errors='replace')[-500:]}")
            started = time.perf_counter()
            secs, quiet, per_md = await controller_phase(client, ctl, "p", n, conc)
            wall = time.perf_counter() - started
        finally:
            await _stop_spy(spy)
        say(f"profile: burst of {n} under py-spy: all Services right after {secs:.2f}s, quiet after {quiet:.2f}s")
        if not raw.exists():
            raise BenchError(f"py-spy wrote no profile: {spy_log.read_text(errors='replace')[-500:]}")
    head = [
        f"### Burst: {n} ModuleDeployments at concurrency {conc}",
        "",
        f"`py-spy record --rate {RATE} --format raw --nonblocking --pid <controller>`, attached to the running "
        f"controller from just before the first create until it was quiet ({n / secs:.0f} Services/s with the "
        f"profiler attached, {per_md:.2f} writes per ModuleDeployment). Collapsed stacks: `bench/{raw.name}`.",
        "",
    ]
    return head + summarise(raw, wall)


async def startup(sizes: Sizes, exe: str, raw: Path) -> list[str]:
    """A fresh controller started under py-spy (``py-spy record -- <controller>``) on a cluster with M
    converged ModuleDeployments, recorded from process start until the start-up pass is over."""
    m = sizes.startup_mds
    async with cluster("profile-startup") as cl, kube_client(cl.kubeconfig) as client:
        await create_namespace(client, NS)
        builder = cl.spawn("profile-startup-builder")
        await builder.wait_ready()
        await create_mds(client, NS, [module_deployment(f"md-s{i}", f"s{i}") for i in range(m)],
                         sizes.load_concurrency)
        await wait_quiet(builder, services=m, quiet_for=3.0, timeout=1800)
        await builder.stop()
        ctl = cl.spawn("profile-startup", log_level="info", wrapper=[
            exe, "record", "--rate", str(RATE), "--format", "raw", "--nonblocking", "--output", str(raw), "--"])
        started = time.perf_counter()
        try:
            await ctl.wait_ready(timeout=300)
            synced = time.perf_counter() - started
            deadline = time.perf_counter() + 300
            while metric(await ctl.scrape(), "controller_runtime_reconcile_total") < m:
                if time.perf_counter() > deadline:
                    raise BenchError("start-up pass did not finish within 300s under py-spy")
                await anyio.sleep(0.05)
            wall = time.perf_counter() - started
        finally:
            await _stop_spy(ctl.proc)
        say(f"profile: start-up under py-spy: ready after {synced:.2f}s, all keys after {wall:.2f}s")
        if not raw.exists():
            raise BenchError(f"py-spy wrote no profile: {ctl.tail()}")
    head = [
        f"### Start-up with {m} ModuleDeployments and their Services present",
        "",
        f"`py-spy record --rate {RATE} --format raw --nonblocking -- module-service-controller ...`: a fresh "
        f"process recorded from its start until every key had been reconciled once (ready after {synced:.2f} s, "
        f"start-up pass over after {wall:.2f} s with the profiler attached). Collapsed stacks: `bench/{raw.name}`.",
        "",
    ]
    return head + summarise(raw, wall)


async def run(sizes: Sizes, out_dir: Path) -> list[str]:
    exe = py_spy()
    if exe is None:
        return ["py-spy is not installed (`.venv/bin/pip install py-spy==0.4.3`); no profile taken."]
    lines = ["Open the collapsed stacks in speedscope.app or with flamegraph.pl.", ""]
    for name, fn in (("burst", burst), ("startup", startup)):
        try:
            lines += await fn(sizes, exe, out_dir / f"profile-{name}.txt")
        except Exception as exc:
            lines += [f"### {name}", "", f"Profiling failed: {type(exc).__name__}: {exc}"]
            say(lines[-1])
        lines.append("")
    return lines
