"""Every install composition that docs/install.md documents ("Supported compositions"; this reads the table),
rendered with kustomize and with Helm: the controller's flags, the API group of every role and of the guard,
the alerts' job and namespace, the secure-metrics objects, Pod Security "restricted" and the grace period;
and the same RBAC, flags and guard from both paths."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.render.common import (
    CLUSTER_SCOPED,
    GROUPS,
    MANIFESTS,
    NAME,
    NAMESPACE,
    ROOT,
    VAP_API,
    Obj,
    alert_selectors,
    bindings,
    container,
    find,
    guard,
    guard_group,
    helm_template,
    kustomize,
    kustomize_error,
    lease_name,
    lease_role_names,
    metrics_service,
    rbac,
    restricted_problems,
    shutdown_needs,
)

INSTALL_MD = ROOT / "docs" / "install.md"
SECURE_RULES = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}
MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


@dataclass(frozen=True)
class Composition:
    install: str
    resources: tuple[str, ...]
    components: tuple[str, ...]
    namespace: str  # the overlay's `namespace:`, "" for none
    profile: str
    helm: tuple[str, ...]

    @property
    def namespaced(self) -> bool:
        return "namespaced" in self.components or "variants/namespaced" in self.resources

    @property
    def secure(self) -> bool:
        return not self.namespaced and "plain-metrics" not in self.components

    @property
    def guarded(self) -> bool:
        return not self.namespaced and "no-guard" not in self.components

    @property
    def aggregated(self) -> bool:
        return not self.namespaced and "no-aggregated-roles" not in self.components

    @property
    def monitored(self) -> bool:
        return "prometheus" in self.components or "variants/monitoring" in self.resources

    @property
    def install_namespace(self) -> str:
        return self.namespace or NAMESPACE


def _ticked(cell: str) -> tuple[str, ...]:
    return tuple(re.findall(r"`([^`]*)`", cell))


def documented() -> list[Composition]:
    """The rows of docs/install.md's table under "## Supported compositions"."""
    text = INSTALL_MD.read_text(encoding="utf-8")
    section = text.split("## Supported compositions", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| install")
            and not line.startswith("| ---")]
    out = []
    for row in rows:
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) == 6, row
        install, resources, components, namespace, profile, helm = cells
        ns = _ticked(namespace)
        out.append(Composition(install, _ticked(resources), _ticked(components), ns[0] if ns else "", profile,
                               _ticked(helm)))
    return out


COMPOSITIONS = documented()


def test_the_table_documents_the_compositions_that_matter() -> None:
    """The table is what the tests below render: it must hold the README's and the issue's cases."""
    keys = {(c.resources, c.components, c.profile) for c in COMPOSITIONS}
    for needed in [(("variants/koupleless",), (), "koupleless"),
                   (("variants/koupleless",), ("namespaced",), "koupleless"),
                   (("variants/namespaced",), ("profiles/koupleless",), "koupleless"),
                   (("base",), ("prometheus", "namespaced"), "seed"),
                   (("variants/sofa-serverless",), (), "sofa-serverless"),
                   ((".",), (), "seed")]:
        assert needed in keys, needed
    assert {c.profile for c in COMPOSITIONS} == set(GROUPS)
    assert len({c.install for c in COMPOSITIONS}) == len(COMPOSITIONS)
    for c in COMPOSITIONS:
        for path in c.resources + c.components:
            assert (MANIFESTS / path / "kustomization.yaml").is_file(), path


def _kustomized(tmp_path: Path, c: Composition) -> list[Obj]:
    rel = Path(os.path.relpath(MANIFESTS, tmp_path))
    extra: dict[str, object] = {"namespace": c.namespace} if c.namespace else {}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / r) for r in c.resources], "components": [str(rel / p) for p in c.components],
        **extra}))
    return kustomize(tmp_path)


def _helmed(c: Composition) -> list[Obj]:
    return helm_template(*c.helm, namespace=c.install_namespace, api_versions=(VAP_API,))


def _args(objects: list[Obj], namespace: str) -> list[str]:
    # Kustomize spells the served namespace $(POD_NAMESPACE), from the Pod's own; Helm writes it out.
    return [a.replace("$(POD_NAMESPACE)", namespace) for a in container(objects)["args"]]


