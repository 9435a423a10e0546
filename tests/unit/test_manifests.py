"""Static checks of manifests/ (kustomize): least-privilege RBAC, a hardened Deployment, the metrics
plumbing and the kustomizations. Rendered variants: tests/render."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
NAMESPACE = "module-service-system"
NAME = "module-service-controller"
GROUP = "koupleless.alipay.com"

Obj = dict[str, Any]

# (apiGroup, resource) -> verbs. Exactly what the controller needs, nothing more.
EXPECTED_RULES: dict[tuple[str, str], set[str]] = {
    (GROUP, "moduledeployments"): {"get", "list", "watch"},
    (GROUP, "moduledeployments/status"): {"get", "patch", "update"},
    (GROUP, "moduledeployments/finalizers"): {"update"},
    ("", "services"): {"get", "list", "watch", "create", "patch", "update", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},
}


# Kustomize configuration files (transformer configurations), not objects.
CONFIGURATIONS = {"variable_references.yaml"}


def _yaml_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.is_file() and p.name not in CONFIGURATIONS)


def _load_all() -> list[tuple[Path, Obj]]:
    docs: list[tuple[Path, Obj]] = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                assert isinstance(doc, dict), path
                docs.append((path, doc))
    return docs


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    return [doc for path, doc in _load_all() if path.name != "kustomization.yaml"]


def _find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: found {len(found)}"
    return found[0]


def _normalize(rules: list[Obj]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def _rbac_rules(objects: list[Obj]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        if o["kind"] in {"ClusterRole", "Role"}:
            for rule in o.get("rules", []):
                yield f"{o['kind']}/{o['metadata']['name']}", rule


def test_every_yaml_file_parses() -> None:
    docs = _load_all()
    assert docs
    for path, doc in docs:
        assert "apiVersion" in doc, path
        assert "kind" in doc, path


# --- RBAC -------------------------------------------------------------------------------------------


def test_cluster_role_is_exactly_least_privilege(objects: list[Obj]) -> None:
    role = _find(objects, "ClusterRole", NAME)
    assert _normalize(role["rules"]) == EXPECTED_RULES


def _aggregated(o: Obj) -> bool:
    """A ClusterRole for people (aggregated into view, edit and admin), not for the controller."""
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in o["metadata"].get("labels", {}))


def test_no_wildcards_secrets_pod_deletes_or_spec_writes(objects: list[Obj]) -> None:
    for owner, rule in _rbac_rules([o for o in objects if not _aggregated(o)]):
        for key in ("apiGroups", "resources", "verbs", "nonResourceURLs", "resourceNames"):
            assert "*" not in rule.get(key, []), f"{owner}: wildcard in {key}"
        resources = set(rule.get("resources", []))
        verbs = set(rule["verbs"])
        assert not resources & {"secrets", "configmaps"}, f"{owner}: reads secrets or configmaps"
        if "pods" in resources:
            assert verbs <= {"get", "list", "watch"}, f"{owner}: pods {verbs}"
        if "moduledeployments" in resources:
            assert not verbs & {"create", "update", "patch", "delete", "deletecollection"}, owner
        assert "escalate" not in verbs
        assert "bind" not in verbs
        assert "impersonate" not in verbs


def test_cluster_role_binding(objects: list[Obj]) -> None:
    binding = _find(objects, "ClusterRoleBinding", NAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    sa = _find(objects, "ServiceAccount", NAME)
    assert sa["metadata"]["namespace"] == NAMESPACE


def test_leader_election_role_is_namespaced(objects: list[Obj]) -> None:
    roles = [o for o in objects if o["kind"] == "Role"]
    assert len(roles) == 1
    role = roles[0]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert _normalize(role["rules"]) == {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
    # get and update on the install's own Lease only (the one in the args); create cannot be restricted
    # by name, so it has a rule of its own.
    assert [(r.get("resourceNames"), r["verbs"]) for r in role["rules"]] == [
        ([f"{NAME}-seed"], ["get", "update"]), (None, ["create"])]
    (container,) = _find(objects, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["--leader-elect", f"--leader-elect-name={NAME}-seed"], \
        "profiles/ and namespaced/ expect the Lease name at args[1]"
    binding = next(
        o for o in objects if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == role["metadata"]["name"]
    )
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    # leases appear nowhere else: no cluster-wide lease access
    for owner, rule in _rbac_rules(objects):
        if "leases" in rule.get("resources", []):
            assert owner == f"Role/{role['metadata']['name']}"


def test_aggregated_roles_for_people(objects: list[Obj]) -> None:
    """Users of the built-in view/edit/admin roles may read (view) and write (edit, admin) ModuleDeployments;
    nothing else, and only on the install's group."""
    roles = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ClusterRole" and _aggregated(o)}
    assert set(roles) == {f"{NAME}-view", f"{NAME}-edit"}
    prefix = "rbac.authorization.k8s.io/aggregate-to-"
    view, edit = roles[f"{NAME}-view"], roles[f"{NAME}-edit"]
    assert {k.removeprefix(prefix) for k, v in view["metadata"]["labels"].items()
            if k.startswith(prefix) and v == "true"} == {"view", "edit", "admin"}
    assert {k.removeprefix(prefix) for k, v in edit["metadata"]["labels"].items()
            if k.startswith(prefix) and v == "true"} == {"edit", "admin"}
    assert _normalize(view["rules"]) == {(GROUP, "moduledeployments"): {"get", "list", "watch"}}
    assert _normalize(edit["rules"]) == {
        (GROUP, "moduledeployments"): {"create", "delete", "deletecollection", "patch", "update"}}


