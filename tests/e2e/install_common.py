"""Plumbing for the install tests (kustomize and Helm): pinned kubectl and helm from the repository
root, ServiceAccount tokens, and the controller as a host process started from the INSTALLED
Deployment's own args and env (there is no kubelet here; see the real-node issue), under the installed
ServiceAccount's token."""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.runtime.kube.client import JsonObj
from tests.controlplane import ControlPlane
from tests.harness import poll

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CRDS = Path(__file__).resolve().parent / "data" / "prometheus-operator-crds.yaml"
SYSTEM_NS = "module-service-system"
SA_NAME = "module-service-controller"
SA_USER = f"system:serviceaccount:{SYSTEM_NS}:{SA_NAME}"
# The Lease of the default installs (kustomize, and Helm release module-service-controller): one per
# profile, module-service-controller-<profile>.
LEASE_NAME = "module-service-controller-seed"
MD_CRD = "moduledeployments.koupleless.alipay.com"
MANAGED_SERVICES = "app.kubernetes.io/managed-by=module-service-controller"
# The image's ENTRYPOINT (the installed console script); `python -m controller` if it is not installed.
_SCRIPT = Path(sys.prefix) / "bin" / "module-service-controller"
CONTROLLER_CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "controller"]
KUBECTL_TIMEOUT = 180.0
WAIT = 60.0  # generous: a loaded 2-core machine, and the garbage collector polls


def run_tool(binary: Path, cp: ControlPlane, *args: str, kubeconfig: Path | None = None, input: str | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """kubectl or helm against ``cp``, from the repository root so that paths read exactly like the
    README's (``-k manifests/``). Never raises on a non-zero exit."""
    return subprocess.run(
        [str(binary), f"--kubeconfig={kubeconfig or cp.kubeconfig}", *args],
        cwd=ROOT, input=input, capture_output=True, text=True, check=False, timeout=KUBECTL_TIMEOUT,
        env={**{k: v for k, v in os.environ.items() if k != "KUBECONFIG"}, **(env or {})},
    )


def kubectl(cp: ControlPlane, *args: str, kubeconfig: Path | None = None, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    assert cp.bin_dir is not None
    return run_tool(cp.bin_dir / "kubectl", cp, *args, kubeconfig=kubeconfig, input=input)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_token(cp: ControlPlane, namespace: str, service_account: str) -> str:
    """A bound token for a ServiceAccount from the TokenRequest API."""
    review = cp.request(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", "POST",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    token = review["status"]["token"]
    assert isinstance(token, str)
    assert token
    return token


def token_kubeconfig(cp: ControlPlane, token: str, path: Path) -> Path:
    """A kubeconfig with the admin kubeconfig's server and CA but only ``token`` as credentials."""
    admin = json.loads(cp.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": {
            "server": cluster["server"], "certificate-authority-data": cluster["certificate-authority-data"]}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def create_namespace(cp: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def get_or_none(cp: ControlPlane, path: str) -> Any:
    """GET as admin; None on 404 (the HTTPError is closed: it holds the connection)."""
    try:
        return cp.request(path)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 404:
            raise
    return None


def exists(cp: ControlPlane, path: str) -> bool:
    return get_or_none(cp, path) is not None


def delete(cp: ControlPlane, path: str) -> None:
    try:
        cp.request(path, "DELETE")
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 404:
            raise


def get(cp: ControlPlane, kind: str, namespace: str, name: str) -> JsonObj:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    obj = json.loads(ok(kubectl(cp, *args)))
    assert isinstance(obj, dict)
    return obj


def gone(cp: ControlPlane, kind: str, namespace: str, name: str) -> Callable[[], bool]:
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"] + (["-n", namespace] if namespace else [])
    return lambda: ok(kubectl(cp, *args)).strip() == ""


@contextmanager
def quiet_resources() -> Iterator[None]:
    """ControlPlane.up() drops the HTTPErrors of its not-yet-ready probes unclosed, and down() reaps its
    processes with os.waitpid behind their Popen handles' backs; both surface as ResourceWarnings (errors
    under this suite's filterwarnings) in whichever test runs next. These modules start and stop their
    own control planes mid-session, so they collect them here, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


@contextmanager
def dedicated_controlplane(tmp: Path) -> Iterator[ControlPlane]:
    """A fresh control plane for one install test module: installs create cluster-scoped objects with
    fixed names, and a fresh cluster is the honest starting point for "install on a cluster"."""
    cp = ControlPlane(tmp / "cp")
    with quiet_resources():
        cp.up()
    try:
        yield cp
    finally:
        with quiet_resources():
            cp.down(remove=True)


# ---------------------------------------------------------------------------------------------- controller
@dataclass
class ControllerProcess:
    """The controller as its own process (``module-service-controller``), logging to ``log_path``."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    probe_port: int
    argv: list[str]

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def assert_running(self) -> None:
        code = self.proc.poll()
        assert code is None, f"the controller exited with {code}; log tail:\n{self.log_tail()}"

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM (drain, release the Lease), SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)


@dataclass
class Installed:
    """An install on a dedicated control plane; ``controllers`` are stopped when the module ends."""

    cp: ControlPlane
    tmp: Path
    output: str
    controllers: list[ControllerProcess] = field(default_factory=list)
    namespace: str = SYSTEM_NS


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def host_command(deployment: JsonObj, *, kubeconfig: Path, metrics_port: int, probe_port: int,
                 ) -> tuple[list[str], dict[str, str]]:
    """The command line and environment with which the kubelet would start the Deployment's container,
    as a host process: the same args and env (fieldRef metadata.namespace resolved, $(VAR) expanded as
    Kubernetes does), bind addresses moved to loopback ports, and the given kubeconfig."""
    namespace = deployment["metadata"]["namespace"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), var["value"])
        else:
            field_path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert field_path == "metadata.namespace", f"unsupported env source {var}"
            env[var["name"]] = namespace
    argv = [*CONTROLLER_CMD, f"--kubeconfig={kubeconfig}"]
    for raw in container.get("args", []):
        arg = _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), raw)
        flag, _, value = arg.partition("=")
        if flag == "--metrics-bind-address" and value != "0":
            arg = f"{flag}=127.0.0.1:{metrics_port}"
        elif flag == "--health-probe-bind-address":
            arg = f"{flag}=127.0.0.1:{probe_port}"
        argv.append(arg)
    # A short drain keeps the tests quick; the command line wins over MSC_SHUTDOWN_TIMEOUT.
    argv.append("--shutdown-timeout=5s")
    base = {k: v for k, v in os.environ.items() if not k.startswith("MSC_") and k != "KUBECONFIG"}
    # TMPDIR=/tmp as in the image; a host process may keep its own.
    return argv, {**base, **{k: v for k, v in env.items() if k != "TMPDIR"}}


