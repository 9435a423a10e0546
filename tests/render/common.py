"""Rendering with the pinned tools: ``kubectl kustomize`` (the control plane's kubectl) and ``helm
template`` (tests/helm). No cluster is needed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane import ensure_binaries
from tests.helm import ensure_helm

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CHART = ROOT / "charts" / "module-service-controller"
NAMESPACE = "module-service-system"
NAME = "module-service-controller"
RELEASE = NAME  # with this release name the chart's names are the kustomize install's names

Obj = dict[str, Any]

# Each profile's API group.
GROUPS = {"seed": "koupleless.alipay.com", "koupleless": "koupleless.io", "sofa-serverless": "serverless.alipay.com"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
GUARD_KINDS = ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
# What `helm template` must be told to render the guard: it sees no cluster, and its built-in API list
# names group versions only, not kinds (a real install asks the cluster).
VAP_API = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy"
# Koupleless' own module-controller, as its manifests (V1.0.0) run it: the guard's default users.
MODULE_CONTROLLER_USERS = [
    "system:serviceaccount:module-deployment-system:module-deployment-controller-manager",
    "system:serviceaccount:default:controller-manager",
]


def kubectl() -> Path:
    return ensure_binaries() / "kubectl"


def helm() -> Path:
    return ensure_helm()


def _docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def kustomize(directory: Path) -> list[Obj]:
    proc = subprocess.run([str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return _docs(proc.stdout)


def kustomize_error(directory: Path) -> str:
    """stderr of a ``kubectl kustomize`` that must fail."""
    proc = subprocess.run([str(kubectl()), "kustomize", str(directory)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0, f"kubectl kustomize {directory} succeeded:\n{proc.stdout[:2000]}"
    return proc.stderr


def helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    # Helm's own config/cache/data directories in a scratch place, not the user's home.
    home = Path(tempfile.gettempdir()) / "msc-helm-home"
    env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, check=False, cwd=ROOT, env=env)


def helm_template(*sets: str, namespace: str = NAMESPACE, release: str = RELEASE,
                  api_versions: tuple[str, ...] = (), strings: tuple[str, ...] = ()) -> list[Obj]:
    """``helm template`` of the chart with ``--set`` for each of ``sets``, ``--set-string`` for each of
    ``strings`` and ``--api-versions`` for each of ``api_versions`` (as if the cluster served them)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    for s in strings:
        args += ["--set-string", s]
    for api in api_versions:
        args += ["--api-versions", api]
    proc = helm_run(*args)
    assert proc.returncode == 0, proc.stderr
    return _docs(proc.stdout)


def helm_template_error(*sets: str, strings: tuple[str, ...] = ()) -> str:
    """stderr of a ``helm template`` that must fail."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
    for s in strings:
        args += ["--set-string", s]
    proc = helm_run(*args)
    assert proc.returncode != 0, f"helm template {' '.join(sets)} succeeded:\n{proc.stdout[:2000]}"
    return proc.stderr


def find(objects: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    present = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {present}"
    return found[0]


def kinds(objects: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(objects: list[Obj]) -> Obj:
    deployment = find(objects, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert isinstance(c, dict)
    return c


def normalize(rules: list[Obj]) -> dict[tuple[str, str], frozenset[str]]:
    """(apiGroup, resource) -> verbs; non-resource rules as ("nonResourceURL", url)."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for url in rule.get("nonResourceURLs", []):
            out.setdefault(("nonResourceURL", url), set()).update(rule["verbs"])
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return {k: frozenset(v) for k, v in out.items()}


def rbac(objects: list[Obj]) -> dict[tuple[str, str, str], dict[tuple[str, str], frozenset[str]]]:
    """(kind, namespace, name) -> normalized rules of every Role and ClusterRole."""
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): normalize(o.get("rules", []))
            for o in objects if o["kind"] in ("Role", "ClusterRole")}


def bindings(objects: list[Obj]) -> dict[tuple[str, str, str], tuple[Any, Any]]:
    """(kind, namespace, name) -> (roleRef, subjects) of every RoleBinding and ClusterRoleBinding."""
    return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): (o["roleRef"], o["subjects"])
            for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")}


# ------------------------------------------------------------------------------------- guard and Lease
def guard(objects: list[Obj]) -> tuple[Obj, Obj] | None:
    """The deletion guard's policy and binding, or None; asserts there is at most one of each and that
    the binding binds the policy."""
    policies = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicy"]
    binds = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"]
    assert len(policies) == len(binds) <= 1, [(o["kind"], o["metadata"]["name"]) for o in policies + binds]
    if not policies:
        return None
    (policy,), (binding,) = policies, binds
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["metadata"]["name"] == policy["metadata"]["name"]
    return policy, binding


