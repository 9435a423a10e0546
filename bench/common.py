"""Shared machinery: sizes, a control plane per benchmark, the controller as a subprocess (RSS/CPU from
/proc, figures from its /metrics, its log), a raw watch that timestamps events, a bounded-concurrency load
generator and the statistics every figure goes through."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import orjson
from anyio.abc import TaskStatus
from prometheus_client.parser import text_string_to_metric_families

from controller.moduleservice.desired import MANAGED_BY_LABEL, MANAGED_BY_VALUE, MODULE_LABEL
from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.client import JsonObj, KubeClient, load_configuration
from controller.runtime.kube.errors import ApiError, TransportError
from controller.runtime.kube.resources import PODS, SERVICES
from tests.controlplane import ControlPlane

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "manifests" / "crd" / "moduledeployments.yaml"
LABEL_PREFIX = "module.koupleless.alipay.com/"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_STARTED = time.perf_counter()


class BenchError(RuntimeError):
    """A benchmark could not produce its figure (timeout, wrong state); the message says why."""


def say(message: str) -> None:
    """Progress on stderr, with seconds since the benchmark process started."""
    print(f"[bench {time.perf_counter() - _STARTED:7.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    latency_mds: int = 200
    latency_warmup: int = 5
    latency_runs: int = 5
    burst_mds: int = 2000
    burst_concurrency: int = 16
    burst_runs: int = 3
    idle_mds: int = 2000
    idle_window: float = 60.0
    idle_runs: int = 3
    memory_mds: int = 10_000
    memory_pods: int = 30_000
    memory_modules_per_pod: int = 3
    memory_namespaces: int = 10
    memory_runs: int = 3
    startup_mds: int = 10_000
    startup_runs: int = 3
    failover_runs: int = 3
    failover_mds: int = 100
    # (lease duration, renew deadline, retry period) in seconds
    failover_settings: tuple[tuple[float, float, float], ...] = ((15.0, 10.0, 2.0), (4.0, 3.0, 1.0))
    load_concurrency: int = 64
    profile_mds: int = 2000
    # Side by side with the peers (bench/sidebyside.py); the idle window is idle_window.
    vs_burst_mds: int = 1000
    vs_memory_mds: int = 10_000
    vs_memory_pods: int = 30_000
    vs_runs: int = 3
    # Bench 8: while a contender is down, every Nth module Pod is deleted (or created again), so about 3/N of
    # this controller's statuses are stale when it starts.
    vs_restart_pod_every: int = 100
    # Bench 10 (vs-scale): a burst of this many beside one of vs_burst_mds: time per ModuleDeployment at scale.
    vs_scale_mds: int = 10_000
    caches_mds: int = 10_000
    caches_module_pods: int = 30_000
    caches_unrelated_pods: int = 100_000
    caches_unrelated_services: int = 20_000
    caches_namespaces: int = 10


FULL = Sizes()
SMOKE = Sizes(
    latency_mds=20, latency_warmup=2, latency_runs=3,
    burst_mds=100, burst_runs=1,
    idle_mds=100, idle_window=5.0, idle_runs=2,
    memory_mds=200, memory_pods=600, memory_runs=2, memory_namespaces=2,
    startup_mds=200, startup_runs=2,
    failover_runs=1, failover_mds=10, failover_settings=((4.0, 3.0, 1.0),),
    profile_mds=200,
    vs_burst_mds=40, vs_memory_mds=60, vs_memory_pods=180, vs_runs=1, vs_restart_pod_every=10, vs_scale_mds=200,
    caches_mds=100, caches_module_pods=300, caches_unrelated_pods=1000, caches_unrelated_services=200,
    caches_namespaces=2,
)


# ---------------------------------------------------------------------------------------------- figures
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        return math.nan
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


@dataclass
class Figure:
    """One reported figure: its value in every run; the table shows the median with min and max."""

    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str = ""
    # (comparison, bound) checked against the median: "le" means median <= bound.
    bound: tuple[str, float] | None = None
    digits: int = 1

    @property
    def median(self) -> float:
        return median(self.values)

    @property
    def min(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.values else math.nan

    @property
    def met(self) -> bool | None:
        if self.bound is None or not self.values:
            return None
        op, bound = self.bound
        return self.median <= bound if op == "le" else self.median >= bound


@dataclass
class BenchResult:
    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    facts: dict[str, str] = field(default_factory=dict)

    def figure(self, name: str, unit: str, *, target: str = "", bound: tuple[str, float] | None = None,
               digits: int = 1) -> Figure:
        fig = Figure(name, unit, target=target, bound=bound, digits=digits)
        self.figures.append(fig)
        return fig


# ---------------------------------------------------------------------------------------------- objects
def raw_service(module: str, *, port: int = 8080) -> JsonObj:
    """The Service the controller makes for ``module``, minus the owner references (the floor and ceiling
    write it into a namespace without ModuleDeployments)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"{module}-service",
                     "labels": {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODULE_LABEL: module}},
        "spec": {"type": "NodePort", "selector": {f"{LABEL_PREFIX}{module}": "true"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": port}]},
    }


def pod(name: str, modules: Iterable[str]) -> JsonObj:
    labels = {"app": "base"} | {f"{LABEL_PREFIX}{m}": "true" for m in modules}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "base", "image": "example.invalid/x:1"}]}}