def _check(objects: list[Obj], c: Composition) -> None:
    """What every documented composition must render, whichever path."""
    group, ns = GROUPS[c.profile], c.install_namespace
    args = _args(objects, ns)
    # --- the controller's flags
    assert [a for a in args if a.startswith("--profile")] == ([] if c.profile == "seed" else [f"--profile={c.profile}"])
    assert lease_name(objects) == f"{NAME}-{c.profile}"
    assert lease_role_names(objects) == [[f"{NAME}-{c.profile}"], []], "get/update on its own Lease only"
    assert [a for a in args if a.startswith("--namespace")] == ([f"--namespace={ns}"] if c.namespaced else [])
    assert ("--metrics-secure" in args) == c.secure
    assert f"--metrics-bind-address=:{8443 if c.secure else 8080}" in args
    # --- RBAC: the controller's role, on the profile's group
    kind = "Role" if c.namespaced else "ClusterRole"
    role = find(objects, kind, NAME)
    assert [r["apiGroups"] for r in role["rules"][:3]] == [[group]] * 3
    assert [r["resources"] for r in role["rules"][:3]] == [
        ["moduledeployments"], ["moduledeployments/status"], ["moduledeployments/finalizers"]]
    rules = rbac(objects)[kind, role["metadata"].get("namespace", ""), NAME]
    assert {k for k in rules if k in SECURE_RULES} == (SECURE_RULES if c.secure else set())
    crd_names = [r.get("resourceNames") for r in role["rules"] if "customresourcedefinitions" in r["resources"]]
    assert crd_names == ([] if c.namespaced else [[f"moduledeployments.{group}"]])
    ref, subjects = bindings(objects)[f"{kind}Binding", role["metadata"].get("namespace", ""), NAME]
    assert ref == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": NAME}
    assert subjects == [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]
    # The aggregated view/edit roles, on the same group.
    aggregated = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole"
                  and any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in o["metadata"]["labels"])}
    if c.aggregated:
        assert set(aggregated) == {f"{NAME}-view", f"{NAME}-edit"}
        for o in aggregated.values():
            assert [r["apiGroups"] for r in o["rules"]] == [[group]]
    else:
        assert not aggregated
    # No other group anywhere (the seed's CRD aside, which Helm renders for the seed profile).
    for other in set(GROUPS.values()) - {group}:
        assert other not in json.dumps([o for o in objects if o["kind"] != "CustomResourceDefinition"]), other
    # --- secure metrics: the reviews, the metrics-reader, the scraper
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert (("ClusterRole", f"{NAME}-metrics-reader") in names) == c.secure
    scraper = {("ServiceAccount", f"{NAME}-metrics-scraper"), ("Secret", f"{NAME}-metrics-scraper-token"),
               ("ClusterRoleBinding", f"{NAME}-metrics-scraper")}
    assert (scraper & names) == (scraper if c.secure and c.monitored else set())
    if c.namespaced:
        assert not [o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED], "nothing cluster-scoped"
    # --- the guard
    found = guard(objects)
    assert (found is not None) == c.guarded
    if found is not None:
        assert guard_group(found[0]) == group
    # --- monitoring: scraping, the alerts' and the dashboard's job and namespace
    service = metrics_service(objects)
    job = service["metadata"]["name"]
    assert service["metadata"]["namespace"] == ns
    assert {o["kind"] for o in objects} & MONITORING_KINDS == (MONITORING_KINDS if c.monitored else set())
    if c.monitored:
        (endpoint,) = find(objects, "ServiceMonitor")["spec"]["endpoints"]
        (port,) = service["spec"]["ports"]
        assert endpoint["port"] == port["name"] == ("https" if c.secure else "http")
        assert endpoint["scheme"] == port["name"]
        if c.secure:
            secret = endpoint["authorization"]["credentials"]["name"]
            assert ("Secret", secret) in names
        else:
            assert "authorization" not in endpoint
            assert "tlsConfig" not in endpoint
        selectors = alert_selectors(find(objects, "PrometheusRule"))
        assert len({alert for alert, _, _ in selectors}) == 9
        for alert, metric, matchers in selectors:
            assert matchers.get("job") == job, (alert, metric, matchers)
            assert matchers.get("namespace") == ns, (alert, metric, matchers)
        board = json.loads(find(objects, "ConfigMap")["data"]["module-service-controller.json"])
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["job"]["current"]["value"] == job
        assert variables["namespace"]["current"]["value"] == ns
    # --- the Pod: Pod Security "restricted", and a grace period that covers the shutdown
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert restricted_problems(pod) == []
    assert pod["terminationGracePeriodSeconds"] >= shutdown_needs(container(objects)) + 1


@pytest.mark.parametrize("c", COMPOSITIONS, ids=[c.install for c in COMPOSITIONS])
def test_kustomize_composition(tmp_path: Path, c: Composition) -> None:
    _check(_kustomized(tmp_path, c), c)