def start_controller(installed: Installed, deployment: JsonObj, kubeconfig: Path, *,
                     lease_namespace: str = SYSTEM_NS) -> ControllerProcess:
    """Starts the installed Deployment's controller as a host process and waits until it is ready and
    holds the Lease."""
    metrics_port, probe_port = free_port(), free_port()
    argv, env = host_command(deployment, kubeconfig=kubeconfig, metrics_port=metrics_port, probe_port=probe_port)
    log_path = installed.tmp / f"controller-{len(installed.controllers)}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
    process = ControllerProcess(proc, log_path, metrics_port, probe_port, argv)
    installed.controllers.append(process)

    def ready() -> bool:
        process.assert_running()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{probe_port}/readyz", timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError as exc:  # 500 while the caches sync
            exc.close()
            return False
        except (urllib.error.URLError, OSError):
            return False

    poll(ready, timeout=WAIT, what="the controller's /readyz")
    if "--leader-elect" in argv:
        lease_name = lease_of(argv)

        def leading() -> str:
            process.assert_running()
            lease = get_or_none(installed.cp,
                                f"/apis/coordination.k8s.io/v1/namespaces/{lease_namespace}/leases/{lease_name}")
            return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

        poll(leading, timeout=WAIT, what=f"the controller to hold Lease {lease_namespace}/{lease_name}")
    return process


def lease_of(argv: list[str]) -> str:
    """The Lease a controller command line elects with: the installs pass --leader-elect-name."""
    names = [a.partition("=")[2] for a in argv if a.startswith("--leader-elect-name=")]
    assert len(names) == 1, f"the installs name the Lease: {argv}"
    return names[0]


def sa_kubeconfig(installed: Installed, namespace: str = SYSTEM_NS, name: str = SA_NAME) -> Path:
    """A kubeconfig that carries only a TokenRequest token of the installed ServiceAccount."""
    token = request_token(installed.cp, namespace, name)
    return token_kubeconfig(installed.cp, token, installed.tmp / f"{namespace}-{name}.kubeconfig")
