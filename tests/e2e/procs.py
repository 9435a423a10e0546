"""End-to-end harness: the controller as real OS processes (the installed ``module-service-controller``
entry point), each with its own free metrics and probe ports and its JSON log in a file.

Use :func:`controller_processes` *inside* the test body (``async with``): every process it started is
SIGKILLed and reaped when the block exits, whatever happened, and the tail of every log is printed when
the block exits with an error. Processes are also started with ``PR_SET_PDEATHSIG`` so that a killed
pytest does not leave controllers behind.

Waits poll a condition with a deadline (:func:`tests.harness.wait_for`); nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import yaml
from anyio.abc import Listener, SocketAttribute, SocketStream, TaskGroup
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from controller.runtime.kube.client import JsonObj
from controller.runtime.kube.errors import NotFound
from controller.runtime.kube.resources import LEASES
from controller.runtime.leaselock import DEFAULT_LOCK_NAME, JITTER_FACTOR
from tests.harness import Api, wait_for

__all__ = [
    "BINARY",
    "JITTER_FACTOR",
    "LEASE_NAME",
    "SHORT_LEASE",
    "ControllerGroup",
    "ControllerProcess",
    "FreezableProxy",
    "LeaseSettings",
    "Metrics",
    "controller_processes",
    "create_service_account",
    "free_port",
    "freezable_proxy",
    "request_token",
    "unique",
    "write_kubeconfig",
]

BINARY = Path(sys.prefix) / "bin" / "module-service-controller"
LEASE_NAME = DEFAULT_LOCK_NAME  # --leader-elect-name's default


@dataclass(frozen=True)
class LeaseSettings:
    lease_duration: float
    renew_deadline: float
    retry_period: float

    def args(self) -> list[str]:
        return ["--leader-elect-lease-duration", f"{self.lease_duration:g}s",
                "--leader-elect-renew-deadline", f"{self.renew_deadline:g}s",
                "--leader-elect-retry-period", f"{self.retry_period:g}s"]


SHORT_LEASE = LeaseSettings(lease_duration=4.0, renew_deadline=3.0, retry_period=1.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Runs first in the child and execs the controller: PR_SET_PDEATHSIG (1) makes the kernel SIGKILL it when
# the test process dies (it survives exec), so a killed pytest leaves no controller behind. A shim
# rather than preexec_fn, which is unsafe once the test process has threads.
EXEC_WITH_PDEATHSIG = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the parent died before prctl\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


# ---------------------------------------------------------------------------------------------------- metrics


class Metrics:
    """One scrape, parsed by prometheus_client's text parser; queries by sample name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[Sample] = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    def names(self) -> set[str]:
        return {s.name for s in self.samples}

    def series(self, metric: str, /, **labels: str) -> list[Sample]:
        return [s for s in self.samples
                if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, metric: str, /, **labels: str) -> float | None:
        """The sum over every series of ``metric`` whose labels include ``labels``; None if there is none."""
        found = self.series(metric, **labels)
        return sum(s.value for s in found) if found else None

    def label_values(self) -> set[str]:
        return {v for s in self.samples for v in s.labels.values()}


# ---------------------------------------------------------------------------------------------------- processes


