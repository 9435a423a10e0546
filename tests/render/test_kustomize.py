"""The kustomize layout, rendered with the pinned kubectl: a default
install that needs no CRD and no Prometheus Operator, the CRD on its own, monitoring opt-in, the profile
variants and the namespaced variant; and no variant that `kubectl delete -k` could take a CRD or a
ModuleDeployment away with. The guard's policy, and installs side by side. Every composition that
docs/install.md documents is rendered by tests/render/test_compositions.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from tests.render.common import (
    CLUSTER_SCOPED,
    GROUPS,
    GUARD_KINDS,
    MANIFESTS,
    NAME,
    NAMESPACE,
    ROOT,
    Obj,
    container,
    find,
    guard,
    guard_group,
    kinds,
    kustomize,
    lease_name,
    lease_role_names,
    normalize,
)

# The controller's, the metrics-reader and the aggregated view and edit ClusterRoles.
DEFAULT_KINDS = sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole", "ClusterRole",
                        "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "PodDisruptionBudget", "Service",
                        *GUARD_KINDS])
MONITORING_KINDS = ["ConfigMap", "PrometheusRule", "ServiceMonitor"]
# The identity the ServiceMonitor scrapes secure metrics with.
SCRAPER = [("ServiceAccount", f"{NAME}-metrics-scraper"), ("Secret", f"{NAME}-metrics-scraper-token"),
           ("ClusterRoleBinding", f"{NAME}-metrics-scraper")]
# Everything a user runs `kubectl delete -k` on.
UNINSTALLABLE = ["", "variants/monitoring", "variants/koupleless", "variants/sofa-serverless", "variants/namespaced"]
SECURE_ONLY = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}
# Cluster-scoped, so a Role cannot grant it: in namespaced mode the controller assumes its CRD is there.
CRD_READ = ("apiextensions.k8s.io", "customresourcedefinitions")


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return kustomize(MANIFESTS)


def _args(objects: list[Obj]) -> list[str]:
    args = container(objects)["args"]
    assert isinstance(args, list)
    return args


def test_default_install_needs_no_crd_and_no_prometheus_operator(default: list[Obj]) -> None:
    assert kinds(default) == DEFAULT_KINDS
    for o in default:
        assert o["apiVersion"].split("/")[0] in ("v1", "apps", "policy", "rbac.authorization.k8s.io",
                                                 "admissionregistration.k8s.io"), o["kind"]
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAME, o["kind"]
        if o["kind"] not in CLUSTER_SCOPED:
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]
        else:
            assert "namespace" not in o["metadata"], o["kind"]
    # The seed profile is the controller's default: no --profile flag, rules on the seed's group.
    assert not [a for a in _args(default) if a.startswith("--profile")]
    role = normalize(find(default, "ClusterRole", NAME)["rules"])
    assert {group for group, resource in role if resource.startswith("moduledeployments")} == {GROUPS["seed"]}


def test_crd_is_its_own_kustomization() -> None:
    objects = kustomize(MANIFESTS / "crd")
    crd = find(objects, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"moduledeployments.{GROUPS['seed']}"
    assert crd["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAME
    assert len(objects) == 1


@pytest.mark.parametrize("directory", UNINSTALLABLE)
def test_no_uninstallable_variant_holds_a_crd_or_module_deployment(directory: str) -> None:
    """`kubectl delete -k <variant>` deletes what the variant renders: never a CRD (which would take every
    ModuleDeployment with it), never a ModuleDeployment."""
    rendered = kinds(kustomize(MANIFESTS / directory))
    assert "CustomResourceDefinition" not in rendered
    assert "ModuleDeployment" not in rendered


def test_monitoring_is_opt_in(default: list[Obj]) -> None:
    objects = kustomize(MANIFESTS / "variants" / "monitoring")
    assert kinds(objects) == sorted(DEFAULT_KINDS + MONITORING_KINDS + [kind for kind, _ in SCRAPER])
    for kind, name in SCRAPER:
        assert find(objects, kind, name)["metadata"]["labels"]["app.kubernetes.io/component"] == "metrics"
    for o in objects:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAME, o["kind"]
        if o["kind"] not in CLUSTER_SCOPED:
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]
    dashboard = find(objects, "ConfigMap")
    assert dashboard["metadata"]["name"] == f"{NAME}-dashboard", "a stable name: no hash suffix"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((ROOT / "observability" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert json.loads(dashboard["data"]["module-service-controller.json"]) == source
    rule = find(objects, "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "observability" / "alerts.yaml").read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == alerts["groups"]
    # The ServiceMonitor selects the metrics Service, on its port.
    monitor, service = find(objects, "ServiceMonitor"), find(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "https"
    # Everything else is the default install, unchanged.
    same = [o for o in objects if o["kind"] not in MONITORING_KINDS
            and (o["kind"], o["metadata"]["name"]) not in SCRAPER]
    assert sorted(map(json.dumps, same)) == sorted(map(json.dumps, default))


@pytest.mark.parametrize("profile", ["koupleless", "sofa-serverless"])
def test_koupleless_profiles(profile: str, default: list[Obj]) -> None:
    objects = kustomize(MANIFESTS / "variants" / profile)
    assert kinds(objects) == DEFAULT_KINDS, "no CRD: the Koupleless install owns it"
    args = _args(objects)
    lease = f"--leader-elect-name={NAME}-{profile}"
    assert args == [lease if a == f"--leader-elect-name={NAME}-seed" else a for a in _args(default)] + [
        f"--profile={profile}"]
    rules = normalize(find(objects, "ClusterRole", NAME)["rules"])
    seed_rules = normalize(find(default, "ClusterRole", NAME)["rules"])
    # The same rules, on the profile's group instead of the seed's.
    moved = {((GROUPS[profile] if g == GROUPS["seed"] else g), r): v for (g, r), v in seed_rules.items()}
    assert rules == moved
    assert GROUPS["seed"] not in json.dumps(objects)
    crd_rules = [r for r in find(objects, "ClusterRole", NAME)["rules"] if r["resources"] == [CRD_READ[1]]]
    assert [r["resourceNames"] for r in crd_rules] == [[f"moduledeployments.{GROUPS[profile]}"]]
    # Nothing but the args, the rules, the Lease's name and the guard's group differ.
    changed = ("Deployment", "ClusterRole", "Role", "ValidatingAdmissionPolicy")
    strip = [o for o in objects if o["kind"] not in changed]
    assert sorted(map(json.dumps, strip)) == sorted(json.dumps(o) for o in default if o["kind"] not in changed)
    policy, default_policy = find(objects, "ValidatingAdmissionPolicy"), find(default, "ValidatingAdmissionPolicy")
    assert policy["spec"]["variables"][1:] == default_policy["spec"]["variables"][1:]
    assert {k: v for k, v in policy["spec"].items() if k != "variables"} == {
        k: v for k, v in default_policy["spec"].items() if k != "variables"}
    metrics_reader = find(objects, "ClusterRole", f"{NAME}-metrics-reader")
    assert metrics_reader == find(default, "ClusterRole", f"{NAME}-metrics-reader")


def test_namespaced_variant(default: list[Obj]) -> None:
    objects = kustomize(MANIFESTS / "variants" / "namespaced")
    assert not [o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED], "nothing cluster-scoped"
    assert kinds(objects) == sorted(["ServiceAccount", "Role", "Role", "RoleBinding", "RoleBinding", "Deployment",
                                     "PodDisruptionBudget", "Service"])
    assert {o["metadata"]["namespace"] for o in objects} == {NAMESPACE}
    # The controller's Role: the ClusterRole's rules less the two only secure metrics need.
    role = normalize(find(objects, "Role", NAME)["rules"])
    cluster_role = normalize(find(default, "ClusterRole", NAME)["rules"])
    assert role == {k: v for k, v in cluster_role.items() if k not in SECURE_ONLY and k != CRD_READ}
    binding = find(objects, "RoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    c = container(objects)
    assert c["args"] == ["--leader-elect", f"--leader-elect-name={NAME}-seed", "--metrics-bind-address=:8080",
                         "--health-probe-bind-address=:8081", "--shutdown-timeout=20s", "--log-level=info",
                         "--log-format=json", "--namespace=$(POD_NAMESPACE)"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Kubernetes expands $(VAR) only from variables defined before use: POD_NAMESPACE is defined.
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "http"] == [8080]
    (port,) = find(objects, "Service")["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")


def test_namespaced_overlay_moves_everything_and_combines_with_a_profile(tmp_path: Path) -> None:
    """The README's overlay: the namespaced variant in a team's own namespace, with a profile."""
    rel = Path(os.path.relpath(MANIFESTS, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "team-a",
        "resources": [str(rel / "variants" / "namespaced")], "components": [str(rel / "profiles" / "koupleless")],
    }))
    objects = kustomize(tmp_path)
    assert {o["metadata"]["namespace"] for o in objects} == {"team-a"}
    for b in (o for o in objects if o["kind"] == "RoleBinding"):
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": "team-a"}]
    role = normalize(find(objects, "Role", NAME)["rules"])
    assert {g for g, r in role if r.startswith("moduledeployments")} == {GROUPS["koupleless"]}
    assert container(objects)["args"][-2:] == ["--namespace=$(POD_NAMESPACE)", "--profile=koupleless"]


def _kustomization(directory: Path) -> Obj:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("directory", ["crd", "rbac", "manager", "prometheus", "samples", "namespaced", "guard",
                                       "plain-metrics", "no-guard", "no-aggregated-roles"])
def test_kustomizations_list_every_file(directory: str) -> None:
    path = MANIFESTS / directory
    kustomization = _kustomization(path)
    listed = set(kustomization.get("resources", [])) | set(kustomization.get("configurations", []))
    present = {p.name for p in path.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_namespaced_with_monitoring_scrapes_plain_http(tmp_path: Path) -> None:
    """README: monitoring in namespaced mode is base + the prometheus component, then the namespaced one."""
    rel = Path(os.path.relpath(MANIFESTS, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "team-a",
        "resources": [str(rel / "base")], "components": [str(rel / "prometheus"), str(rel / "namespaced")]}))
    objects = kustomize(tmp_path)
    assert not [o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED]
    monitor, service = find(objects, "ServiceMonitor"), find(objects, "Service")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["scheme"]) == ("http", "http")
    assert "bearerTokenFile" not in endpoint
    assert service["spec"]["ports"][0]["name"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {o["metadata"]["namespace"] for o in objects} == {"team-a"}


# ------------------------------------------------------------------------------------- guard and Lease
def _overlay(tmp_path: Path, resources: list[str], components: list[str], **extra: object) -> list[Obj]:
    """Renders a kustomization of ``resources`` and ``components`` (paths under manifests/)."""
    rel = Path(os.path.relpath(MANIFESTS, tmp_path))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / r) for r in resources], "components": [str(rel / c) for c in components], **extra,
    }))
    return kustomize(tmp_path)


def test_guard_policy(default: list[Obj]) -> None:
    """What the policy refuses, and how it fails."""
    policy = find(default, "ValidatingAdmissionPolicy")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Ignore", "a broken policy must not stop every Service delete"
    assert spec["matchConstraints"] == {"resourceRules": [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"], "resources": ["services"]}]}
    assert [c["name"] for c in spec["matchConditions"]] == ["listed-user"]
    assert [v["name"] for v in spec["variables"]] == ["group", "moduleDeploymentOwners", "owned"]
    owned = spec["variables"][2]["expression"]
    for part in ("oldObject.metadata.ownerReferences", "r.kind == 'ModuleDeployment'",
                 "r.apiVersion.startsWith(variables.group + '/')", "'module-service-controller/api-group'"):
        assert part in spec["variables"][1]["expression"] + owned, part
    (validation,) = spec["validations"]
    assert validation["expression"] == "!variables.owned"
    assert validation["reason"] == "Forbidden"
    message = validation["messageExpression"]
    for part in ("request.namespace", "request.name", "variables.group", "request.userInfo.username",
                 "enableModuleService", "guard.enabled=false", "manifests/no-guard"):
        assert part in message, part
    assert "paramKind" not in spec, "the users are in the policy: no parameter object to keep in step"


def test_guard_for_a_namespaced_install(tmp_path: Path) -> None:
    """The namespaced variant has no guard; a cluster admin can add it for that install's group with
    guard/ and the profile component (whose other patches find nothing to change)."""
    objects = _overlay(tmp_path, ["guard"], ["profiles/sofa-serverless"])
    assert kinds(objects) == sorted(GUARD_KINDS)
    found = guard(objects)
    assert found is not None
    assert guard_group(found[0]) == GROUPS["sofa-serverless"]


def test_two_installs_with_name_prefixes(tmp_path: Path) -> None:
    """Two installs side by side (koupleless and sofa-serverless, as during a migration) are told apart by
    namePrefix: each gets its own policy for its own group, bound by name, and its own Lease."""
    rendered = {}
    for profile, prefix in (("koupleless", "k-"), ("sofa-serverless", "s-")):
        directory = tmp_path / profile
        directory.mkdir()
        rendered[profile] = _overlay(directory, [f"variants/{profile}"], [], namePrefix=prefix)
    policies = {}
    for profile, objects in rendered.items():
        found = guard(objects)
        assert found is not None
        policies[profile] = found[0]["metadata"]["name"]
        assert guard_group(found[0]) == GROUPS[profile]
        assert lease_role_names(objects)[0] == [lease_name(objects)]
    assert policies == {"koupleless": f"k-{NAME}-guard", "sofa-serverless": f"s-{NAME}-guard"}
    assert lease_name(rendered["koupleless"]) != lease_name(rendered["sofa-serverless"])


def test_overlay_namespace_lands_on_the_policy_too(tmp_path: Path) -> None:
    """Kustomize's built-in schema does not know the policy is cluster-scoped: an overlay's `namespace:`
    is written onto it (the API server ignores it; base/ sets none for that reason). Documented in
    base/kustomization.yaml; this pins the behaviour so that a kustomize that learns better is noticed."""
    objects = _overlay(tmp_path, ["variants/koupleless"], [], namespace="ops")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] in GUARD_KINDS} == {"ops"}
