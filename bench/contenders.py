"""The contenders of the side-by-side benchmarks (bench/sidebyside.py): this controller and its peers in
bench/peers/ (controller-runtime, kopf), each with its exact configuration, run as subprocesses with the
same interface as :class:`bench.common.Controller` (RSS and CPU from /proc, a log file, ready, stop)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from tests.controlplane import ControlPlane

from .common import ROOT, BenchError, Controller, free_port, parse_timestamp

PEERS_DIR = ROOT / "bench" / "peers"
PEERS_CACHE = Path(os.environ.get("MSC_PEERS_CACHE", Path.home() / ".cache" / "module-service-controller" / "peers"))


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    kind: str  # "msc" | "controller-runtime" | "kopf" | "floor" (no process)
    config: str  # the exact configuration, for the report
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    wrapper: tuple[str, ...] = ()  # e.g. ("env", "PYTHONPATH=DIR"): this controller from another tree
    python: Path | None = None  # that tree's own runtime venv, when its dependencies differ


MSC = Contender("msc", "this controller", "msc",
                "module-service-controller, defaults: 4 workers, no client-side rate limit, informers on "
                "ModuleDeployments, Services and Pods (managedFields and annotations stripped, Pods cut to "
                "metadata + Ready), status and an Event per ModuleDeployment")
CR = Contender("cr", "controller-runtime, defaults", "controller-runtime",
               "controller-runtime v0.24.1 (client-go v0.36.3), defaults: MaxConcurrentReconciles 1, client QPS "
               "20 / burst 30, caches ModuleDeployments (typed) and Services, full objects",
               ("--workers=1",))
CR_TUNED = Contender("cr-tuned", "controller-runtime, tuned", "controller-runtime",
                     "controller-runtime v0.24.1, tuned: MaxConcurrentReconciles 4, QPS 1000 / burst 2000, "
                     "cache transform TransformStripManagedFields",
                     ("--workers=4", "--qps=1000", "--burst=2000", "--strip-managed-fields"))
CR_PODS = Contender("cr-pods", "controller-runtime, tuned, caching Pods too", "controller-runtime",
                    "as controller-runtime tuned, plus Watches(&Pod{}) mapped to ModuleDeployments by module label "
                    "through a field index, so it caches the same objects as this controller (ModuleDeployments, "
                    "Services, full Pods minus managedFields)",
                    ("--workers=4", "--qps=1000", "--burst=2000", "--strip-managed-fields", "--watch-pods"))
KOPF = Contender("kopf", "kopf, defaults", "kopf",
                 "kopf 1.45.2 with the official kubernetes client 37.0.2 in synchronous handlers, default settings "
                 "(progress and diff-base in annotations on each ModuleDeployment; log lines not posted as Events; "
                 "the default thread pool), `kopf run --standalone --all-namespaces`")
KOPF_TUNED = Contender("kopf-tuned", "kopf, tuned", "kopf",
                       "kopf 1.45.2 as above, tuned: settings.execution.max_workers = 16 (threads for the "
                       "synchronous handlers)",
                       env=(("KOPF_PEER_TUNED", "1"),))

FLOOR = Contender("floor", "no controller (floor)", "floor",
                  "no controller process: the benchmark itself POSTs each Service (with its owner reference) "
                  "the moment its ModuleDeployment's create returns, while the ModuleDeployment creates keep 16 "
                  "in flight: a controller that costs nothing and learns of each ModuleDeployment before any "
                  "watch could tell it. A floor for the API server's side only: one Python process then "
                  "creates, POSTs and watches, and where that process is the bottleneck a contender (a second "
                  "process) can beat it")

BURST_CONTENDERS = (MSC, CR, CR_TUNED, KOPF, KOPF_TUNED)
MEMORY_CONTENDERS = (MSC, CR, CR_PODS, KOPF)


def baseline() -> Contender | None:
    """This controller from another tree, for a before/after in the same run: ``MSC_BENCH_BASELINE=DIR``
    where DIR holds that tree's ``controller`` package (``git archive <commit> controller | tar -x -C DIR``),
    run with this venv, first on ``PYTHONPATH``; with that tree's ``pyproject.toml`` beside it (``git archive
    <commit> controller pyproject.toml``), with a runtime venv of its own dependencies (see
    ``baseline_python``). ``MSC_BENCH_BASELINE_ARGS`` (space-separated flags) are passed to it: the same tree
    with other flags is a before/after too."""
    root = os.environ.get("MSC_BENCH_BASELINE")
    if not root or not (Path(root) / "controller").is_dir():
        return None
    name = Path(root).name
    args = tuple(os.environ.get("MSC_BENCH_BASELINE_ARGS", "").split())
    flags = f" {' '.join(args)}" if args else ", defaults"
    return Contender("msc-baseline", f"this controller at {name}{' ' + ' '.join(args) if args else ''}", "msc",
                     f"module-service-controller from the tree {name} (MSC_BENCH_BASELINE){flags}, "
                     f"{'its own runtime venv' if BASELINE_PYTHON else 'the same venv'}", args=args,
                     wrapper=("env", f"PYTHONPATH={Path(root).resolve()}"), python=BASELINE_PYTHON)


# Set by __main__ when the baseline tree has a pyproject.toml of its own (bench/runtime.py builds its venv).
BASELINE_PYTHON: Path | None = None


# ``python -m bench --contenders msc,cr-tuned``: only these (by key) run; None: all. The reference each
# ratio is taken to (controller-runtime tuned, or tuned caching Pods) always runs.
SELECTED: frozenset[str] | None = None
ALL_KEYS = frozenset(c.key for c in (*BURST_CONTENDERS, *MEMORY_CONTENDERS, FLOOR)) | {"msc-baseline"}


def _chosen(contenders: tuple[Contender, ...], reference: Contender) -> tuple[Contender, ...]:
    return tuple(c for c in contenders if SELECTED is None or c.key in SELECTED or c is reference)


def floor_selected() -> bool:
    return SELECTED is None or FLOOR.key in SELECTED


def burst_contenders() -> tuple[Contender, ...]:
    extra = baseline()
    return _chosen((MSC, *(() if extra is None else (extra,)), *BURST_CONTENDERS[1:]), CR_TUNED)


def memory_contenders() -> tuple[Contender, ...]:
    extra = baseline()
    return _chosen((MSC, *(() if extra is None else (extra,)), *MEMORY_CONTENDERS[1:]), CR_PODS)


def build_peers() -> dict[str, Path]:
    """Builds (or reuses from the cache) every peer; returns {"controller-runtime": binary, "kopf": script}."""
    proc = subprocess.run(["bash", str(PEERS_DIR / "build.sh"), str(PEERS_CACHE)], capture_output=True, text=True,
                          check=False, timeout=1800)
    if proc.returncode != 0:
        raise BenchError(f"bench/peers/build.sh failed: {proc.stderr.strip()[-500:]}")
    out = {}
    for line in proc.stdout.splitlines():
        name, sep, path = line.partition("=")
        if sep:
            out[name] = Path(path)
    return out


class Process(Controller):
    """A contender as a subprocess. For this controller it is exactly ``Controller``; the peers get the
    same metrics/probe ports (kopf has no metrics: its liveness endpoint stands in for /readyz)."""

    def __init__(self, contender: Contender, peers: dict[str, Path], kubeconfig: str, workdir: Path, name: str,
                 *, log_level: str = "warning") -> None:
        self.contender = contender
        if contender.kind == "msc":
            super().__init__(kubeconfig, workdir, name, args=contender.args, log_level=log_level,
                             wrapper=contender.wrapper, python=contender.python)
            return
        self.name = name
        self.metrics_port = free_port()
        self.probe_port = free_port()
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MSC_", "KOPF_"))}
        env.update(contender.env)
        if contender.kind == "controller-runtime":
            self.cmd = [str(peers["controller-runtime"]), f"--kubeconfig={kubeconfig}",
                        f"--metrics-bind-address=127.0.0.1:{self.metrics_port}",
                        f"--health-probe-bind-address=127.0.0.1:{self.probe_port}", *contender.args]
        else:
            env["KUBECONFIG"] = kubeconfig
            self.cmd = [str(peers["kopf"]), "run", "--standalone", "--all-namespaces",
                        f"--liveness=http://127.0.0.1:{self.probe_port}/readyz", str(PEERS_DIR / "kopf" / "peer.py"),
                        *contender.args]
        with self.log_path.open("ab") as log:
            self.spawned_wall = time.time()
            self.spawned = time.perf_counter()
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=workdir, env=env)

    @property
    def has_metrics(self) -> bool:
        return self.contender.kind != "kopf"

    def log_event_wall(self, event: str) -> float | None:
        """Unix time of the first structlog line ``event`` of this controller (``caches_synced``, say)."""
        for line in self.log_lines():
            if line.get("event") == event:
                return parse_timestamp(line.get("timestamp"))
        return None

    def first_reconcile_wall(self) -> float | None:
        """Unix time of the first reconcile, from the log: this controller's first ``reconciled`` line (needs
        ``--log-level info``), the peers' ``first_reconcile`` line."""
        for line in self.log_lines():
            if self.contender.kind == "msc" and line.get("event") == "reconciled":
                return parse_timestamp(line.get("timestamp"))
            if line.get("msg") == "first_reconcile":
                return float(line["unix"])
        return None

    async def wait_first_reconcile(self, timeout: float) -> float:
        """Seconds from spawning the process to its first reconcile."""
        deadline = time.perf_counter() + timeout
        while (wall := self.first_reconcile_wall()) is None:
            if not self.alive():
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.tail()}")
            if time.perf_counter() > deadline:
                raise BenchError(f"{self.name}: no first reconcile within {timeout:.0f}s: {self.tail()}")
            await anyio.sleep(0.02)
        return wall - self.spawned_wall