@pytest.mark.parametrize("c", COMPOSITIONS, ids=[c.install for c in COMPOSITIONS])
def test_helm_composition(c: Composition) -> None:
    _check(_helmed(c), c)


@pytest.mark.parametrize("c", COMPOSITIONS, ids=[c.install for c in COMPOSITIONS])
def test_both_paths_render_the_same_install(tmp_path: Path, c: Composition) -> None:
    """With the release named module-service-controller, the chart's objects are the kustomize install's:
    the same roles and rules, the same bindings, the same flags (in any order), the same guard, and alerts
    that select the same job and namespace."""
    kustomized, helmed = _kustomized(tmp_path, c), _helmed(c)
    assert rbac(helmed) == rbac(kustomized)
    assert bindings(helmed) == bindings(kustomized)
    # rbac() ignores resourceNames: the CRD read must name the same CRD.
    assert _resource_names(helmed) == _resource_names(kustomized)
    ns = c.install_namespace
    assert sorted(_args(helmed, ns)) == sorted(_args(kustomized, ns))
    h_guard, k_guard = guard(helmed), guard(kustomized)
    assert (h_guard is None) == (k_guard is None)
    if h_guard is not None and k_guard is not None:
        for h, k in zip(h_guard, k_guard, strict=True):
            assert h["metadata"]["name"] == k["metadata"]["name"] == f"{NAME}-guard"
            assert h["spec"] == k["spec"]
    if c.monitored:
        assert find(helmed, "PrometheusRule")["spec"] == find(kustomized, "PrometheusRule")["spec"]
        h_monitor, k_monitor = (find(o, "ServiceMonitor")["spec"] for o in (helmed, kustomized))
        assert h_monitor["endpoints"] == k_monitor["endpoints"]
    h_pod, k_pod = (find(o, "Deployment")["spec"]["template"]["spec"] for o in (helmed, kustomized))
    for key in ("securityContext", "terminationGracePeriodSeconds"):
        assert h_pod[key] == k_pod[key], key
    assert container(helmed)["securityContext"] == container(kustomized)["securityContext"]


def _resource_names(objects: list[Obj]) -> dict[tuple[str, str], list[list[str]]]:
    return {(o["kind"], o["metadata"]["name"]): [r["resourceNames"] for r in o["rules"] if "resourceNames" in r]
            for o in objects if o["kind"] in ("Role", "ClusterRole")}


def test_name_prefix_is_followed_by_the_alerts_and_the_scraper(tmp_path: Path) -> None:
    """Two installs side by side are told apart by namePrefix (docs/guard.md): the alerts select the
    prefixed Service's job, and the ServiceMonitor's credentials and the token's ServiceAccount follow the
    prefix (kustomize knows neither reference by itself)."""
    rel = Path(os.path.relpath(MANIFESTS, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(rel / "variants" / "koupleless")], "components": [str(rel / "prometheus")],
        "namePrefix": "k-", "namespace": "ops"}))
    objects = kustomize(tmp_path)
    for _, _, matchers in alert_selectors(find(objects, "PrometheusRule")):
        assert (matchers["job"], matchers["namespace"]) == (f"k-{NAME}-metrics", "ops")
    (endpoint,) = find(objects, "ServiceMonitor")["spec"]["endpoints"]
    token = find(objects, "Secret")
    assert endpoint["authorization"]["credentials"]["name"] == token["metadata"]["name"]
    assert token["metadata"]["name"] == f"k-{NAME}-metrics-scraper-token"
    assert token["metadata"]["annotations"]["kubernetes.io/service-account.name"] == f"k-{NAME}-metrics-scraper"
    assert find(objects, "ServiceAccount", f"k-{NAME}-metrics-scraper")["metadata"]["namespace"] == "ops"
    binding = find(objects, "ClusterRoleBinding", f"k-{NAME}-metrics-scraper")
    assert binding["roleRef"]["name"] == f"k-{NAME}-metrics-reader"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"k-{NAME}-metrics-scraper", "namespace": "ops"}]


def test_monitoring_listed_after_plain_metrics_fails_loudly(tmp_path: Path) -> None:
    """prometheus/ scrapes secure metrics: after namespaced/ (or plain-metrics/) it would leave an HTTPS
    ServiceMonitor with credentials on a plain endpoint; the build fails instead."""
    rel = Path(os.path.relpath(MANIFESTS, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [str(rel / "base")], "components": [str(rel / "namespaced"), str(rel / "prometheus")]}))
    assert "/spec/ports/0/name" in kustomize_error(tmp_path)