def guard_group(policy: Obj) -> str:
    """The API group the policy protects: its variable ``group``, a CEL string literal."""
    (group,) = [v["expression"] for v in policy["spec"]["variables"] if v["name"] == "group"]
    assert isinstance(group, str)
    assert group.startswith("'"), group
    assert group.endswith("'"), group
    assert group.count("'") == 2, group
    return group[1:-1]


def guard_users(policy: Obj) -> list[str]:
    """The users the policy refuses: its match condition ``listed-user``, ``request.userInfo.username in
    [...]`` with a list literal that is also JSON."""
    (expression,) = [c["expression"] for c in policy["spec"]["matchConditions"] if c["name"] == "listed-user"]
    prefix = "request.userInfo.username in "
    assert expression.startswith(prefix), expression
    users = json.loads(expression[len(prefix):])
    assert isinstance(users, list)
    return [str(u) for u in users]


def lease_name(objects: list[Obj]) -> str | None:
    """The Lease the controller elects with (--leader-elect-name), None without leader election."""
    args = container(objects)["args"]
    if "--leader-elect" not in args:
        return None
    names = [a.partition("=")[2] for a in args if a.startswith("--leader-elect-name=")]
    assert len(names) == 1, args
    return str(names[0])


def lease_role_names(objects: list[Obj]) -> list[list[str]]:
    """resourceNames of every rule on leases, in every Role."""
    return [rule.get("resourceNames", []) for o in objects if o["kind"] == "Role"
            for rule in o["rules"] if "leases" in rule.get("resources", [])]


# ------------------------------------------------------------------------------------- alerts and dashboard
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def alert_selectors(rule: Obj) -> list[tuple[str, str, dict[str, str]]]:
    """(alert, metric, {label: value} of its equality matchers) for every selector of every rule of a
    PrometheusRule."""
    out = []
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            for metric, body in _SELECTOR.findall(r["expr"]):
                matchers = {name: value for name, op, value in _MATCHER.findall(body) if op == "="}
                out.append((r.get("alert", r.get("record", "")), metric, matchers))
    return out


def metrics_service(objects: list[Obj]) -> Obj:
    """The controller's metrics Service (the job a ServiceMonitor gives its targets is its name)."""
    services = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics")]
    assert len(services) == 1, [o["metadata"]["name"] for o in services]
    return services[0]


# ------------------------------------------------------------------------------------- Pod Security
# Pod Security Standards, "restricted" profile (latest): the volume types it allows, and the
# capability it lets a container add.
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                       "projected", "secret"}
_SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                 "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                 "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                 "net.ipv4.tcp_keepalive_probes"}


def restricted_problems(pod: Obj) -> list[str]:
    """What keeps a Pod spec from the Pod Security Standard "restricted" (baseline's checks included), as
    kube-apiserver's PodSecurity admission evaluates it; empty when it passes."""
    problems: list[str] = []
    pod_sc = pod.get("securityContext") or {}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"{host}")
    for volume in pod.get("volumes") or []:
        kinds_ = set(volume) - {"name"}
        if not kinds_ <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds_ - _RESTRICTED_VOLUMES)}")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl["name"] not in _SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']}")
    if (pod_sc.get("seLinuxOptions") or {}).get("user") or (pod_sc.get("seLinuxOptions") or {}).get("role"):
        problems.append("pod seLinuxOptions user/role")
    if pod_sc.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    containers = [*(pod.get("initContainers") or []), *pod["containers"]]
    for c in containers:
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {caps['add']}")
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost, is {seccomp}")
        if sc.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{where}: AppArmor Unconfined")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
    return problems


# ------------------------------------------------------------------------------------- shutdown
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def seconds(duration: str) -> float:
    """A duration as the controller parses it (500ms, 20s, 1.5m, a bare number of seconds)."""
    match = _DURATION.match(duration)
    assert match, duration
    return float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}[match.group(2)]


def shutdown_needs(c: Obj) -> float:
    """How long the container's controller may take after SIGTERM: the drain (--shutdown-timeout, else
    MSC_SHUTDOWN_TIMEOUT, else 25 s) and, with leader election, the Lease release (the renew deadline,
    10 s by default). The last flag wins, and a flag wins over its variable."""
    env = {e["name"]: e.get("value") for e in c.get("env", [])}

    def flag(name: str, variable: str, default: str) -> str:
        values = [a.partition("=")[2] for a in c["args"] if a.startswith(f"--{name}=")]
        return values[-1] if values else env.get(variable) or default

    needed = seconds(flag("shutdown-timeout", "MSC_SHUTDOWN_TIMEOUT", "25s"))
    if "--leader-elect" in c["args"]:
        needed += seconds(flag("leader-elect-renew-deadline", "MSC_LEADER_ELECT_RENEW_DEADLINE", "10s"))
    return needed