class ControllerProcess:
    """One controller process. ``name`` is ours (c1, c2, ...); the controller's own identity (hostname_uuid)
    is only known once it logs ``lease_acquired``."""

    def __init__(self, name: str, argv: list[str], log_path: Path, metrics_port: int, probe_port: int, *,
                 secure_metrics: bool, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.metrics_port = metrics_port
        self.probe_port = probe_port
        self.secure_metrics = secure_metrics
        with log_path.open("ab") as log:
            # stdout (JSON lines) and stderr (one-line fatal errors) share the file.
            self.popen = subprocess.Popen(
                [sys.executable, "-c", EXEC_WITH_PDEATHSIG, str(os.getpid()), *argv],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )
        self.started_at = time.monotonic()

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.pid} rc={self.returncode}>"

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def metrics_url(self) -> str:
        return f"{'https' if self.secure_metrics else 'http'}://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def probe_url(self) -> str:
        return f"http://127.0.0.1:{self.probe_port}"

    # ------------------------------------------------------------------ log
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def records(self) -> list[JsonObj]:
        """Every JSON log record so far (a partial last line and non-JSON lines are skipped)."""
        out: list[JsonObj] = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    def events(self, event: str) -> list[JsonObj]:
        return [r for r in self.records() if r.get("event") == event]

    @property
    def identity(self) -> str | None:
        """The identity this process acquired the Lease with (its last ``lease_acquired``), if any."""
        acquired = self.events("lease_acquired")
        return str(acquired[-1]["identity"]) if acquired else None

    def reconciled_keys(self, action: str) -> set[str]:
        """Keys of reconciles whose logged actions include ``action`` (e.g. ``service_created``)."""
        return {str(r["key"]) for r in self.events("reconciled") if action in (r.get("actions") or [])}

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ signals
    def send(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def kill(self) -> None:
        self.send(signal.SIGKILL)

    async def wait_exit(self, timeout: float) -> int:
        """The exit code; fails if the process is still running after ``timeout`` seconds."""
        async def exited() -> bool:
            return self.popen.poll() is not None

        await wait_for(exited, timeout=timeout, what=f"{self.name} to exit", interval=0.02)
        rc = self.popen.returncode
        assert rc is not None
        return rc


class ControllerGroup:
    """The controller processes of one test, plus HTTP helpers for their probes and metrics."""

    def __init__(self, kubeconfig: str, namespace: str, workdir: Path, session: aiohttp.ClientSession, *,
                 leader_elect: bool, args: Sequence[str]) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.workdir = workdir
        self.session = session
        self.leader_elect = leader_elect
        self.args = list(args)
        self.processes: list[ControllerProcess] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self, *extra: str, kubeconfig: str | None = None, secure_metrics: bool = False) -> ControllerProcess:
        """Starts one process (returns at once; see :meth:`wait_ready`)."""
        name = f"c{len(self.processes) + 1}"
        metrics_port, probe_port = free_port(), free_port()
        argv = [str(BINARY), "--kubeconfig", kubeconfig or self.kubeconfig, "--namespace", self.namespace,
                "--metrics-bind-address", f"127.0.0.1:{metrics_port}",
                "--health-probe-bind-address", f"127.0.0.1:{probe_port}", "--log-format", "json"]
        if self.leader_elect:
            argv += ["--leader-elect", "--leader-elect-namespace", self.namespace]
        if secure_metrics:
            argv.append("--metrics-secure")
        argv += [*self.args, *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSC_")}  # flags only, no stray env
        env["PYTHONUNBUFFERED"] = "1"
        proc = ControllerProcess(name, argv, self.workdir / f"{name}.log", metrics_port, probe_port,
                                 secure_metrics=secure_metrics, env=env)
        self.processes.append(proc)
        return proc

    async def start_ready(self, *extra: str, timeout: float = 60.0, **kwargs: Any) -> ControllerProcess:
        """Starts a process and waits for ``/readyz`` 200. A port another program grabbed between our
        probe and the bind (the machine is shared) makes the process exit at once: retried with new ports."""
        for _ in range(3):
            proc = self.start(*extra, **kwargs)
            try:
                await self.wait_ready(proc, timeout=timeout)
            except AssertionError:
                if proc.alive or "address already in use" not in proc.log_text().lower():
                    raise
                continue
            return proc
        raise AssertionError("could not start a controller on free ports")

    async def start_many(self, n: int, *extra: str, timeout: float = 60.0) -> list[ControllerProcess]:
        procs = [self.start(*extra) for _ in range(n)]
        for proc in procs:
            await self.wait_ready(proc, timeout=timeout)
        return procs

    @property
    def alive(self) -> list[ControllerProcess]:
        return [p for p in self.processes if p.alive]

    async def close(self) -> None:
        for proc in self.processes:
            proc.kill()
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=10)

    # ------------------------------------------------------------------ HTTP
    async def get(self, url: str, *, token: str | None = None, timeout: float = 5.0) -> tuple[int, str] | None:
        """(status, body), or None when nothing answers (not listening yet, or gone)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            async with self.session.get(url, headers=headers, ssl=False,
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def probe(self, proc: ControllerProcess, path: str) -> tuple[int, str] | None:
        return await self.get(proc.probe_url + path)

    async def wait_ready(self, proc: ControllerProcess, timeout: float = 60.0) -> None:
        async def ready() -> bool:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited with {proc.returncode} before ready:\n{proc.tail()}")
            got = await self.probe(proc, "/readyz")
            return got is not None and got[0] == 200

        try:
            await wait_for(ready, timeout=timeout, what=f"{proc.name} /readyz 200", interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{proc.name} log tail:\n{proc.tail()}") from None

    async def scrape(self, proc: ControllerProcess, *, token: str | None = None) -> Metrics:
        got = await self.get(proc.metrics_url, token=token)
        assert got is not None, f"{proc.name}: /metrics did not answer"
        status, text = got
        assert status == 200, f"{proc.name}: /metrics answered {status}: {text[:200]}"
        return Metrics(text)

    async def master_status(self, proc: ControllerProcess) -> float | None:
        """``leader_election_master_status{name=<lease>}`` on ``proc``; None if it does not answer."""
        got = await self.get(proc.metrics_url)
        if got is None or got[0] != 200:
            return None
        return Metrics(got[1]).value("leader_election_master_status", name=LEASE_NAME)

    # ------------------------------------------------------------------ leadership
    async def lease(self, api: Api) -> JsonObj | None:
        try:
            return await api.client.request("GET", LEASES.path(self.namespace, LEASE_NAME))
        except NotFound:
            return None

    async def lease_holder(self, api: Api) -> str | None:
        lease = await self.lease(api)
        return None if lease is None else str((lease.get("spec") or {}).get("holderIdentity") or "")

    async def leader(self, api: Api, *, timeout: float = 30.0,
                     exclude: Iterable[ControllerProcess] = ()) -> ControllerProcess:
        """The live process the Lease names (matched by the identity it logged at ``lease_acquired``)."""
        excluded = {id(p) for p in exclude}

        async def find() -> ControllerProcess | None:
            holder = await self.lease_holder(api)
            if not holder:
                return None
            named = [p for p in self.alive if p.identity == holder and id(p) not in excluded]
            return named[0] if len(named) == 1 else None

        return await wait_for(find, timeout=timeout, what="a live process to hold the Lease", interval=0.02)


@asynccontextmanager
async def controller_processes(kubeconfig: str, namespace: str, workdir: Path, *, leader_elect: bool = True,
                               args: Sequence[str] = ()) -> AsyncIterator[ControllerGroup]:
    """Yields a :class:`ControllerGroup`; kills every process it started on exit (also on failure or
    cancellation) and prints their log tails when the block raised."""
    workdir.mkdir(parents=True, exist_ok=True)
    group: ControllerGroup | None = None
    try:
        async with aiohttp.ClientSession() as session:
            group = ControllerGroup(kubeconfig, namespace, workdir, session, leader_elect=leader_elect, args=args)
            yield group
    except BaseException:
        if group is not None:
            for proc in group.processes:
                print(f"----- {proc.name} (pid {proc.pid}, rc {proc.returncode}) {proc.log_path}\n{proc.tail()}")
        raise
    finally:
        if group is not None:
            with anyio.CancelScope(shield=True):
                await group.close()


# ---------------------------------------------------------------------------------------------------- credentials


async def create_service_account(api: Api, namespace: str, name: str) -> None:
    await api.client.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts", body={
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})


async def request_token(api: Api, namespace: str, name: str, *, seconds: int = 3600) -> str:
    """A bound token for a ServiceAccount, from the TokenRequest API."""
    review = await api.client.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": seconds}},
    )
    token = (review.get("status") or {}).get("token")
    assert isinstance(token, str), review
    assert token, review
    return token


def write_kubeconfig(source: str | Path, dest: Path, *, server: str | None = None, token: str | None = None) -> str:
    """A copy of ``source`` (its current context's cluster and CA) with another ``server`` and/or a bearer
    ``token`` instead of the original user. Returns the path as a string."""
    cfg = yaml.safe_load(Path(source).read_text())
    ctx_name = cfg["current-context"]
    ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
    cluster = dict(next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"]))
    user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
    if server is not None:
        cluster["server"] = server
    if token is not None:
        user = {"token": token}
    out = {
        "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
        "clusters": [{"name": "e2e", "cluster": cluster}],
        "users": [{"name": "e2e", "user": user}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "e2e"}}],
    }
    dest.write_text(json.dumps(out, indent=2))
    dest.chmod(0o600)
    return str(dest)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------------------------------------------- proxy


class FreezableProxy:
    """A TCP pass-through to the API server that can be frozen: connections stay open but no byte moves
    in either direction (a half-open stream, as after a silent network partition), until :meth:`thaw`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._open = anyio.Event()
        self._open.set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def frozen(self) -> bool:
        return not self._open.is_set()

    def freeze(self) -> None:
        if not self.frozen:
            self._open = anyio.Event()

    def thaw(self) -> None:
        self._open.set()

    async def _pump(self, src: SocketStream, dst: SocketStream) -> None:
        try:
            while True:
                data = await src.receive()
                while not self._open.is_set():
                    await self._open.wait()
                await dst.send(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                await dst.send_eof()

    async def _handle(self, client: SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp(*self.upstream)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pump, client, upstream)
                tg.start_soon(self._pump, upstream, client)

    async def serve(self, listener: Listener[SocketStream], tg: TaskGroup) -> None:
        self.port = int(listener.extra(SocketAttribute.local_port))
        tg.start_soon(listener.serve, self._handle)


@asynccontextmanager
async def freezable_proxy(upstream: str) -> AsyncIterator[FreezableProxy]:
    """``upstream`` is the API server URL (``https://127.0.0.1:PORT``); use inside the test body."""
    hostport = upstream.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    proxy = FreezableProxy(host, int(port))
    async with await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0) as listener, \
            anyio.create_task_group() as tg:
        await proxy.serve(listener, tg)
        try:
            yield proxy
        finally:
            proxy.thaw()
            tg.cancel_scope.cancel()