def service_ok(svc: JsonObj, module: str, md_name: str | None, port: int = 8080) -> bool:
    """The Service is what the controller must make for ``module`` (owner checked by name; uids are
    checked once the creates have returned)."""
    meta = svc.get("metadata") or {}
    spec = svc.get("spec") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or labels.get(MODULE_LABEL) != module:
        return False
    if spec.get("type") != "NodePort" or spec.get("selector") != {f"{LABEL_PREFIX}{module}": "true"}:
        return False
    ports = [(p.get("name"), p.get("protocol"), p.get("port"), p.get("targetPort")) for p in spec.get("ports") or []]
    if ports != [("http", "TCP", port, port)]:
        return False
    if md_name is None:
        return True
    refs = meta.get("ownerReferences") or []
    return len(refs) == 1 and refs[0].get("kind") == "ModuleDeployment" and refs[0].get("name") == md_name \
        and refs[0].get("controller") is True and refs[0].get("blockOwnerDeletion") is True


# ---------------------------------------------------------------------------------------------- API side
@asynccontextmanager
async def kube_client(kubeconfig: str, *, connections: int = 100) -> AsyncIterator[KubeClient]:
    async with KubeClient(await load_configuration(kubeconfig), max_connections=connections,
                          user_agent="msc-bench/0.1") as client:
        yield client


