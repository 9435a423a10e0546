"""Rendering with the pinned tools: ``kubectl kustomize`` (the control plane's kubectl) and ``helm
template`` (tests/helm). No cluster is needed."""

from __future__ import annotations

import json
import os
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


def helm_run(*args: str) -> subprocess.CompletedProcess[str]:
    # Helm's own config/cache/data directories in a scratch place, not the user's home.
    home = Path(tempfile.gettempdir()) / "msc-helm-home"
    env = {**os.environ, "HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}
    return subprocess.run([str(helm()), *args], capture_output=True, text=True, check=False, cwd=ROOT, env=env)


def helm_template(*sets: str, namespace: str = NAMESPACE, release: str = RELEASE,
                  api_versions: tuple[str, ...] = ()) -> list[Obj]:
    """``helm template`` of the chart with ``--set`` for each of ``sets`` and ``--api-versions`` for each of
    ``api_versions`` (as if the cluster served them)."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
    for api in api_versions:
        args += ["--api-versions", api]
    proc = helm_run(*args)
    assert proc.returncode == 0, proc.stderr
    return _docs(proc.stdout)


def helm_template_error(*sets: str) -> str:
    """stderr of a ``helm template`` that must fail."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for s in sets:
        args += ["--set", s]
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
