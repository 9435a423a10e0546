"""A real local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager on loopback.

By default no kubelet and no scheduler: tests create Pods and set their status themselves. The node tier
(tests/node) starts one with ``netns`` (every component runs inside that network namespace; loopback
forwarders let this machine's clients reach etcd and the API server on the same ports) and
``workloads`` (ServiceAccount admission, the root-CA publisher and the workload controllers a kubelet's
Pods need). Every process runs in
its own session so ``up`` can return while they keep running; ``state.json`` in the directory records
their pids so ``down`` (or the next ``up`` after a killed run) can stop them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .certs import issue_client_cert, write_pki

__all__ = ["ControlPlane", "ensure_binaries", "kubernetes_selection", "kubernetes_version"]

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent.parent
DEFAULT_CACHE = Path(os.environ.get("MSC_CACHE_DIR", Path.home() / ".cache" / "module-service-controller"))
SERVICE_CIDR = "10.0.0.0/16"
# Stop order: dependants first, so nothing logs storms of connection errors while we stop.
_ORDER = ("forward", "etcd", "kube-apiserver", "kube-controller-manager")
# What the node tier adds to kube-controller-manager: Deployments, the PDB's disruption budget, the
# kube-root-ca.crt ConfigMap in every namespace (projected into Pods' token volumes), Pod GC, and the
# node lifecycle (it lifts the not-ready taint a kubelet registers with).
_WORKLOAD_CONTROLLERS = (
    "deployment-controller,replicaset-controller,disruption-controller,"
    "root-ca-certificate-publisher-controller,pod-garbage-collector-controller,node-lifecycle-controller"
)


# Which pinned Kubernetes (versions.env) the control plane runs: the newest by default; "oldest" is the
# oldest minor the chart supports, which `make test` runs the tests marked `core` against.
KUBERNETES_SELECTIONS = ("newest", "oldest")
_VERSION_KEYS = {"newest": "KUBERNETES_VERSION", "oldest": "KUBERNETES_VERSION_OLDEST"}


def kubernetes_selection(selection: str | None = None) -> str:
    """``selection`` if given, else ``MSC_KUBERNETES`` (default ``newest``); rejects anything else, so a
    typo cannot quietly test the newest version instead."""
    value = selection or os.environ.get("MSC_KUBERNETES") or "newest"
    if value not in KUBERNETES_SELECTIONS:
        raise ValueError(f"unknown Kubernetes selection {value!r}: one of {', '.join(KUBERNETES_SELECTIONS)}")
    return value


def pinned_versions() -> dict[str, str]:
    """The assignments of versions.env (the file build.sh sources)."""
    out: dict[str, str] = {}
    for line in (_HERE / "versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def kubernetes_version(selection: str | None = None) -> str:
    """The pinned Kubernetes version (e.g. ``v1.36.3``) of a selection (default: ``MSC_KUBERNETES``)."""
    return pinned_versions()[_VERSION_KEYS[kubernetes_selection(selection)]]


def ensure_binaries(cache: Path = DEFAULT_CACHE, *, version: str | None = None) -> Path:
    """Builds (once) and returns the directory holding etcd, kube-apiserver, kube-controller-manager and
    kubectl of the selected Kubernetes (``version``: "newest" or "oldest"; default ``MSC_KUBERNETES``,
    else the newest). A cold build takes a while; later calls return at once."""
    out = subprocess.run(
        ["bash", str(_HERE / "build.sh"), str(cache / "controlplane"), kubernetes_selection(version)],
        check=True, stdout=subprocess.PIPE, text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap our own children so they do not linger as zombies
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _owned_by(pid: int, directory: Path) -> bool:
    """True if ``pid`` is a process we started for ``directory`` (guards against recycled pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return str(directory) in cmdline


# Popen handles of the components we started, kept until they are stopped and polled then: a handle
# collected without a recorded exit status raises ResourceWarning (an error under the suite's
# filterwarnings).
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def kill_process(pid: int, directory: Path, timeout: float = 15.0) -> None:
    try:
        _kill_and_wait(pid, directory, timeout)
    finally:
        child = CHILDREN.pop(pid, None)
        if child is not None:
            # wait, not poll: a multi-threaded process shows "Z" (so _alive says dead) a little before
            # the kernel lets it be reaped.
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


def _kill_and_wait(pid: int, directory: Path, timeout: float) -> None:
    if not (_alive(pid) and _owned_by(pid, directory)):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


# Writes to Services, at the Metadata level (who, what, when, the answer's code): small, and enough to
# count who wrote which Service. Everything else is not audited.
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "resources": [{"group": "", "resources": ["services"]}],
         "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


@dataclass
class ControlPlane:
    directory: Path
    bin_dir: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    netns: str | None = None  # name of a network namespace (ip netns) to run every component in
    advertise_address: str = "127.0.0.1"  # with netns: the node's address, which Pods reach
    workloads: bool = False  # ServiceAccount admission + the controllers Pods on a kubelet need
    extra_apiserver_args: list[str] = field(default_factory=list)  # appended to kube-apiserver's flags

    # ---------------------------------------------------------------- paths
    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['etcd']}"

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON line per write to a Service (see _AUDIT_POLICY), with the
        user who made it. Tests count writes from here, not from the writer's own bookkeeping."""
        return self.directory / "logs" / "audit.log"

    def user_kubeconfig(self, user: str, groups: tuple[str, ...] = ("system:masters",)) -> Path:
        """A kubeconfig that authenticates as ``user`` (a client certificate from the control plane's CA)."""
        cert, key = issue_client_cert(self.directory / "pki", user, groups)
        path = self.directory / "users" / f"{user.replace(':', '_')}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": user, "user": {
            "client-certificate-data": base64.b64encode(cert).decode(),
            "client-key-data": base64.b64encode(key).decode()}}]
        config["contexts"][0]["context"]["user"] = user
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def _state_file(self) -> Path:
        return self.directory / "state.json"

    def _pki(self, name: str) -> Path:
        return self.directory / "pki" / name

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        assert self.bin_dir is not None
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=False, timeout=120,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    # ---------------------------------------------------------------- lifecycle
    @classmethod
    def load(cls, directory: Path) -> ControlPlane:
        directory = directory.resolve()
        state = json.loads((directory / "state.json").read_text())
        return cls(
            directory, Path(state["bin_dir"]), state["ports"], state["pids"], state.get("netns"),
            state.get("advertise_address", "127.0.0.1"), state.get("workloads", False),
        )

    def up(self, timeout: float = 180.0) -> None:
        """Starts everything, waits until it serves, writes the kubeconfig. Cleans up a leftover state
        directory from a killed run first."""
        self.directory = self.directory.resolve()
        if self._state_file().exists():
            with contextlib.suppress(Exception):
                ControlPlane.load(self.directory).down(remove=False)
        if self.directory.exists():
            for child in ("etcd", "pki", "logs", "state.json", "kubeconfig"):
                path = self.directory / child
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "logs").mkdir()
        if self.bin_dir is None:
            self.bin_dir = ensure_binaries()
        write_pki(self.directory / "pki", extra_ips=[self.advertise_address])
        (self.directory / "pki" / "audit-policy.json").write_text(json.dumps(_AUDIT_POLICY))
        self.ports = {
            "etcd": _free_port(), "etcd_peer": _free_port(), "apiserver": _free_port(),
        }
        self._write_kubeconfig()
        try:
            if self.netns:
                self.start("forward")
            self.start("etcd")
            self._wait_http(f"{self.etcd_url}/health", timeout)
            self.start("kube-apiserver")
            self.wait_ready(timeout)
            self.start("kube-controller-manager")
            self._wait_default_serviceaccount(timeout)
        except BaseException:
            self.down(remove=False)
            raise

    def down(self, *, remove: bool = False) -> None:
        for name in [*reversed(_ORDER), *self.pids]:
            pid = self.pids.pop(name, None)
            if pid:
                kill_process(pid, self.directory)
        self._save()
        if remove:
            shutil.rmtree(self.directory, ignore_errors=True)

    def start(self, name: str) -> None:
        """Starts one component (also used by fault tests to restart the API server)."""
        assert self.bin_dir is not None
        if name == "forward":
            assert self.netns
            ports = (self.ports["etcd"], self.ports["apiserver"])
            command = [sys.executable, "-m", "tests.controlplane.forward", f"/var/run/netns/{self.netns}",
                       str(self.directory), *(f"127.0.0.1:{p}=127.0.0.1:{p}" for p in ports)]
        else:
            args = {"etcd": self._etcd_args, "kube-apiserver": self._apiserver_args,
                    "kube-controller-manager": self._kcm_args}[name]()
            command = [*self.netns_prefix(), str(self.bin_dir / name), *args]
        log = (self.directory / "logs" / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.directory,
            env={**os.environ, "PYTHONPATH": str(_ROOT)} if name == "forward" else None,
        )
        log.close()
        CHILDREN[proc.pid] = proc
        self.pids[name] = proc.pid
        self._save()

    def netns_prefix(self) -> list[str]:
        """Runs a command in the control plane's network namespace (only that: nsenter keeps the mount
        namespace, whereas ``ip netns exec`` remounts /sys and would hide the cgroup hierarchies)."""
        return ["nsenter", f"--net=/var/run/netns/{self.netns}"] if self.netns else []

    def stop(self, name: str, *, sig: int = signal.SIGTERM) -> None:
        pid = self.pids.pop(name, None)
        if pid is None:
            return
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        kill_process(pid, self.directory)
        self._save()

    def running(self) -> dict[str, bool]:
        return {name: _alive(pid) for name, pid in self.pids.items()}

    # ---------------------------------------------------------------- readiness
    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self._pki("ca.crt")))
        ctx.load_cert_chain(str(self._pki("admin.crt")), str(self._pki("admin.key")))
        return ctx

    def request(self, path: str, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
            raw = resp.read()
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            self._check_started("kube-apiserver")
            try:
                if self.request("/readyz") == "ok":
                    return
            except urllib.error.HTTPError as exc:
                # A starting apiserver answers 500; the error holds the open response (a socket that
                # would raise ResourceWarning when collected): close it.
                exc.close()
                last = exc
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        raise TimeoutError(f"kube-apiserver not ready after {timeout}s: {last}")

    def _wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_started("etcd")
            with contextlib.suppress(urllib.error.URLError, OSError), urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{url} not healthy after {timeout}s")

    def _wait_default_serviceaccount(self, timeout: float) -> None:
        """The serviceaccount controller creating ``default/default`` proves the controller-manager runs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_started("kube-controller-manager")
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.request("/api/v1/namespaces/default/serviceaccounts/default")
                return
            time.sleep(0.2)
        raise TimeoutError("kube-controller-manager did not create the default ServiceAccount")

    def _check_started(self, name: str) -> None:
        pid = self.pids.get(name)
        if pid is None or not _alive(pid):
            log = (self.directory / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited during start-up; last log lines:\n{log}")

    # ---------------------------------------------------------------- config
    def _save(self) -> None:
        if not self.directory.exists():
            return
        self._state_file().write_text(json.dumps(
            {"bin_dir": str(self.bin_dir), "ports": self.ports, "pids": self.pids, "netns": self.netns,
             "advertise_address": self.advertise_address, "workloads": self.workloads}, indent=2
        ))

    def _write_kubeconfig(self) -> None:
        def b64(name: str) -> str:
            return base64.b64encode(self._pki(name).read_bytes()).decode()

        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "local",
            "clusters": [{"name": "local", "cluster": {
                "server": self.server, "certificate-authority-data": b64("ca.crt")}}],
            "users": [{"name": "admin", "user": {
                "client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")}}],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
        }
        # JSON is valid YAML; kubectl and kubernetes-asyncio both read it.
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _etcd_args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.ports['etcd_peer']}"
        return [
            "--name=local", f"--data-dir={self.directory / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}", "--unsafe-no-fsync", "--log-level=error",
            "--quota-backend-bytes=8589934592",
        ]

    def _apiserver_args(self) -> list[str]:
        pki = self.directory / "pki"
        if self.workloads:
            # Pods get their token volume from the ServiceAccount admission plugin; the API server
            # listens on every address of its own network namespace so that Pods reach it through
            # the kubernetes Service, and reaches the kubelet (logs, exec) with the admin identity.
            admission = ["--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                         f"--kubelet-client-certificate={pki / 'admin.crt'}",
                         f"--kubelet-client-key={pki / 'admin.key'}",
                         "--kubelet-preferred-address-types=InternalIP"]
            bind = "0.0.0.0"
        else:
            # Pods are created by tests in fresh namespaces; the ServiceAccount admission plugin would
            # race the serviceaccount controller. OwnerReferencesPermissionEnforcement is on so the
            # RBAC for blockOwnerDeletion (moduledeployments/finalizers) is really exercised.
            admission = ["--disable-admission-plugins=ServiceAccount",
                         "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]
            bind = "127.0.0.1"
        return [
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={bind}", f"--advertise-address={self.advertise_address}",
            f"--secure-port={self.ports['apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            *admission,
            f"--audit-policy-file={pki / 'audit-policy.json'}", f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json", "--audit-log-maxbackup=1", "--audit-log-maxsize=200",
            "--allow-privileged=true", "--profiling=false", "--event-ttl=30m",
            "--v=0", *self.extra_apiserver_args,
        ]

    def _kcm_args(self) -> list[str]:
        pki = self.directory / "pki"
        return [
            f"--kubeconfig={self.kubeconfig}",
            "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,"
            "endpointslice-controller" + (f",{_WORKLOAD_CONTROLLERS}" if self.workloads else ""),
            "--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=0",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cert-dir={pki}",
            "--concurrent-gc-syncs=20", "--v=0",
        ]