async def create(client: KubeClient, path: str, body: JsonObj, *, attempts: int = 5) -> JsonObj:
    """POST with a few retries on transport errors and 429/5xx (load generation must not die on a blip)."""
    for attempt in range(attempts):
        try:
            return await client.request("POST", path, body=body)
        except TransportError:
            if attempt == attempts - 1:
                raise
        except ApiError as exc:
            if attempt == attempts - 1 or not (exc.status == 429 or exc.status >= 500):
                raise
        await anyio.sleep(0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def burst_watch(client: KubeClient, ns: str, prefix: str, n: int
                ) -> tuple[list[str], dict[str, tuple[str, str]], Watch]:
    """A burst's modules, the Service each must get (name -> (module, owner's name)), and a watch of the
    namespace's Services that stamps when each is first right."""
    modules = [f"{prefix}-m{i}" for i in range(n)]
    expected = {f"{m}-service": (m, f"md-{m}") for m in modules}

    def check(name: str, svc: JsonObj) -> bool:
        want = expected.get(name)
        return want is not None and service_ok(svc, want[0], want[1])

    return modules, expected, Watch(client, SERVICES.path(ns), check)


async def create_namespace(client: KubeClient, name: str) -> None:
    await create(client, "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


async def bounded(concurrency: int, items: Iterable[T], fn: Callable[[T], Awaitable[object]]) -> None:
    """Runs ``fn`` on every item with at most ``concurrency`` in flight (workers over one iterator, so a
    40,000-item load does not hold 40,000 coroutines)."""
    it: Iterator[T] = iter(items)

    async def worker() -> None:
        for item in it:
            await fn(item)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)


async def create_mds(client: KubeClient, ns: str, mds: Sequence[JsonObj], concurrency: int) -> dict[str, JsonObj]:
    created: dict[str, JsonObj] = {}

    async def one(md: JsonObj) -> None:
        obj = await create(client, MODULE_DEPLOYMENTS.path(ns), md)
        created[obj["metadata"]["name"]] = obj

    await bounded(concurrency, mds, one)
    return created


async def create_pods_in(client: KubeClient, pods: Iterable[tuple[str, JsonObj]], concurrency: int) -> None:
    """Creates (namespace, Pod) pairs."""
    async def one(item: tuple[str, JsonObj]) -> None:
        await create(client, PODS.path(item[0]), item[1])

    await bounded(concurrency, pods, one)


async def count(client: KubeClient, path: str) -> int:
    """Objects at ``path`` (paginated list, 500 a page)."""
    total = 0
    params: dict[str, str | int | bool] = {"limit": 500}
    while True:
        page = await client.request("GET", path, params=params, timeout=120)
        total += len(page.get("items") or [])
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            return total
        params["continue"] = token


async def server_version(client: KubeClient) -> str:
    return str((await client.request("GET", "/version")).get("gitVersion") or "?")


class Watch:
    """A raw watch (KubeClient.watch) of one collection that timestamps, per object name, the first event
    and the first event at which ``check`` held. ``wait``/``wait_all`` block on those."""

    def __init__(self, client: KubeClient, path: str, check: Callable[[str, JsonObj], bool] | None = None) -> None:
        self.client = client
        self.path = path
        self.check = check or (lambda _name, _obj: True)
        self.first_seen: dict[str, float] = {}
        self.ok_at: dict[str, float] = {}
        self.latest: dict[str, JsonObj] = {}
        self.events = 0
        self._rv = ""
        self._waiters: dict[str, anyio.Event] = {}
        self._pending: set[str] = set()
        self._all = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        page = await self.client.request("GET", self.path, params={"limit": 1})
        self._rv = str((page.get("metadata") or {}).get("resourceVersion") or "")
        started = False

        def on_open() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            await self.client.watch(
                self.path, params={"resourceVersion": self._rv, "allowWatchBookmarks": True, "timeoutSeconds": 3600},
                on_event=self._on_event, idle_timeout=3600, on_open=on_open,
            )

    def _on_event(self, event: JsonObj) -> None:
        now = time.perf_counter()
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        self._rv = str(meta.get("resourceVersion") or self._rv)
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return
        self.events += 1
        name = str(meta.get("name"))
        self.first_seen.setdefault(name, now)
        self.latest[name] = obj
        if name not in self.ok_at and self.check(name, obj):
            self.ok_at[name] = now
            waiter = self._waiters.pop(name, None)
            if waiter is not None:
                waiter.set()
            if name in self._pending:
                self._pending.discard(name)
                if not self._pending:
                    self._all.set()

    async def wait(self, name: str, timeout: float) -> float:
        if name not in self.ok_at:
            waiter = self._waiters.setdefault(name, anyio.Event())
            with anyio.move_on_after(timeout):
                await waiter.wait()
            if name not in self.ok_at:
                raise BenchError(f"{name} not seen on the watch of {self.path} within {timeout:.0f}s")
        return self.ok_at[name]

    async def wait_all(self, names: Iterable[str], timeout: float) -> float:
        """Waits until every name passed ``check``; returns the time of the last one."""
        wanted = set(names)
        self._pending = wanted - self.ok_at.keys()
        self._all = anyio.Event()
        if self._pending:
            with anyio.move_on_after(timeout):
                await self._all.wait()
        if self._pending:
            raise BenchError(f"{len(self._pending)} of {len(wanted)} objects not right on {self.path} "
                             f"within {timeout:.0f}s (e.g. {sorted(self._pending)[:3]})")
        return max(self.ok_at[n] for n in wanted)


# ---------------------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The Python the controller runs with (bench/runtime.py: only the runtime dependencies, as in the image), and
# what to call it in the report; None: this venv's console script.
CONTROLLER_PYTHON: Path | None = None
CONTROLLER_ENV = "the development venv"


def controller_command(python: Path | None = None) -> list[str]:
    python = python or CONTROLLER_PYTHON
    if python is not None:
        return [str(python), "-m", "controller"]
    script = Path(sys.executable).parent / "module-service-controller"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controller"]


def controller_env() -> dict[str, str]:
    """The controller's environment: ours without MSC_ variables; with the runtime venv, this tree's source
    first on PYTHONPATH (a wrapper such as ``env PYTHONPATH=DIR`` still overrides it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSC_")}
    if CONTROLLER_PYTHON is not None:
        env["PYTHONPATH"] = str(ROOT)
        # The image's bytecode is compiled at install time; a tree edited since must not recompile at
        # every start either.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


Samples = list[tuple[str, dict[str, str], float]]


def metric(samples: Samples, metric_name: str, /, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == metric_name and all(lab.get(k) == x for k, x in labels.items()))


def api_writes(samples: Samples) -> float:
    """Writes the controller sent (rest_client_requests_total, POST/PUT/PATCH/DELETE, every code)."""
    return sum(v for n, lab, v in samples if n == "rest_client_requests_total" and lab.get("method") in WRITE_METHODS)


def api_requests(samples: Samples) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, lab, v in samples:
        if n == "rest_client_requests_total":
            out[lab.get("method", "?")] = out.get(lab.get("method", "?"), 0.0) + v
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (/proc/<pid>/stat utime + stime); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK
# Extra flags for every controller the benchmarks start (``python -m bench --controller-arg=--workers=16``).
EXTRA_CONTROLLER_ARGS: list[str] = []


class Controller:
    """module-service-controller as a child process with its own metrics and probe ports and a log file."""

    def __init__(self, kubeconfig: str, workdir: Path, name: str, *, args: Sequence[str] = (),
                 log_level: str = "warning", wrapper: Sequence[str] = (), python: Path | None = None) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.probe_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.cmd = [*controller_command(python), "--kubeconfig", kubeconfig,
                    "--metrics-bind-address", f"127.0.0.1:{self.metrics_port}",
                    "--health-probe-bind-address", f"127.0.0.1:{self.probe_port}",
                    "--log-level", log_level, *args, *EXTRA_CONTROLLER_ARGS]
        env = controller_env()
        with self.log_path.open("ab") as log:
            self.spawned_wall = time.time()
            self.spawned = time.perf_counter()
            # ``wrapper`` (e.g. py-spy record ... --) makes the wrapper our child; pid/RSS/CPU are then its.
            self.proc = subprocess.Popen([*wrapper, *self.cmd], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise BenchError(f"no VmRSS for pid {self.pid}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds (/proc/<pid>/stat utime + stime)."""
        return cpu_seconds(self.pid)

    def _get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode(errors="replace")

    async def scrape(self, names: Sequence[str] = ()) -> Samples:
        """The controller's /metrics; with ``names``, only those families (``name[]``, which a tree or peer
        without it ignores): a poll every 50 ms must not cost the measured process much (a full scrape of
        this controller takes about 2 ms of its CPU)."""
        query = "&".join(f"name[]={n}" for n in names)
        status, text = await anyio.to_thread.run_sync(self._get, self.metrics_port,
                                                      f"/metrics?{query}" if query else "/metrics")
        if status != 200:
            raise BenchError(f"{self.name} /metrics answered {status}")
        return [(s.name, dict(s.labels), float(s.value))
                for fam in text_string_to_metric_families(text) for s in fam.samples]

    async def ready(self) -> bool:
        try:
            status, _ = await anyio.to_thread.run_sync(self._get, self.probe_port, "/readyz")
        except (urllib.error.URLError, OSError):
            return False
        return status == 200

    async def wait_ready(self, timeout: float = 120.0) -> float:
        """Waits until /readyz answers 200 (caches synced); returns the perf_counter time."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if not self.alive():
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if await self.ready():
                return time.perf_counter()
            await anyio.sleep(0.05)
        raise BenchError(f"{self.name} not ready within {timeout:.0f}s: {self.tail()}")

    def log_lines(self) -> list[JsonObj]:
        out: list[JsonObj] = []
        with contextlib.suppress(OSError):
            for raw in self.log_path.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    line = orjson.loads(raw)
                    if isinstance(line, dict):
                        out.append(line)
        return out

    def tail(self, n: int = 1500) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    async def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 40.0) -> int | None:
        """Signals the process (``None``: it has been signalled already) and waits for it to exit, with a
        SIGKILL after ``timeout``; returns its exit code."""
        if sig is not None:
            self.send(sig)
        deadline = time.perf_counter() + timeout
        while self.alive() and time.perf_counter() < deadline:
            await anyio.sleep(0.05)
        if self.alive():
            self.send(signal.SIGKILL)
            await anyio.to_thread.run_sync(self.proc.wait)
        return self.proc.returncode


# What wait_quiet and the side-by-side benchmarks read while they poll (sample names, as name[] wants).
QUIET_FAMILIES = ("controller_quiescent", "controller_runtime_reconcile_total", "rest_client_requests_total",
                  "informer_objects",
                  "workqueue_depth", "controller_runtime_active_workers")


async def wait_quiet(ctl: Controller, *, services: int | None = None, quiet_for: float = 2.0,
                     timeout: float = 900.0, lease_renewals: bool = False) -> Samples:
    """Waits until the controller has acted on everything it has seen, and its Service informer holds at
    least ``services`` objects. The controller says so itself (``controller_quiescent``: nothing queued, in
    progress or waiting for a delay, no Event waiting); a tree from before it had that gauge (the baseline
    contender) is judged by empty work queues, no active worker and no write for ``quiet_for`` seconds (with
    ``lease_renewals``, whose renewals count as writes, no reconcile). Returns the last scrape."""
    deadline = time.perf_counter() + timeout
    last_writes = -1.0
    changed = time.perf_counter()
    while True:
        if not ctl.alive():
            raise BenchError(f"{ctl.name} exited with {ctl.proc.returncode}: {ctl.tail()}")
        samples = await ctl.scrape(QUIET_FAMILIES)
        now = time.perf_counter()
        writes = metric(samples, "controller_runtime_reconcile_total") if lease_renewals else api_writes(samples)
        if writes != last_writes:
            last_writes, changed = writes, now
        enough = services is None or metric(samples, "informer_objects", resource="services") >= services
        if any(name == "controller_quiescent" for name, _, _ in samples):
            if enough and metric(samples, "controller_quiescent") == 1:
                return samples
        elif (metric(samples, "workqueue_depth") == 0 and metric(samples, "controller_runtime_active_workers") == 0
              and enough and now - changed >= quiet_for):
            return samples
        if now > deadline:
            raise BenchError(f"{ctl.name} did not go quiet within {timeout:.0f}s (writes {writes:.0f}, "
                             f"services cached {metric(samples, 'informer_objects', resource='services'):.0f})")
        await anyio.sleep(0.05)


# ---------------------------------------------------------------------------------------------- clusters
# Everything started, so that a SIGTERM/SIGINT of the benchmark still stops it (see __main__).
_LIVE_CONTROLLERS: list[Controller] = []
_LIVE_CONTROL_PLANES: list[ControlPlane] = []


def stop_everything() -> None:
    """Synchronous last-resort cleanup: SIGKILL our controllers, stop our control planes."""
    for ctl in _LIVE_CONTROLLERS:
        if ctl.alive():
            ctl.send(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                ctl.proc.wait(timeout=5)
    _LIVE_CONTROLLERS.clear()
    for cp in _LIVE_CONTROL_PLANES:
        with contextlib.suppress(Exception):
            cp.down(remove=True)
            shutil.rmtree(cp.directory.parent, ignore_errors=True)
    _LIVE_CONTROL_PLANES.clear()


@dataclass
class Cluster:
    cp: ControlPlane
    workdir: Path
    controllers: list[Controller] = field(default_factory=list)

    @property
    def kubeconfig(self) -> str:
        return str(self.cp.kubeconfig)

    def cpu(self, *controllers: Controller) -> dict[str, float]:
        """CPU seconds so far of the control plane's processes, the given controllers and this process."""
        out = {name: cpu_seconds(pid) for name, pid in self.cp.pids.items()}
        for ctl in controllers:
            out["controller"] = out.get("controller", 0.0) + ctl.cpu_seconds()
        out["benchmark"] = cpu_seconds(os.getpid())
        return out

    def spawn(self, name: str, *, args: Sequence[str] = (), log_level: str = "warning",
              wrapper: Sequence[str] = ()) -> Controller:
        ctl = Controller(self.kubeconfig, self.workdir, name, args=args, log_level=log_level, wrapper=wrapper)
        self.controllers.append(ctl)
        _LIVE_CONTROLLERS.append(ctl)
        return ctl


# The seed's Services are NodePort: the default range (30000-32767) holds 2,768 of them per cluster, fewer
# than the memory and start-up benchmarks need (10,000) and than a burst run makes. Widen it.
NODE_PORT_RANGE = "30000-64999"


class BenchControlPlane(ControlPlane):
    """The test control plane with a node-port range wide enough for 10,000+ NodePort Services."""

    def _apiserver_args(self) -> list[str]:
        return [*super()._apiserver_args(), f"--service-node-port-range={NODE_PORT_RANGE}"]


def _apply_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(CRD))
    cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/moduledeployments.koupleless.alipay.com")


