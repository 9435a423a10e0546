"""Rendering with the pinned tools: ``kubectl kustomize`` (the control plane's kubectl) and ``helm
template`` (tests/helm). No cluster is needed."""

from __future__ import annotations

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

# Each profile's API group (architecture §7).
GROUPS = {"seed": "koupleless.alipay.com", "koupleless": "koupleless.io", "sofa-serverless": "serverless.alipay.com"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


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


def helm_template(*sets: str, namespace: str = NAMESPACE, release: str = RELEASE) -> list[Obj]:
    """``helm template`` of the chart with ``--set`` for each of ``sets``."""
    args = ["template", release, str(CHART), "--namespace", namespace]
    for s in sets:
        args += ["--set", s]
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