def test_metrics_reader_role(objects: list[Obj]) -> None:
    readers = [o for o in objects if o["kind"] == "ClusterRole" and o["metadata"]["name"].endswith("metrics-reader")]
    assert len(readers) == 1
    assert readers[0]["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]


# --- Deployment -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(objects: list[Obj]) -> Obj:
    return _find(objects, "Deployment", NAME)


@pytest.fixture(scope="module")
def container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: Obj = containers[0]
    return c


def test_deployment_shape(deployment: Obj, container: Obj) -> None:
    assert deployment["metadata"]["namespace"] == NAMESPACE
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == NAME
    # SIGTERM: the drain (--shutdown-timeout) and the Lease release (bounded by the renew deadline, 10 s by
    # default) must fit in the grace period, with room for the exit.
    shutdown = [a.partition("=")[2] for a in container["args"] if a.startswith("--shutdown-timeout=")]
    assert shutdown == ["20s"]
    assert not [a for a in container["args"] if a.startswith("--leader-elect-renew-deadline")]
    assert pod["terminationGracePeriodSeconds"] >= 20 + 10 + 5
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert container["image"] == f"{NAME}:0.1.0"
    assert "command" not in container, "the image's ENTRYPOINT is the console script"


def test_deployment_args(container: Obj) -> None:
    args = container["args"]
    assert "--leader-elect" in args
    assert "--metrics-secure" in args
    assert "--metrics-bind-address=:8443" in args
    assert "--health-probe-bind-address=:8081" in args
    assert "--log-level=info" in args
    assert "--log-format=json" in args
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["MSC_LEADER_ELECT_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # Settings are flags, not variables a flag would shadow.
    assert set(env) == {"MSC_LEADER_ELECT_NAMESPACE", "TMPDIR"}


def test_deployment_probes_and_ports(container: Obj) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"https": 8443, "health": 8081}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert get["port"] in ("health", 8081)
        assert get.get("scheme", "HTTP") == "HTTP"


def test_deployment_resources(container: Obj) -> None:
    assert container["resources"] == {
        "requests": {"cpu": "50m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "384Mi"},
    }


def test_deployment_security_context(deployment: Obj, container: Obj) -> None:
    pod_sc = deployment["spec"]["template"]["spec"].get("securityContext", {})
    sc = container["securityContext"]

    def effective(key: str) -> Any:
        return sc.get(key, pod_sc.get(key))

    assert effective("runAsNonRoot") is True
    assert effective("runAsUser") == 65532
    assert effective("seccompProfile") == {"type": "RuntimeDefault"}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert not sc.get("privileged", False)
    pod = deployment["spec"]["template"]["spec"]
    for host_namespace in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host_namespace), host_namespace


def test_tmp_is_writable(deployment: Obj, container: Obj) -> None:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_deployment_spreads_replicas(deployment: Obj) -> None:
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spreads = pod["topologySpreadConstraints"]
    assert any(s["topologyKey"] == "kubernetes.io/hostname" for s in spreads)
    for s in spreads:
        assert s["labelSelector"]["matchLabels"].items() <= labels.items()
    preferred = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    for term in preferred:
        assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_pod_disruption_budget(objects: list[Obj], deployment: Obj) -> None:
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 1
    spec = pdbs[0]["spec"]
    assert spec.get("minAvailable") == 1 or spec.get("maxUnavailable") == 1
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


# --- metrics ----------------------------------------------------------------------------------------


def test_metrics_service_and_service_monitor(objects: list[Obj], deployment: Obj, container: Obj) -> None:
    services = [o for o in objects if o["kind"] == "Service"]
    assert len(services) == 1
    service = services[0]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "https"
    assert port["port"] == 8443
    assert port["targetPort"] in ("https", 8443)

    monitor = _find(objects, "ServiceMonitor", NAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "https"
    assert endpoint["scheme"] == "https"
    assert endpoint["path"] == "/metrics"
    # `authorization` from a Secret (bearerTokenFile is deprecated, and refused where Prometheus denies file
    # access to ServiceMonitors): the token of a ServiceAccount that may read /metrics and nothing else.
    assert "bearerTokenFile" not in endpoint
    credentials = endpoint["authorization"]["credentials"]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["tlsConfig"]["insecureSkipVerify"] is True
    secret = _find(objects, "Secret", credentials["name"])
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert credentials["key"] == "token"
    scraper = _find(objects, "ServiceAccount", secret["metadata"]["annotations"]["kubernetes.io/service-account.name"])
    assert secret["metadata"]["namespace"] == scraper["metadata"]["namespace"] == monitor["metadata"]["namespace"]
    binding = _find(objects, "ClusterRoleBinding", scraper["metadata"]["name"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": f"{NAME}-metrics-reader"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": scraper["metadata"]["name"],
                                    "namespace": NAMESPACE}]

    rule = _find(objects, "PrometheusRule", NAME)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"]


# --- kustomize --------------------------------------------------------------------------------------


def _kustomization(directory: Path) -> Obj:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_top_level_kustomization() -> None:
    """The default install is the base: namespace, RBAC, controller; never the CRD (crd/ is applied on its
    own), never monitoring (an opt-in component), never the samples."""
    assert _kustomization(MANIFESTS)["resources"] == ["base"]
    base = _kustomization(MANIFESTS / "base")
    # No namespace transformer: it would put a namespace on the cluster-scoped guard. Every namespaced
    # object names its namespace itself (tests/render checks the rendered install).
    assert "namespace" not in base
    assert set(base["resources"]) == {"namespace.yaml", "../rbac", "../manager", "../guard"}
    for o in _objects_of(["rbac", "manager"]):
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == NAMESPACE, (o["kind"], o["metadata"]["name"])
    namespace = yaml.safe_load((MANIFESTS / "base" / "namespace.yaml").read_text(encoding="utf-8"))
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"]["name"] == NAMESPACE


def _objects_of(directories: list[str]) -> list[Obj]:
    return [doc for d in directories for name in _kustomization(MANIFESTS / d)["resources"]
            for doc in yaml.safe_load_all((MANIFESTS / d / name).read_text(encoding="utf-8")) if doc]


def test_guard_is_off_in_no_guard_and_namespaced() -> None:
    """Both components delete exactly the guard's two objects, by the names guard/ gives them."""
    (policy,) = _objects_of(["guard"])[:1]
    names = {(o["kind"], o["metadata"]["name"]) for o in _objects_of(["guard"])}
    assert names == {("ValidatingAdmissionPolicy", f"{NAME}-guard"),
                     ("ValidatingAdmissionPolicyBinding", f"{NAME}-guard")}
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    for component in ("no-guard", "namespaced"):
        deleted = set()
        for patch in _kustomization(MANIFESTS / component)["patches"]:
            body = yaml.safe_load(patch["patch"])
            if isinstance(body, dict) and body.get("$patch") == "delete" \
                    and body["apiVersion"].startswith("admissionregistration"):
                deleted.add((body["kind"], body["metadata"]["name"]))
        assert deleted == names, component


def test_crd_is_referenced() -> None:
    assert _kustomization(MANIFESTS / "crd")["resources"] == ["moduledeployments.yaml"]


@pytest.mark.parametrize("directory", ["rbac", "manager", "prometheus", "samples", "guard"])
def test_kustomizations_list_every_file(directory: str) -> None:
    path = MANIFESTS / directory
    kustomization = _kustomization(path)
    listed = set(kustomization["resources"]) | set(kustomization.get("configurations", []))
    present = {p.name for p in path.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_sample_is_the_seed() -> None:
    sample = yaml.safe_load((MANIFESTS / "samples" / "moduledeployment.yaml").read_text(encoding="utf-8"))
    assert sample["apiVersion"] == f"{GROUP}/v1alpha1"
    assert sample["kind"] == "ModuleDeployment"
    assert sample["metadata"]["name"] == "moduledeployment-sample-provider"
    assert "namespace" not in sample["metadata"]
    spec = sample["spec"]
    assert spec["baseDeploymentName"] == "dynamic-stock-deployment"
    assert spec["template"]["spec"]["module"] == {
        "name": "dynamic-provider",
        "version": "1.0.2",
        "url": "http://koupleless.oss-cn-shanghai.aliyuncs.com/module-packages/stable/"
        "dynamic-provider-1.0.2-ark-biz.jar",
    }
    assert spec["replicas"] == 1
    assert spec["operationStrategy"] == {
        "needConfirm": False,
        "grayTimeBetweenBatchSeconds": 120,
        "useBeta": False,
        "batchCount": 1,
        "upgradePolicy": "install_then_uninstall",
        "serviceStrategy": {"enableModuleService": True, "port": 8080, "targetPort": 8080},
    }
    assert spec["schedulingStrategy"] == {"schedulingPolicy": "scatter"}
