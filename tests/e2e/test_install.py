"""Issue 5 on a real control plane: install with ``kubectl apply -k manifests/ --server-side``, run the
controller as a process with the installed ServiceAccount's identity, check the RBAC with
``kubectl auth can-i``, scrape the live ``/metrics`` for every name the dashboard and the alerts use, and
uninstall with ``kubectl delete -k manifests/``.

Everything here runs on a DEDICATED control plane (module-scoped, about 4 s to start), not the shared
session one: the install creates cluster-scoped objects with fixed names (the ClusterRoles, the
namespace ``module-service-system``, the Prometheus Operator CRDs) and the uninstall deletes the
ModuleDeployment CRD, which every other test module needs (tests/e2e/conftest.py's control plane is
shared by the other e2e modules, so it is no place for that either). A fresh cluster is also the honest
starting point for "install on a cluster": nothing there was applied by anyone else.

The tests run in file order: install (fixture), then the scenarios, the RBAC table and the scrape under
the installed identity, then the uninstall last. Run with ``-s`` to see the apply output and the can-i
table.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.runtime.kube.client import JsonObj
from tests.controlplane import ControlPlane
from tests.harness import (
    SEED_MD,
    Api,
    api_client,
    module_deployment,
    node_port,
    ready_condition,
    service_problems,
    wait_for,
)

# The dashboard/alert expressions are read exactly as the static checks read them.
from tests.unit.test_observability import (
    ALERTS,
    DASHBOARD,
    PROMETHEUS_OWN,
    _exprs,
    _rules,
    _var_query,
    _variables,
    metric_names,
)

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CRDS = Path(__file__).resolve().parent / "data" / "prometheus-operator-crds.yaml"
SYSTEM_NS = "module-service-system"
SA_NAME = "module-service-controller"
SA_USER = f"system:serviceaccount:{SYSTEM_NS}:{SA_NAME}"
LEASE_NAME = "module-service-controller"  # the default --leader-elect-name, which the alerts pin
MD_CRD = "moduledeployments.koupleless.alipay.com"
# The image's ENTRYPOINT (the installed console script); `python -m controller` if it is not installed.
_SCRIPT = Path(sys.prefix) / "bin" / "module-service-controller"
CONTROLLER_CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "controller"]
KUBECTL_TIMEOUT = 180.0
WAIT = 60.0  # generous: a loaded 2-core machine, and the garbage collector polls


# ---------------------------------------------------------------------------------------------- plumbing
def _kubectl(cp: ControlPlane, *args: str, kubeconfig: Path | None = None, input: str | None = None,
             ) -> subprocess.CompletedProcess[str]:
    """kubectl from the control plane's pinned binaries, run from the repository root so that paths read
    exactly like the README's (``-k manifests/``). Never raises on a non-zero exit."""
    assert cp.bin_dir is not None
    return subprocess.run(
        [str(cp.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or cp.kubeconfig}", *args],
        cwd=ROOT, input=input, capture_output=True, text=True, check=False, timeout=KUBECTL_TIMEOUT,
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _poll(fn: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Synchronous wait_for for fixtures and plain tests: polls until ``fn`` returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request_token(cp: ControlPlane, namespace: str, service_account: str) -> str:
    """A bound token for a ServiceAccount from the TokenRequest API."""
    review = cp.request(
        f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token", "POST",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}},
    )
    token = review["status"]["token"]
    assert isinstance(token, str)
    assert token
    return token


def _token_kubeconfig(cp: ControlPlane, token: str, path: Path) -> Path:
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


def _create_namespace(cp: ControlPlane, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cp.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def _get_or_none(cp: ControlPlane, path: str) -> Any:
    """GET as admin; None on 404 (the HTTPError is closed: it holds the connection)."""
    try:
        return cp.request(path)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 404:
            raise
    return None


def _exists(cp: ControlPlane, path: str) -> bool:
    return _get_or_none(cp, path) is not None


def _delete(cp: ControlPlane, path: str) -> None:
    try:
        cp.request(path, "DELETE")
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code != 404:
            raise


# ---------------------------------------------------------------------------------------------- fixtures
@dataclass
class ControllerProcess:
    """The controller as its own process (``module-service-controller``), logging to ``log_path``."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int
    probe_port: int

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


@contextmanager
def _quiet_resources() -> Iterator[None]:
    """ControlPlane.up() drops the HTTPErrors of its not-yet-ready probes unclosed, and down() reaps its
    processes with os.waitpid behind their Popen handles' backs; both surface as ResourceWarnings (errors
    under this suite's filterwarnings) in whichever test runs next. This module starts and stops its own
    control plane mid-session, so it collects them here, silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            yield
        finally:
            gc.collect()


@dataclass
class Installed:
    cp: ControlPlane
    tmp: Path
    apply_output: str
    controllers: list[ControllerProcess] = field(default_factory=list)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """A dedicated control plane with the Prometheus Operator CRDs (a stand-in, from tests/e2e/data)
    and ``kubectl apply -k manifests/ --server-side`` done, exactly as the README says."""
    tmp = tmp_path_factory.mktemp("install")
    cp = ControlPlane(tmp / "cp")
    with _quiet_resources():
        cp.up()
    controllers: list[ControllerProcess] = []
    try:
        _ok(_kubectl(cp, "apply", "--server-side", "-f", str(PROMETHEUS_CRDS)))
        _ok(_kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
                     "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"))
        # No --force-conflicts: on a fresh cluster there is no other field manager to conflict with (and
        # on the shared test cluster the CRD was applied by the same "kubectl" field manager, so a
        # server-side apply of it does not conflict either: checked with --dry-run=server).
        proc = _kubectl(cp, "apply", "-k", "manifests/", "--server-side")
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output
        yield Installed(cp, tmp, output, controllers)
    finally:
        for process in controllers:
            process.stop()
        with _quiet_resources():
            cp.down(remove=True)


@pytest.fixture(scope="module")
def sa_kubeconfig(installed: Installed) -> Path:
    """A kubeconfig that carries only a TokenRequest token of the installed ServiceAccount."""
    token = _request_token(installed.cp, SYSTEM_NS, SA_NAME)
    return _token_kubeconfig(installed.cp, token, installed.tmp / "controller.kubeconfig")


@pytest.fixture(scope="module")
def controller(installed: Installed, sa_kubeconfig: Path) -> ControllerProcess:
    """The controller as the Deployment runs it (every namespace, leader election in its own namespace,
    secure metrics) but on loopback ports, with the ServiceAccount's token. Stopped by ``installed``."""
    metrics_port, probe_port = _free_port(), _free_port()
    log_path = installed.tmp / "controller.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*CONTROLLER_CMD, f"--kubeconfig={sa_kubeconfig}",
             "--leader-elect", f"--leader-elect-namespace={SYSTEM_NS}",
             "--metrics-secure", f"--metrics-bind-address=127.0.0.1:{metrics_port}",
             f"--health-probe-bind-address=127.0.0.1:{probe_port}", "--shutdown-timeout=5s"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("MSC_") and k != "KUBECONFIG"},
        )
    process = ControllerProcess(proc, log_path, metrics_port, probe_port)
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

    _poll(ready, timeout=WAIT, what="the controller's /readyz")

    def leading() -> str:
        process.assert_running()
        lease = _get_or_none(installed.cp, f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases/{LEASE_NAME}")
        return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")

    _poll(leading, timeout=WAIT, what=f"the controller to hold Lease {SYSTEM_NS}/{LEASE_NAME}")
    return process


@pytest.fixture
def test_ns(installed: Installed) -> Iterator[str]:
    name = _create_namespace(installed.cp, "e2e-install")
    yield name
    _delete(installed.cp, f"/api/v1/namespaces/{name}")


# ---------------------------------------------------------------------------------------------- 1. install
# (kind, namespace or "", name) of everything manifests/ installs.
EXPECTED_OBJECTS = [
    ("namespace", "", SYSTEM_NS),
    ("customresourcedefinition", "", MD_CRD),
    ("serviceaccount", SYSTEM_NS, SA_NAME),
    ("clusterrole", "", "module-service-controller"),
    ("clusterrolebinding", "", "module-service-controller"),
    ("clusterrole", "", "module-service-controller-metrics-reader"),
    ("role", SYSTEM_NS, "module-service-controller-leader-election"),
    ("rolebinding", SYSTEM_NS, "module-service-controller-leader-election"),
    ("deployment.apps", SYSTEM_NS, "module-service-controller"),
    ("poddisruptionbudget.policy", SYSTEM_NS, "module-service-controller"),
    ("service", SYSTEM_NS, "module-service-controller-metrics"),
    ("servicemonitor.monitoring.coreos.com", SYSTEM_NS, "module-service-controller"),
    ("prometheusrule.monitoring.coreos.com", SYSTEM_NS, "module-service-controller"),
]


def _get(cp: ControlPlane, kind: str, namespace: str, name: str) -> JsonObj:
    args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
    obj = json.loads(_ok(_kubectl(cp, *args)))
    assert isinstance(obj, dict)
    return obj


def test_apply_k_installs_everything(installed: Installed) -> None:
    cp = installed.cp
    print(f"\n$ kubectl apply -k manifests/ --server-side\n{installed.apply_output}")
    rendered = [d for d in yaml.safe_load_all(_ok(_kubectl(cp, "kustomize", "manifests/"))) if d]
    # Every rendered object was applied, and applied without warnings (e.g. PodSecurity "restricted").
    lines = [line for line in installed.apply_output.splitlines() if line.strip()]
    assert len(lines) == len(rendered), installed.apply_output
    assert all(line.endswith(" serverside-applied") for line in lines), installed.apply_output

    live = {(kind, name): _get(cp, kind, namespace, name) for kind, namespace, name in EXPECTED_OBJECTS}
    assert {(o["kind"], o["metadata"]["name"]) for o in rendered} == {
        (obj["kind"], name) for (_, name), obj in live.items()}, "EXPECTED_OBJECTS is not what manifests/ holds"
    for (kind, _), obj in live.items():
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "module-service-controller", (kind, labels)

    crd = live["customresourcedefinition", MD_CRD]
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}.get("Established") == "True"
    # The Deployment is accepted as written (no kubelet here runs it).
    deployment = live["deployment.apps", "module-service-controller"]
    assert deployment["spec"]["replicas"] == 3
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == SA_NAME
    assert "--leader-elect" in pod_spec["containers"][0]["args"]
    # The Prometheus Operator objects kept their spec (the stand-in CRDs preserve unknown fields; a
    # pruned or rejected field would show here).
    monitor = live["servicemonitor.monitoring.coreos.com", "module-service-controller"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["scheme"]) == ("https", "https")
    assert endpoint["tlsConfig"]["insecureSkipVerify"] is True
    rule = live["prometheusrule.monitoring.coreos.com", "module-service-controller"]
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == alerts["groups"]
    # The metrics Service selects the Deployment's Pods on the https port.
    metrics_svc = live["service", "module-service-controller-metrics"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert metrics_svc["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()

    # Upgrade = apply again: idempotent, still no conflict.
    again = _kubectl(cp, "apply", "-k", "manifests/", "--server-side")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr.strip() == "", again.stderr


# ---------------------------------------------------------------------------------------------- 2. scenarios
def test_token_carries_only_the_service_account_identity(installed: Installed, sa_kubeconfig: Path) -> None:
    whoami = json.loads(_ok(_kubectl(installed.cp, "auth", "whoami", "-o", "json", kubeconfig=sa_kubeconfig)))
    user = whoami["status"]["userInfo"]
    assert user["username"] == SA_USER
    assert "system:masters" not in user.get("groups", [])
    denied = _kubectl(installed.cp, "get", "secrets", "-n", SYSTEM_NS, kubeconfig=sa_kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr


def _svc_ok(module: str, port: int, owners: list[JsonObj], target_port: int | None = None,
            ) -> Callable[[JsonObj], bool]:
    def check(svc: JsonObj) -> bool:
        return not service_problems(svc, module=module, port=port, target_port=target_port, owners=owners)
    return check


async def _events(api: Api, ns: str, reason: str, type_: str, involved: str) -> list[JsonObj]:
    return [e for e in await api.events(ns) if e.get("reason") == reason and e.get("type") == type_
            and (e.get("involvedObject") or {}).get("name") == involved]


@pytest.mark.asyncio
async def test_sample_gets_its_service(installed: Installed, controller: ControllerProcess, test_ns: str) -> None:
    """README: ``kubectl apply -k manifests/samples`` -> the seed's Service, with blockOwnerDeletion owner
    references (admitted under OwnerReferencesPermissionEnforcement: the finalizers RBAC works)."""
    _ok(_kubectl(installed.cp, "apply", "-k", "manifests/samples", "--namespace", test_ns))
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.get_md(test_ns, SEED_MD["metadata"]["name"])
        assert md is not None
        svc = await api.wait_svc(test_ns, "dynamic-provider-service", _svc_ok("dynamic-provider", 8080, [md]),
                                 timeout=WAIT)
        ref = svc["metadata"]["ownerReferences"][0]
        assert (ref["controller"], ref["blockOwnerDeletion"]) == (True, True)
        ms = await api.wait_reason(test_ns, md["metadata"]["name"], "ServiceReady", timeout=WAIT)
        assert (ms["serviceName"], ms["nodePort"]) == ("dynamic-provider-service", node_port(svc))
        assert await wait_for(lambda: _events(api, test_ns, "ServiceCreated", "Normal", md["metadata"]["name"]),
                              timeout=WAIT, what="a ServiceCreated Event")
    controller.assert_running()


@pytest.mark.asyncio
async def test_port_change_updates_the_service(installed: Installed, controller: ControllerProcess,
                                               test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.create_md(test_ns, module_deployment("ports", "m-ports", port=8080))
        svc = await api.wait_svc(test_ns, "m-ports-service", _svc_ok("m-ports", 8080, [md]), timeout=WAIT)
        allocated = node_port(svc)
        md = await api.patch_md(test_ns, "ports", {"spec": {"operationStrategy": {"serviceStrategy": {
            "port": 9090, "targetPort": 9091}}}})
        svc = await api.wait_svc(test_ns, "m-ports-service", _svc_ok("m-ports", 9090, [md], target_port=9091),
                                 timeout=WAIT, what="the Service on 9090->9091")
        assert node_port(svc) == allocated
        ms = await api.wait_reason(test_ns, "ports", "ServiceReady", timeout=WAIT,
                                   check=lambda ms: ms.get("observedGeneration") == md["metadata"]["generation"])
        assert (ms["port"], ms["targetPort"]) == (9090, 9091)
    controller.assert_running()


@pytest.mark.asyncio
async def test_disable_deletes_the_service(installed: Installed, controller: ControllerProcess,
                                           test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.create_md(test_ns, module_deployment("off", "m-off"))
        await api.wait_svc(test_ns, "m-off-service", _svc_ok("m-off", 8080, [md]), timeout=WAIT)
        await api.patch_md(test_ns, "off", {"spec": {"operationStrategy": {"serviceStrategy": {
            "enableModuleService": False}}}})
        await api.wait_svc_gone(test_ns, "m-off-service", timeout=WAIT)
        await api.wait_reason(test_ns, "off", "ServiceDisabled", timeout=WAIT)
        assert await wait_for(lambda: _events(api, test_ns, "ServiceDeleted", "Normal", "off"),
                              timeout=WAIT, what="a ServiceDeleted Event")
    controller.assert_running()


@pytest.mark.asyncio
async def test_foreign_service_is_a_name_conflict(installed: Installed, controller: ControllerProcess,
                                                  test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        foreign = await api.create_svc(test_ns, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "m-taken-service"},
            "spec": {"selector": {"app": "someone-else"}, "ports": [{"port": 80}]}})
        await api.create_md(test_ns, module_deployment("taken", "m-taken"))
        ms = await api.wait_reason(test_ns, "taken", "NameConflict", timeout=WAIT)
        assert ready_condition(ms)["status"] == "False"
        warnings = await wait_for(lambda: _events(api, test_ns, "NameConflict", "Warning", "taken"),
                                  timeout=WAIT, what="a NameConflict Warning Event")
        assert warnings[0]["involvedObject"]["kind"] == "ModuleDeployment"
        after = await api.get_svc(test_ns, "m-taken-service")
        assert after is not None
        assert after["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"], "foreign Service touched"
    controller.assert_running()


@pytest.mark.asyncio
async def test_pods_are_counted(installed: Installed, controller: ControllerProcess, test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        await api.create_md(test_ns, module_deployment("counted", "m-counted"))
        label = {"module.koupleless.alipay.com/m-counted": "true"}
        for name in ("base-0", "base-1"):
            await api.create_pod(test_ns, name, label)
        await api.create_pod(test_ns, "base-other", {"module.koupleless.alipay.com/m-other": "true"})
        await api.set_pod_ready(test_ns, "base-0", True)
        await api.set_pod_ready(test_ns, "base-1", False)
        await api.wait_reason(test_ns, "counted", "ServiceReady", timeout=WAIT,
                              check=lambda ms: (ms.get("pods"), ms.get("readyPods")) == (2, 1))
        await api.set_pod_ready(test_ns, "base-1", True)
        await api.wait_reason(test_ns, "counted", "ServiceReady", timeout=WAIT,
                              check=lambda ms: (ms.get("pods"), ms.get("readyPods")) == (2, 2))
    controller.assert_running()


@pytest.mark.asyncio
async def test_deleted_module_deployment_takes_its_service(installed: Installed, controller: ControllerProcess,
                                                           test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.create_md(test_ns, module_deployment("gone", "m-gone"))
        await api.wait_svc(test_ns, "m-gone-service", _svc_ok("m-gone", 8080, [md]), timeout=WAIT)
        await api.delete_md(test_ns, "gone")
        await api.wait_svc_gone(test_ns, "m-gone-service", timeout=WAIT)
    controller.assert_running()


# ---------------------------------------------------------------------------------------------- 3. can-i
# (verb, resource, namespace or "" for cluster scope, expected). Namespaced checks use a namespace the
# controller does not live in, except where its own namespace is the point.
CAN_I: list[tuple[str, str, str, bool]] = [
    ("get", "secrets", "default", False),
    ("list", "secrets", "default", False),
    ("watch", "secrets", "default", False),
    ("get", "secrets", SYSTEM_NS, False),
    ("delete", "pods", "default", False),
    ("create", "pods", "default", False),
    ("patch", "pods", "default", False),
    ("create", "moduledeployments.koupleless.alipay.com", "default", False),
    ("update", "moduledeployments.koupleless.alipay.com", "default", False),
    ("patch", "moduledeployments.koupleless.alipay.com", "default", False),
    ("delete", "moduledeployments.koupleless.alipay.com", "default", False),
    ("create", "leases.coordination.k8s.io", "default", False),
    ("update", "leases.coordination.k8s.io", "default", False),
    ("delete", "leases.coordination.k8s.io", SYSTEM_NS, False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", False),
    ("create", "serviceaccounts/token", SYSTEM_NS, False),
    ("get", "moduledeployments.koupleless.alipay.com", "default", True),
    ("list", "moduledeployments.koupleless.alipay.com", "default", True),
    ("watch", "moduledeployments.koupleless.alipay.com", "", True),
    ("patch", "moduledeployments.koupleless.alipay.com/status", "default", True),
    ("update", "moduledeployments.koupleless.alipay.com/status", "default", True),
    ("update", "moduledeployments.koupleless.alipay.com/finalizers", "default", True),
    ("get", "services", "default", True),
    ("list", "services", "", True),
    ("watch", "services", "", True),
    ("create", "services", "default", True),
    ("patch", "services", "default", True),
    ("update", "services", "default", True),
    ("delete", "services", "default", True),
    ("get", "pods", "default", True),
    ("list", "pods", "", True),
    ("watch", "pods", "", True),
    ("create", "events", "default", True),
    ("patch", "events", "default", True),
    ("create", "events.events.k8s.io", "default", True),
    ("get", "leases.coordination.k8s.io", SYSTEM_NS, True),
    ("create", "leases.coordination.k8s.io", SYSTEM_NS, True),
    ("update", "leases.coordination.k8s.io", SYSTEM_NS, True),
    ("create", "tokenreviews.authentication.k8s.io", "", True),
    ("create", "subjectaccessreviews.authorization.k8s.io", "", True),
]


def _scope(verb: str, namespace: str) -> list[str]:
    if namespace:
        return ["-n", namespace]
    return ["--all-namespaces"] if verb in ("list", "watch") else []


def _scope_label(verb: str, namespace: str) -> str:
    return namespace or ("(all)" if verb in ("list", "watch") else "(cluster)")


def test_can_i_table(installed: Installed) -> None:
    cp = installed.cp

    def ask(row: tuple[str, str, str, bool]) -> tuple[str, str]:
        verb, resource, namespace, _ = row
        resource, _, sub = resource.partition("/")
        args = ["auth", "can-i", verb, resource, f"--as={SA_USER}", *_scope(verb, namespace)]
        if sub:
            args.append(f"--subresource={sub}")
        proc = _kubectl(cp, *args)
        # can-i exits 0 for yes, 1 for no; anything else (or other output) is an error.
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stdout.strip(), proc.stderr.strip()

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, CAN_I))
    header = ("VERB", "RESOURCE", "NAMESPACE", "EXPECTED", "GOT")
    rows = [(verb, resource, _scope_label(verb, ns), "yes" if want else "no", got)
            for (verb, resource, ns, want), (got, _) in zip(CAN_I, answers, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])
    print(f"\n$ kubectl auth can-i <verb> <resource> --as={SA_USER}\n{table}")
    wrong = [r for r in rows if r[3] != r[4]]
    assert not wrong, f"unexpected answers:\n{table}"


# ---------------------------------------------------------------------------------------------- 4. /metrics
# Labels that Prometheus attaches to every scraped series (target labels), not the controller.
TARGET_LABELS = {"namespace", "job", "pod", "instance", "service", "endpoint", "container"}
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")


def _used_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel target, dashboard variable and alert rule."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = [(f"panel {panel['title']!r}", expr) for panel, expr in _exprs(dashboard)]
    for name, var in _variables(dashboard).items():
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", _var_query(var))
            assert match, name
            out.append((f"variable {name}", match.group(1)))
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    out += [(f"alert {rule['alert']}", str(rule["expr"])) for rule in _rules(alerts)]
    return out


def _series(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets, from a Prometheus text exposition."""
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def _matches(labels: Mapping[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    for label, op, value in matchers:
        got = labels.get(label, "")
        ok = {"=": got == value, "!=": got != value,
              "=~": re.fullmatch(value, got) is not None, "!~": re.fullmatch(value, got) is None}[op]
        if not ok:
            return False
    return True


def _problems(where: str, expr: str, series: dict[str, list[dict[str, str]]]) -> list[str]:
    problems: list[str] = []
    names = metric_names(expr) - PROMETHEUS_OWN
    for name in sorted(names):
        if name not in series:
            problems.append(f"{where}: {name} is not in the scrape")
    # Label matchers on the controller's own labels must select a live series (an alert pinned to a
    # label value the controller never exports would never fire).
    for name, body in _SELECTOR.findall(expr):
        if name in PROMETHEUS_OWN or name not in series:
            continue
        matchers = [(label, op, value) for label, op, value in _MATCHER.findall(body)
                    if label not in TARGET_LABELS and "$" not in value]
        if not any(_matches(labels, matchers) for labels in series[name]):
            problems.append(f"{where}: no {name} series matches {matchers}")
    # Grouping/matching labels that are not target labels must exist on every metric of the expression.
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if not label or label in TARGET_LABELS:
                continue
            for name in names & series.keys():
                if not any(label in labels for labels in series[name]):
                    problems.append(f"{where}: {name} has no label {label!r} to group by")
    return problems


async def _scrape(port: int, token: str | None) -> tuple[int, str]:
    # The ServiceMonitor scrapes with insecureSkipVerify (self-signed serving certificate); so do we.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(trust_env=False) as session, session.get(
            f"https://127.0.0.1:{port}/metrics", headers=headers, ssl=ctx,
            timeout=aiohttp.ClientTimeout(total=20)) as resp:
        return resp.status, await resp.text()


def _value(series_text: str, metric: str, /, **labels: str) -> float:
    """Sum of the samples of ``metric`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(series_text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.mark.asyncio
async def test_every_dashboard_and_alert_metric_is_in_a_live_scrape(
        installed: Installed, controller: ControllerProcess, test_ns: str) -> None:
    cp = installed.cp
    # A scraper identity as the README describes: a ServiceAccount bound to the metrics-reader
    # ClusterRole (the ServiceMonitor sends that ServiceAccount's token). A second one is not bound.
    binding = f"e2e-metrics-reader-{uuid.uuid4().hex[:6]}"
    for sa in ("prometheus", "nobody"):
        cp.request(f"/api/v1/namespaces/{test_ns}/serviceaccounts", "POST",
                   {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa}})
    cp.request("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", "POST", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "module-service-controller-metrics-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": test_ns}]})
    try:
        reader = _request_token(cp, test_ns, "prometheus")
        nobody = _request_token(cp, test_ns, "nobody")
        # The controller checks scrapers with TokenReview + SubjectAccessReview under ITS identity.
        assert (await _scrape(controller.metrics_port, None))[0] == 401
        assert (await _scrape(controller.metrics_port, nobody))[0] == 403

        async with api_client(str(cp.kubeconfig)) as api:
            md = await api.create_md(test_ns, module_deployment("scraped", "m-scraped"))
            await api.wait_svc(test_ns, "m-scraped-service", _svc_ok("m-scraped", 8080, [md]), timeout=WAIT)
            await api.wait_reason(test_ns, "scraped", "ServiceReady", timeout=WAIT)

        async def scraped() -> str | None:
            status, text = await _scrape(controller.metrics_port, reader)
            assert status == 200, text
            # After a reconcile, as the leader, after a Lease renewal (a PUT) and a status write.
            done = (_value(text, "controller_runtime_reconcile_total", controller="moduleservice",
                           result="success") >= 1
                    and _value(text, "leader_election_master_status", name=LEASE_NAME) == 1
                    and _value(text, "rest_client_requests_total", method="PUT", code="200") >= 1
                    and _value(text, "moduleservice_convergence_seconds_count") >= 1)
            return text if done else None

        text = await wait_for(scraped, timeout=WAIT, what="a scrape after a reconcile", interval=0.5)
    finally:
        _delete(cp, f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")

    series = _series(text)
    used = _used_expressions()
    names = set().union(*(metric_names(expr) for _, expr in used)) - PROMETHEUS_OWN
    assert len(names) >= 20, sorted(names)
    problems = [p for where, expr in used for p in _problems(where, expr, series)]
    assert not problems, "\n".join(problems)
    # The RBAC was sufficient for everything the controller did so far. Not "no 403 at all": writes into
    # a namespace being deleted (the previous tests' namespaces) get a 403 that is not an RBAC denial.
    assert _value(text, "rest_client_requests_total", code="401") == 0
    denials = _rbac_denials(controller.log_path.read_text(errors="replace"))
    assert not denials, "\n".join(denials[:10])
    controller.assert_running()


# A denial, as the API server words it: the authorizer's `is forbidden: User "<name>" cannot <verb> ...`,
# and OwnerReferencesPermissionEnforcement's (no `update moduledeployments/finalizers`).
_RBAC_DENIAL = re.compile(r'forbidden: User "[^"]+" cannot |cannot set blockOwnerDeletion')


def _rbac_denials(log: str) -> list[str]:
    """Log lines of the controller that report an RBAC denial (JSON lines are decoded first)."""
    found = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
            text = " ".join(str(v) for v in record.values()) if isinstance(record, dict) else line
        except ValueError:
            text = line
        if _RBAC_DENIAL.search(text):
            found.append(line)
    return found


# ---------------------------------------------------------------------------------------------- uninstall
MANAGED_SERVICES = "app.kubernetes.io/managed-by=module-service-controller"


def test_delete_k_uninstalls(installed: Installed, controller: ControllerProcess) -> None:
    """README: ``kubectl delete -k manifests/`` removes everything, the CRD and every ModuleDeployment
    with it; then ``kubectl delete services -A -l <managed-by>`` removes the module Services.

    That second command is needed: once the CRD is gone the garbage collector can no longer map the
    Services' owner references (kind ModuleDeployment) to a resource, and keeps them. Whether it got to
    them before that is a race; here it mostly lost (the Service was still there 60 s after the delete).
    Last in this module: it takes the CRD away (a dedicated cluster, see the top).
    """
    cp = installed.cp
    ns = _create_namespace(cp, "e2e-uninstall")
    md_path = f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{ns}/moduledeployments"
    svc_path = f"/api/v1/namespaces/{ns}/services/m-left-service"
    try:
        cp.request(md_path, "POST", module_deployment("left", "m-left"))
        _poll(lambda: _exists(cp, svc_path), timeout=WAIT, what="m-left-service")
        # The Deployment goes first in a real uninstall; here: SIGTERM, and the Lease is released.
        assert controller.stop() == 0, controller.log_tail()
        lease = cp.request(f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases/{LEASE_NAME}")
        assert not lease["spec"].get("holderIdentity"), lease

        proc = _kubectl(cp, "delete", "-k", "manifests/")
        print(f"\n$ kubectl delete -k manifests/\n{proc.stdout}{proc.stderr}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for kind, namespace, name in EXPECTED_OBJECTS:
            _poll(_gone(cp, kind, namespace, name), timeout=WAIT, what=f"{kind}/{name} to be gone")
        # The CRD took every ModuleDeployment with it.
        assert not _exists(cp, md_path)

        sweep = _ok(_kubectl(cp, "delete", "services", "-A", "-l", MANAGED_SERVICES))
        print(f"$ kubectl delete services -A -l {MANAGED_SERVICES}\n{sweep}")
        assert not _exists(cp, svc_path)
        left = json.loads(_ok(_kubectl(cp, "get", "services", "-A", "-l", MANAGED_SERVICES, "-o", "json")))
        assert left["items"] == []
        # Nothing else was swept: the cluster's own Service is still there.
        assert _exists(cp, "/api/v1/namespaces/default/services/kubernetes")
    finally:
        _delete(cp, f"/api/v1/namespaces/{ns}")


def _gone(cp: ControlPlane, kind: str, namespace: str, name: str) -> Callable[[], bool]:
    args = ["get", kind, name, "--ignore-not-found", "-o", "name"] + (["-n", namespace] if namespace else [])
    return lambda: _ok(_kubectl(cp, *args)).strip() == ""
