"""The Helm chart, rendered with the pinned helm: `helm lint`, one test per switch,
values.schema.json rejecting bad values with a message that names the value, and the same RBAC (and
the same controller flags) as the kustomize install for each profile and for namespaced mode."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from tests.render.common import (
    CHART,
    CLUSTER_SCOPED,
    GROUPS,
    GUARD_KINDS,
    MANIFESTS,
    MODULE_CONTROLLER_USERS,
    NAME,
    NAMESPACE,
    ROOT,
    VAP_API,
    Obj,
    bindings,
    container,
    find,
    guard,
    guard_group,
    guard_users,
    helm_run,
    helm_template,
    helm_template_error,
    kinds,
    kustomize,
    lease_name,
    lease_role_names,
    normalize,
    rbac,
)

DEFAULT_KINDS = sorted(["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole",
                        "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "PodDisruptionBudget", "Service"])


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return helm_template()


def _args(objects: list[Obj]) -> list[str]:
    args = container(objects)["args"]
    assert isinstance(args, list)
    return args


def test_helm_lint() -> None:
    for sets in ([], ["profile=koupleless"], ["namespaced.enabled=true", "metrics.secure=false"],
                 ["serviceMonitor.enabled=true", "prometheusRule.enabled=true", "dashboard.enabled=true"]):
        args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE]
        for s in sets:
            args += ["--set", s]
        proc = helm_run(*args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout


def test_default_render(default: list[Obj]) -> None:
    assert kinds(default) == DEFAULT_KINDS
    for o in default:
        if o["kind"] not in CLUSTER_SCOPED:
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == NAME, o["kind"]
    deployment = find(default, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    c = container(default)
    assert c["image"] == "module-service-controller:0.1.0"
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "384Mi"}}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https": 8443, "health": 8081}
    pdb = find(default, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_crd_install_and_keep_switches(default: list[Obj]) -> None:
    crd = find(default, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"moduledeployments.{GROUPS['seed']}"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    source = yaml.safe_load((MANIFESTS / "crd" / "moduledeployments.yaml").read_text(encoding="utf-8"))
    assert crd["spec"] == source["spec"]
    unkept = find(helm_template("crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]
    assert unkept["spec"] == source["spec"]
    assert "CustomResourceDefinition" not in kinds(helm_template("crds.install=false"))


@pytest.mark.parametrize("profile", ["koupleless", "sofa-serverless"])
def test_profile(profile: str, default: list[Obj]) -> None:
    objects = helm_template(f"profile={profile}")
    assert "CustomResourceDefinition" not in kinds(objects), "a Koupleless install owns its CRD"
    lease = f"--leader-elect-name={NAME}-{profile}"
    assert _args(objects) == [lease if a == f"--leader-elect-name={NAME}-seed" else a for a in _args(default)] + [
        f"--profile={profile}"]
    rules = normalize(find(objects, "ClusterRole", NAME)["rules"])
    assert {g for g, r in rules if r.startswith("moduledeployments")} == {GROUPS[profile]}
    assert GROUPS["seed"] not in json.dumps([o for o in objects if o["kind"] != "CustomResourceDefinition"])


def test_api_identity_overrides() -> None:
    objects = helm_template("profile=koupleless", "apiGroup=example.com", "apiVersion=v1beta1",
                            "moduleLabelPrefix=module.example.com/", "adoptUnownedServices=false")
    assert _args(objects)[-5:] == ["--profile=koupleless", "--api-group=example.com", "--api-version=v1beta1",
                                   "--module-label-prefix=module.example.com/", "--adopt-unowned-services=false"]
    rules = normalize(find(objects, "ClusterRole", NAME)["rules"])
    assert {g for g, r in rules if r.startswith("moduledeployments")} == {"example.com"}
    # The seed profile with an overridden group: not the seed's CRD (it would not match).
    assert "CustomResourceDefinition" not in kinds(helm_template("apiGroup=example.com"))


def test_image_tag_and_digest() -> None:
    assert container(helm_template("image.repository=registry.example/msc", "image.tag=1.2.3"))["image"] == \
        "registry.example/msc:1.2.3"
    digest = "sha256:" + "a" * 64
    c = container(helm_template("image.repository=registry.example/msc", "image.tag=1.2.3", f"image.digest={digest}",
                                "image.pullPolicy=Always"))
    assert c["image"] == f"registry.example/msc@{digest}"
    assert c["imagePullPolicy"] == "Always"


def test_replicas_resources_args_env() -> None:
    objects = helm_template("replicas=5", "resources.limits.memory=1Gi", "args[0]=--workers=8",
                            "env[0].name=MSC_LOG_LEVEL", "env[0].value=debug")
    assert find(objects, "Deployment")["spec"]["replicas"] == 5
    c = container(objects)
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert c["args"][-1] == "--workers=8"
    assert c["env"][-1] == {"name": "MSC_LOG_LEVEL", "value": "debug"}


def test_leader_election() -> None:
    objects = helm_template("leaderElection.leaseDuration=30s", "leaderElection.renewDeadline=20s",
                            "leaderElection.retryPeriod=4s")
    assert _args(objects)[:5] == ["--leader-elect", f"--leader-elect-name={NAME}-seed",
                                  "--leader-elect-lease-duration=30s", "--leader-elect-renew-deadline=20s",
                                  "--leader-elect-retry-period=4s"]
    single = helm_template("leaderElection.enabled=false", "replicas=1")
    assert "--leader-elect" not in _args(single)
    assert not [o for o in single if o["kind"] in ("Role", "RoleBinding")], "no Lease, no Lease RBAC"
    assert "leaderElection.enabled=true" in helm_template_error("leaderElection.enabled=false")


def test_metrics_switches() -> None:
    plain = helm_template("metrics.secure=false")
    c = container(plain)
    assert "--metrics-secure" not in c["args"]
    assert "--metrics-bind-address=:8080" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "health": 8081}
    (port,) = find(plain, "Service")["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")
    secure = helm_template("metrics.port=9443")
    assert "--metrics-bind-address=:9443" in _args(secure)
    assert "--metrics-secure" in _args(secure)
    off = helm_template("metrics.enabled=false")
    assert "--metrics-bind-address=0" in _args(off)
    assert "Service" not in kinds(off)
    assert [p["name"] for p in container(off)["ports"]] == ["health"]


def test_probes() -> None:
    c = container(helm_template("probes.port=9000", "probes.liveness.periodSeconds=7",
                                "probes.readiness.failureThreshold=9"))
    assert "--health-probe-bind-address=:9000" in c["args"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["health"] == 9000
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["livenessProbe"]["periodSeconds"] == 7
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert c["readinessProbe"]["failureThreshold"] == 9


def test_scheduling(default: list[Obj]) -> None:
    pod = find(default, "Deployment")["spec"]["template"]["spec"]
    assert [s["topologyKey"] for s in pod["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname", "topology.kubernetes.io/zone"]
    assert pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "nodeSelector" not in pod
    assert "tolerations" not in pod
    objects = helm_template("nodeSelector.pool=system", "tolerations[0].key=dedicated",
                            "tolerations[0].operator=Exists", "affinity.nodeAffinity.x=y",
                            "topologySpreadConstraints[0].maxSkew=2",
                            "topologySpreadConstraints[0].topologyKey=zone",
                            "topologySpreadConstraints[0].whenUnsatisfiable=DoNotSchedule",
                            "priorityClassName=system-cluster-critical")
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]
    assert pod["affinity"] == {"nodeAffinity": {"x": "y"}}
    assert pod["topologySpreadConstraints"] == [{"maxSkew": 2, "topologyKey": "zone",
                                                 "whenUnsatisfiable": "DoNotSchedule"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    bare = find(helm_template("defaultScheduling=false"), "Deployment")["spec"]["template"]["spec"]
    assert "affinity" not in bare
    assert "topologySpreadConstraints" not in bare


def test_pod_disruption_budget() -> None:
    assert "PodDisruptionBudget" not in kinds(helm_template("podDisruptionBudget.enabled=false"))
    pdb = find(helm_template("podDisruptionBudget.maxUnavailable=null", "podDisruptionBudget.minAvailable=2"),
               "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in pdb["spec"]
    assert "not both" in helm_template_error("podDisruptionBudget.minAvailable=2")


def test_monitoring_toggles(default: list[Obj]) -> None:
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & set(kinds(default)), "monitoring is opt-in"
    objects = helm_template("serviceMonitor.enabled=true", "serviceMonitor.labels.release=kps",
                            "serviceMonitor.interval=15s", "prometheusRule.enabled=true",
                            "prometheusRule.labels.release=kps", "dashboard.enabled=true",
                            "dashboard.namespace=grafana", "dashboard.annotations.grafana_folder=Koupleless")
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    service = find(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["scheme"], endpoint["interval"]) == ("https", "https", "15s")
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    rule = find(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = yaml.safe_load((ROOT / "observability" / "alerts.yaml").read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == alerts["groups"]
    dashboard = find(objects, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", "Grafana's sidecar label"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Koupleless"}
    source = json.loads((ROOT / "observability" / "grafana-dashboard.json").read_text(encoding="utf-8"))
    assert json.loads(dashboard["data"]["module-service-controller.json"]) == source
    plain = find(helm_template("serviceMonitor.enabled=true", "metrics.secure=false"), "ServiceMonitor")
    assert plain["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s", "scheme": "http"}]
    assert "metrics.enabled=true" in helm_template_error("serviceMonitor.enabled=true", "metrics.enabled=false")


def test_namespaced_mode() -> None:
    objects = helm_template("namespaced.enabled=true", "metrics.secure=false",
                            "namespaced.namespaces={team-a,team-b}")
    assert not [o["kind"] for o in objects if o["kind"] in CLUSTER_SCOPED]
    roles = rbac(objects)
    assert set(roles) == {("Role", "team-a", NAME), ("Role", "team-b", NAME),
                          ("Role", NAMESPACE, f"{NAME}-leader-election")}
    for ns in ("team-a", "team-b"):
        ref, subjects = bindings(objects)["RoleBinding", ns, NAME]
        assert ref == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME}
        assert subjects == [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]
    args = _args(objects)
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    own = helm_template("namespaced.enabled=true", "metrics.secure=false")
    assert [a for a in _args(own) if a.startswith("--namespace")] == [f"--namespace={NAMESPACE}"]
    assert "metrics.secure=false" in helm_template_error("namespaced.enabled=true")


# (--set, a fragment the error must contain: the value's path and what is wrong)
BAD_VALUES = [
    ("profile=bogus", "at '/profile': value must be one of 'seed', 'koupleless', 'sofa-serverless'"),
    ("image.digest=sha256:abc", "at '/image/digest'"),
    ("image.tag=bad tag", "at '/image/tag'"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    ("replicas=-1", "at '/replicas'"),
    ("replicas=two", "at '/replicas'"),
    ("metrics.port=70000", "at '/metrics/port'"),
    ("probes.port=0", "at '/probes/port'"),
    ("leaderElection.leaseDuration=15 seconds", "at '/leaderElection/leaseDuration'"),
    ("apiGroup=Not_A_Group", "at '/apiGroup'"),
    ("moduleLabelPrefix=no-slash", "at '/moduleLabelPrefix'"),
    ("args[0]=workers=8", "at '/args/0'"),
    ("namespaced.namespaces={Team_A}", "at '/namespaced/namespaces/0'"),
    ("crds.install=maybe", "at '/crds/install'"),
    ("serviceMonitor.enable=true", "additional properties 'enable' not allowed"),
    ("podDisruptionBudget.maxUnavailable=lots", "at '/podDisruptionBudget/maxUnavailable'"),
    ("guard.enabled=maybe", "at '/guard/enabled'"),
    ("guard.users[0]=", "at '/guard/users/0'"),
    ("guard.user=x", "additional properties 'user' not allowed"),
]


@pytest.mark.parametrize(("value", "message"), BAD_VALUES, ids=[v for v, _ in BAD_VALUES])
def test_schema_rejects_bad_values(value: str, message: str) -> None:
    error = helm_template_error(value)
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error, error


# ---------------------------------------------------------------------------------------------- same RBAC
# (kustomize directory, helm --set): the same install both ways.
SAME_INSTALLS = [
    ("", []),
    ("variants/koupleless", ["profile=koupleless"]),
    ("variants/sofa-serverless", ["profile=sofa-serverless"]),
    ("variants/namespaced", ["namespaced.enabled=true", "metrics.secure=false"]),
]


@pytest.mark.parametrize(("directory", "sets"), SAME_INSTALLS, ids=["seed", "koupleless", "sofa-serverless",
                                                                     "namespaced"])
def test_kustomize_and_helm_render_the_same_rbac(directory: str, sets: list[str]) -> None:
    """With the release name module-service-controller the chart's object names are the kustomize
    install's: the same Roles and ClusterRoles with the same rules, the same bindings, the same
    ServiceAccount and the same controller flags."""
    kustomized = kustomize(MANIFESTS / directory)
    helmed = helm_template(*sets)
    assert rbac(helmed) == rbac(kustomized)
    # Read access to exactly the profile's CRD (normalize ignores resourceNames).
    assert _crd_names(helmed) == _crd_names(kustomized)
    assert bindings(helmed) == bindings(kustomized)
    accounts = [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in helmed if o["kind"] == "ServiceAccount"]
    assert accounts == [(NAMESPACE, NAME)]
    assert accounts == [(o["metadata"]["namespace"], o["metadata"]["name"])
                        for o in kustomized if o["kind"] == "ServiceAccount"]
    # Kustomize spells the served namespace $(POD_NAMESPACE); Helm knows it at render time.
    k_args = [a.replace("$(POD_NAMESPACE)", NAMESPACE) for a in _args(kustomized)]
    assert _args(helmed) == k_args
    # The same Lease, allowed by name alike.
    assert lease_role_names(helmed) == lease_role_names(kustomized) == [[lease_name(helmed)], []]
    # The same guard, where the cluster serves the API (none in namespaced mode): one CEL source.
    served = helm_template(*sets, api_versions=(VAP_API,))
    h_guard, k_guard = guard(served), guard(kustomized)
    assert (h_guard is None) == (k_guard is None) == ("namespaced.enabled=true" in sets)
    if h_guard is not None and k_guard is not None:
        for h, k in zip(h_guard, k_guard, strict=True):
            assert h["metadata"]["name"] == k["metadata"]["name"] == f"{NAME}-guard"
            assert h["spec"] == k["spec"]


def _crd_names(objects: list[Obj]) -> list[list[str]]:
    return [rule.get("resourceNames", []) for o in objects if o["kind"] == "ClusterRole"
            for rule in o["rules"] if "customresourcedefinitions" in rule.get("resources", [])]


def test_copies_are_in_sync() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync_copies.py"), "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_monitoring_selects_this_release() -> None:
    """Another release name and namespace: the alerts and the dashboard select the job the ServiceMonitor
    produces (named after this release's metrics Service) and the release namespace."""
    objects = helm_template("serviceMonitor.enabled=true", "prometheusRule.enabled=true", "dashboard.enabled=true",
                            namespace="ops", release="msc")
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-metrics"))
    job = service["metadata"]["name"]
    assert job == "msc-module-service-controller-metrics"
    selector = f'job="{job}", namespace="ops"'
    rule = find(objects, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(exprs) == 9
    for expr in exprs:
        assert selector in expr, expr
        assert "module-service-system" not in expr
        assert '"module-service-controller-metrics"' not in expr
    board = json.loads(find(objects, "ConfigMap")["data"]["module-service-controller.json"])
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["job"]["current"]["value"] == job
    assert variables["namespace"]["current"]["value"] == "ops"
    assert f'job=\\"{job}\\"' in json.dumps(variables["cluster"]["query"])


# ------------------------------------------------------------------------------------- guard and Lease
@pytest.mark.parametrize("profile", list(GROUPS))
def test_guard_and_lease_per_profile(profile: str) -> None:
    objects = helm_template(f"profile={profile}", api_versions=(VAP_API,))
    found = guard(objects)
    assert found is not None
    policy, binding = found
    assert policy["metadata"]["name"] == f"{NAME}-guard"
    assert policy["metadata"]["labels"]["app.kubernetes.io/instance"] == NAME
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert guard_group(policy) == GROUPS[profile]
    assert guard_users(policy) == MODULE_CONTROLLER_USERS
    assert policy["spec"]["failurePolicy"] == "Ignore"
    # The group the controller serves: --profile's (the seed is the default, without the flag).
    assert [a for a in _args(objects) if a.startswith("--profile")] == (
        [] if profile == "seed" else [f"--profile={profile}"])
    lease = lease_name(objects)
    assert lease == f"{NAME}-{profile}"
    role = find(objects, "Role", f"{NAME}-leader-election")
    assert [(r.get("resourceNames"), r["verbs"]) for r in role["rules"]] == [
        ([lease], ["get", "update"]), (None, ["create"])]


def test_guard_follows_an_api_group_override() -> None:
    policy = find(helm_template("profile=koupleless", "apiGroup=modules.example.com", api_versions=(VAP_API,)),
                  "ValidatingAdmissionPolicy")
    assert guard_group(policy) == "modules.example.com"


def test_guard_switches() -> None:
    """On by default where the cluster serves the API; off with guard.enabled=false, in namespaced mode,
    and on a cluster without the API (what `helm template` assumes unless told)."""
    assert guard(helm_template()) is None, "helm template without --api-versions: a cluster without the API"
    old = helm_template("profile=koupleless", api_versions=("admissionregistration.k8s.io/v1",))
    assert not set(GUARD_KINDS) & set(kinds(old)), "the group version alone is not the kind"
    assert guard(helm_template(api_versions=(VAP_API,))) is not None
    assert guard(helm_template("guard.enabled=false", api_versions=(VAP_API,))) is None
    namespaced = helm_template("namespaced.enabled=true", "metrics.secure=false", api_versions=(VAP_API,))
    assert guard(namespaced) is None, "a namespaced install creates nothing cluster-scoped"
    assert not [o["kind"] for o in namespaced if o["kind"] in CLUSTER_SCOPED]
    # Without leader election there is no Lease and no Lease RBAC, but still a guard.
    single = helm_template("leaderElection.enabled=false", "replicas=1", api_versions=(VAP_API,))
    assert lease_name(single) is None
    assert lease_role_names(single) == []
    assert guard(single) is not None


def test_guard_users() -> None:
    users = ["system:serviceaccount:koupleless:module-controller", 'odd "quoted" <user>']
    policy = find(helm_template(f"guard.users[0]={users[0]}", f"guard.users[1]={users[1]}",
                                api_versions=(VAP_API,)), "ValidatingAdmissionPolicy")
    assert guard_users(policy) == users
    # An empty list would refuse nobody: the schema asks for guard.enabled=false instead.
    proc = helm_run("template", NAME, str(CHART), "--set-json", "guard.users=[]")
    assert proc.returncode != 0
    assert "at '/guard/users': minItems" in proc.stderr, proc.stderr


def test_two_releases_in_one_namespace() -> None:
    """koupleless and sofa-serverless side by side (a migration): a Lease and a policy each."""
    a = helm_template("profile=koupleless", release="msc-k", api_versions=(VAP_API,))
    b = helm_template("profile=sofa-serverless", release="msc-s", api_versions=(VAP_API,))
    assert lease_name(a) == "msc-k-module-service-controller-koupleless"
    assert lease_name(b) == "msc-s-module-service-controller-sofa-serverless"
    guard_a, guard_b = guard(a), guard(b)
    assert guard_a is not None
    assert guard_b is not None
    guards = [guard_a, guard_b]
    assert [g[0]["metadata"]["name"] for g in guards] == ["msc-k-module-service-controller-guard",
                                                          "msc-s-module-service-controller-guard"]
    assert [guard_group(g[0]) for g in guards] == [GROUPS["koupleless"], GROUPS["sofa-serverless"]]
    # The same release name with another profile (a profile switch on upgrade) takes another Lease.
    assert lease_name(helm_template("profile=koupleless", release="msc-s")) != lease_name(b)


def test_long_names_fit() -> None:
    """The fullname is cut to 63 characters; the Lease (a DNS subdomain, 253) and the policy add a suffix."""
    release = "r" * 53  # Helm's longest release name
    objects = helm_template("profile=sofa-serverless", "fullnameOverride=" + "f" * 70, release=release,
                            api_versions=(VAP_API,))
    lease = lease_name(objects)
    assert lease == "f" * 63 + "-sofa-serverless"
    assert lease_role_names(objects)[0] == [lease]
    policy = find(objects, "ValidatingAdmissionPolicy")
    assert policy["metadata"]["name"] == "f" * 63 + "-guard"
    for name in (lease, policy["metadata"]["name"]):
        assert len(name) <= 253
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name), name