# ------------------------------------------------------------------------------------ API server side
_REQUEST_TOTAL = re.compile(r'^apiserver_request_total\{([^}]*)\}\s+([0-9.e+]+)$', re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
# What a contender writes: Services, ModuleDeployments (status, annotations; never created by a contender,
# so the benchmark's own creates are left out) and Events.
_COUNTED = {("services", "*"), ("moduledeployments", "PUT"), ("moduledeployments", "PATCH"),
            ("moduledeployments", "APPLY"), ("moduledeployments", "DELETE"), ("events", "*")}
_WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE"})


def count_writes(metrics_text: str) -> float:
    """Contender writes the API server has served (apiserver_request_total), the same measure for all."""
    total = 0.0
    for labels_text, value in _REQUEST_TOTAL.findall(metrics_text):
        labels = dict(_LABEL.findall(labels_text))
        verb, resource = labels.get("verb", ""), labels.get("resource", "")
        if verb in _WRITE_VERBS and ((resource, "*") in _COUNTED or (resource, verb) in _COUNTED):
            total += float(value)
    return total


async def apiserver_writes(cp: ControlPlane) -> float:
    text = await anyio.to_thread.run_sync(lambda: cp.request("/metrics", timeout=60))
    if not isinstance(text, str):
        raise BenchError("kube-apiserver /metrics did not answer with text")
    return count_writes(text)