@asynccontextmanager
async def cluster(name: str) -> AsyncIterator[Cluster]:
    """A fresh control plane with the CRD applied; every controller spawned on it is stopped and the
    control plane torn down on exit."""
    workdir = Path(tempfile.mkdtemp(prefix=f"msc-bench-{name}-"))
    cp = BenchControlPlane(workdir / "cp")
    started = time.perf_counter()
    _LIVE_CONTROL_PLANES.append(cp)
    try:
        await anyio.to_thread.run_sync(cp.up)
        await anyio.to_thread.run_sync(_apply_crd, cp)
        say(f"{name}: control plane up in {time.perf_counter() - started:.1f}s ({cp.server})")
        cl = Cluster(cp, workdir)
        try:
            yield cl
        finally:
            with anyio.CancelScope(shield=True):
                for ctl in cl.controllers:
                    if ctl.alive():
                        await ctl.stop(signal.SIGKILL, timeout=10)
                    with contextlib.suppress(ValueError):
                        _LIVE_CONTROLLERS.remove(ctl)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(lambda: cp.down(remove=True))
            shutil.rmtree(workdir, ignore_errors=True)
            with contextlib.suppress(ValueError):
                _LIVE_CONTROL_PLANES.remove(cp)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> str:
    """'kube-apiserver 12.3 s, ...' for the CPU used between two Cluster.cpu() readings."""
    used = {k: after[k] - before.get(k, 0.0) for k in after}
    return ", ".join(f"{k} {v:.1f} s" for k, v in sorted(used.items(), key=lambda kv: -kv[1]))


def parse_timestamp(value: Any) -> float | None:
    """structlog's ISO timestamp (UTC) -> Unix seconds."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
