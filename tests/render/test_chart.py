"""The Helm chart, rendered with the pinned helm: `helm lint`, one test per switch,
values.schema.json rejecting bad values with a message that names the value, and the same RBAC (and
the same controller flags) as the kustomize install for each profile and for namespaced mode."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
    alert_selectors,
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
    lease_name,
    lease_role_names,
    metrics_service,
    normalize,
    rbac,
    restricted_problems,
    shutdown_needs,
)

# The controller's, the metrics-reader and the aggregated view and edit ClusterRoles.
DEFAULT_KINDS = sorted(["CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRole",
                        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                        "PodDisruptionBudget", "Service"])
MONITORING = ("serviceMonitor.enabled=true", "prometheusRule.enabled=true", "dashboard.enabled=true")
SECURE_RULES = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}


@pytest.fixture(scope="module")
def default() -> list[Obj]:
    return helm_template()


def _args(objects: list[Obj]) -> list[str]:
    args = container(objects)["args"]
    assert isinstance(args, list)
    return args


LINT_VALUE_SETS = [
    [],
    ["profile=koupleless"],
    ["namespaced.enabled=true", "metrics.secure=false"],
    list(MONITORING),
    ["profile=sofa-serverless", "podMonitor.enabled=true", "prometheusRule.enabled=true",
     "podMonitor.scrapeTimeout=10s", "podMonitor.relabelings[0].targetLabel=team",
     "podMonitor.relabelings[0].replacement=a"],
    ["metrics.secure=false", *MONITORING, "rbac.aggregateClusterRoles=false", "guard.enabled=false"],
    ["metrics.enabled=false", "podSecurityContext.runAsUser=null", "podSecurityContext.runAsGroup=null",
     "podSecurityContext.fsGroup=null", "logLevel=debug", "logFormat=console", "commonLabels.team=a"],
    ["metrics.certSecret=msc-metrics-tls", "extraVolumes[0].name=ca", "extraVolumes[0].configMap.name=ca",
     "extraVolumeMounts[0].name=ca", "extraVolumeMounts[0].mountPath=/etc/ca", "terminationGracePeriodSeconds=60",
     "leaderElection.renewDeadline=20s", "leaderElection.leaseDuration=30s"],
]


def test_helm_lint() -> None:
    for sets in LINT_VALUE_SETS:
        args = ["lint", str(CHART), "--strict", "--namespace", NAMESPACE]
        for s in sets:
            args += ["--set", s]
        proc = helm_run(*args)
        assert proc.returncode == 0, (sets, proc.stdout + proc.stderr)
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
                            "env[0].name=MSC_WATCH_IDLE_TIMEOUT", "env[0].value=90s")
    assert find(objects, "Deployment")["spec"]["replicas"] == 5
    c = container(objects)
    assert c["resources"]["limits"]["memory"] == "1Gi"
    assert c["args"][-1] == "--workers=8"
    assert c["env"][-1] == {"name": "MSC_WATCH_IDLE_TIMEOUT", "value": "90s"}


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
    assert "bearerTokenFile" not in endpoint
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {
        "name": f"{NAME}-metrics-scraper-token", "key": "token"}}
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


# ------------------------------------------------------------------------------------- alerts follow metrics
def test_alerts_need_metrics() -> None:
    """Without /metrics, ModuleServiceControllerDown (absent(up)) and NoLeader would fire forever: refused."""
    error = helm_template_error("prometheusRule.enabled=true", "metrics.enabled=false")
    assert "prometheusRule.enabled=true needs metrics.enabled=true" in error
    assert "podMonitor.enabled=true needs metrics.enabled=true" in helm_template_error(
        "podMonitor.enabled=true", "metrics.enabled=false")


# ------------------------------------------------------------------------------------- the Pod
def test_security_contexts_are_values_and_meet_restricted(default: list[Obj]) -> None:
    pod = find(default, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}}
    assert restricted_problems(pod) == []
    # A platform that assigns UIDs (OpenShift's restricted SCC): null leaves them out, still restricted.
    assigned = find(helm_template("podSecurityContext.runAsUser=null", "podSecurityContext.runAsGroup=null",
                                  "podSecurityContext.fsGroup=null"), "Deployment")["spec"]["template"]["spec"]
    assert assigned["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert "runAsUser" not in assigned["containers"][0]["securityContext"]
    assert restricted_problems(assigned) == []
    other = find(helm_template("podSecurityContext.runAsUser=1000770000",
                               "securityContext.readOnlyRootFilesystem=false"), "Deployment")
    other = other["spec"]["template"]["spec"]
    assert other["securityContext"]["runAsUser"] == 1000770000
    assert other["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is False
    # The checker can fail: a root container is not restricted.
    root = find(helm_template("podSecurityContext.runAsUser=0", "podSecurityContext.runAsNonRoot=false",
                              "securityContext.runAsNonRoot=false"), "Deployment")["spec"]["template"]["spec"]
    assert restricted_problems(root)


def test_grace_period_covers_the_shutdown(default: list[Obj]) -> None:
    """SIGTERM: the drain (--shutdown-timeout) plus the Lease release (bounded by the renew deadline) must end
    before the kubelet kills the process. The default leaves room; a shorter explicit one is refused."""
    pod = find(default, "Deployment")["spec"]["template"]["spec"]
    c = container(default)
    assert "--shutdown-timeout=20s" in c["args"]
    assert shutdown_needs(c) == 30
    assert pod["terminationGracePeriodSeconds"] == 35
    # A longer renew deadline, a longer drain through args, or a drain left to MSC_SHUTDOWN_TIMEOUT all count.
    for sets, grace in ((("leaderElection.renewDeadline=20s", "leaderElection.leaseDuration=30s"), 45),
                        (("args[0]=--shutdown-timeout=1m",), 75),
                        (("shutdownTimeout=", "env[0].name=MSC_SHUTDOWN_TIMEOUT", "env[0].value=40s"), 55),
                        (("shutdownTimeout=",), 40),
                        (("shutdownTimeout=500ms", "leaderElection.enabled=false", "replicas=1"), 6)):
        objects = helm_template(*sets)
        assert find(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace, sets
        assert grace >= shutdown_needs(container(objects)) + 5, sets
    explicit = helm_template("terminationGracePeriodSeconds=90")
    assert find(explicit, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90
    error = helm_template_error("terminationGracePeriodSeconds=25")
    assert "terminationGracePeriodSeconds=25 is shorter than the 30s" in error
    assert "terminationGracePeriodSeconds=40 is shorter than the 45s" in helm_template_error(
        "terminationGracePeriodSeconds=40", "leaderElection.renewDeadline=25s", "leaderElection.leaseDuration=40s")


def test_log_flags_and_shadowed_variables() -> None:
    c = container(helm_template("logLevel=debug", "logFormat=console"))
    assert [a for a in c["args"] if a.startswith("--log-")] == ["--log-level=debug", "--log-format=console"]
    assert {e["name"] for e in c["env"]} == {"MSC_LEADER_ELECT_NAMESPACE", "TMPDIR"}
    # A variable whose flag the chart passes would be ignored (the flag wins), one the chart sets would be
    # there twice: both are refused, naming the value to use.
    error = helm_template_error("env[0].name=MSC_LOG_LEVEL", "env[0].value=debug")
    assert "env: MSC_LOG_LEVEL would be ignored, the flag --log-level is on the command line" in error
    assert "--shutdown-timeout" in helm_template_error("env[0].name=MSC_SHUTDOWN_TIMEOUT", "env[0].value=1m")
    assert "--workers" in helm_template_error("args[0]=--workers=2", "env[0].name=MSC_WORKERS",
                                              strings=("env[0].value=4",))
    assert "env: TMPDIR is set by the chart" in helm_template_error("env[0].name=TMPDIR", "env[0].value=/x")
    assert "listed twice" in helm_template_error("env[0].name=A", "env[0].value=x", "env[1].name=A",
                                                 "env[1].value=y")


def test_extra_volumes_and_metrics_certificate() -> None:
    objects = helm_template("metrics.certSecret=msc-metrics-tls", "extraVolumes[0].name=ca",
                            "extraVolumes[0].configMap.name=corp-ca", "extraVolumeMounts[0].name=ca",
                            "extraVolumeMounts[0].mountPath=/etc/ssl/corp", "extraVolumeMounts[0].readOnly=true")
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-certs"] == {"name": "metrics-certs", "secret": {"secretName": "msc-metrics-tls"}}
    assert volumes["ca"] == {"name": "ca", "configMap": {"name": "corp-ca"}}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    cert_dir = mounts["metrics-certs"]["mountPath"]
    assert mounts["metrics-certs"]["readOnly"] is True
    assert f"--metrics-cert-dir={cert_dir}" in c["args"]
    assert mounts["ca"] == {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert restricted_problems(pod) == []
    assert "metrics.certSecret" in helm_template_error("metrics.certSecret=x", "metrics.secure=false")
    assert not [a for a in container(helm_template())["args"] if a.startswith("--metrics-cert-dir")]


def test_common_labels_on_every_object() -> None:
    objects = helm_template("commonLabels.team=payments", *MONITORING, api_versions=(VAP_API,),
                            strings=("commonLabels.cost-center=42",))
    for o in objects:
        assert o["metadata"]["labels"]["team"] == "payments", (o["kind"], o["metadata"]["name"])
        assert o["metadata"]["labels"]["cost-center"] == "42", o["kind"]
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "payments"
    assert "team" not in deployment["spec"]["selector"]["matchLabels"], "selectors are immutable: never there"
    # The chart's own labels cannot be overridden (the selectors and Helm's ownership depend on them).
    error = helm_template_error("commonLabels.app\\.kubernetes\\.io/instance=x")
    assert "invalid propertyName 'app.kubernetes.io/instance'" in error, error


# ------------------------------------------------------------------------------------- RBAC
@pytest.mark.parametrize("profile", list(GROUPS))
def test_aggregated_view_and_edit_roles(profile: str) -> None:
    objects = helm_template(f"profile={profile}")
    view, edit = find(objects, "ClusterRole", f"{NAME}-view"), find(objects, "ClusterRole", f"{NAME}-edit")
    labels = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k, v in view["metadata"]["labels"].items() if k.startswith(labels) and v == "true"} == {
        f"{labels}view", f"{labels}edit", f"{labels}admin"}
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith(labels) and v == "true"} == {
        f"{labels}edit", f"{labels}admin"}
    assert normalize(view["rules"]) == {(GROUPS[profile], "moduledeployments"): frozenset({"get", "list", "watch"})}
    assert normalize(edit["rules"]) == {(GROUPS[profile], "moduledeployments"): frozenset(
        {"create", "delete", "deletecollection", "patch", "update"})}
    off = helm_template("rbac.aggregateClusterRoles=false")
    names = {o["metadata"]["name"] for o in off if o["kind"] == "ClusterRole"}
    assert names == {NAME, f"{NAME}-metrics-reader"}
    namespaced = helm_template("namespaced.enabled=true", "metrics.secure=false")
    assert not [o for o in namespaced if o["kind"] == "ClusterRole"]


@pytest.mark.parametrize("sets", [("metrics.secure=false",), ("metrics.enabled=false",)])
def test_review_rights_only_for_secure_metrics(sets: tuple[str, ...], default: list[Obj]) -> None:
    """TokenReview, SubjectAccessReview and the metrics-reader ClusterRole serve secure metrics only."""
    assert set(normalize(find(default, "ClusterRole", NAME)["rules"])) >= SECURE_RULES
    assert find(default, "ClusterRole", f"{NAME}-metrics-reader")
    objects = helm_template(*sets)
    rules = normalize(find(objects, "ClusterRole", NAME)["rules"])
    assert not SECURE_RULES & set(rules)
    assert not [o for o in objects if o["metadata"]["name"].endswith("metrics-reader")]
    # The rest of the role is unchanged.
    default_rules = normalize(find(default, "ClusterRole", NAME)["rules"])
    assert rules == {k: v for k, v in default_rules.items() if k not in SECURE_RULES}


# ------------------------------------------------------------------------------------- scraping
def test_service_monitor_settings() -> None:
    objects = helm_template("serviceMonitor.enabled=true", "serviceMonitor.scrapeTimeout=10s",
                            "serviceMonitor.annotations.note=x", "serviceMonitor.relabelings[0].targetLabel=team",
                            "serviceMonitor.relabelings[0].replacement=payments",
                            "serviceMonitor.metricRelabelings[0].action=drop",
                            "serviceMonitor.metricRelabelings[0].sourceLabels[0]=__name__",
                            "serviceMonitor.metricRelabelings[0].regex=process_.*")
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["annotations"] == {"note": "x"}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["scrapeTimeout"] == "10s"
    assert endpoint["relabelings"] == [{"targetLabel": "team", "replacement": "payments"}]
    assert endpoint["metricRelabelings"] == [{"action": "drop", "sourceLabels": ["__name__"], "regex": "process_.*"}]
    assert endpoint["tlsConfig"] == {"insecureSkipVerify": True}
    # The chart's scraper identity: a token of a ServiceAccount bound to the metrics-reader, nothing more.
    secret = find(objects, "Secret", f"{NAME}-metrics-scraper-token")
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"] == {"kubernetes.io/service-account.name": f"{NAME}-metrics-scraper"}
    assert find(objects, "ServiceAccount", f"{NAME}-metrics-scraper")["automountServiceAccountToken"] is False
    binding = find(objects, "ClusterRoleBinding", f"{NAME}-metrics-scraper")
    assert binding["roleRef"]["name"] == f"{NAME}-metrics-reader"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{NAME}-metrics-scraper", "namespace": NAMESPACE}]
    # Credentials of one's own: no scraper objects.
    own = helm_template("serviceMonitor.enabled=true", "serviceMonitor.authorization.credentials.name=prom-token",
                        "serviceMonitor.authorization.credentials.key=token")
    (endpoint,) = find(own, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["authorization"] == {"credentials": {"name": "prom-token", "key": "token"}}
    assert not [o for o in own if "metrics-scraper" in o["metadata"]["name"]]
    # Plain metrics: no credentials at all.
    plain = helm_template("serviceMonitor.enabled=true", "metrics.secure=false")
    assert not [o for o in plain if "metrics-scraper" in o["metadata"]["name"]]


def test_pod_monitor() -> None:
    """The PodMonitor scrapes the Pods' metrics port and sets the ServiceMonitor's job, which the alerts and
    the dashboard select (a PodMonitor's own job would be <namespace>/<name>)."""
    objects = helm_template("podMonitor.enabled=true", "prometheusRule.enabled=true", "dashboard.enabled=true",
                            "podMonitor.labels.release=kps", "podMonitor.relabelings[0].targetLabel=team",
                            "podMonitor.relabelings[0].replacement=a", namespace="ops", release="msc")
    assert "ServiceMonitor" not in kinds(objects)
    monitor = find(objects, "PodMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    pod_labels = find(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "https"
    assert endpoint["port"] in {p["name"] for p in container(objects)["ports"]}
    job = "msc-module-service-controller-metrics"
    assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "job", "replacement": job},
                                       {"targetLabel": "team", "replacement": "a"}]
    assert endpoint["authorization"]["credentials"]["name"] == "msc-module-service-controller-metrics-scraper-token"
    for _, _, matchers in alert_selectors(find(objects, "PrometheusRule")):
        assert (matchers["job"], matchers["namespace"]) == (job, "ops")
    assert "choose one" in helm_template_error("podMonitor.enabled=true", "serviceMonitor.enabled=true")


# ------------------------------------------------------------------------------------- names and labels
def test_chart_label_with_build_metadata(tmp_path: Path) -> None:
    """SemVer build metadata (0.1.0+build.7) has a "+", which no label value may hold."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    text = (chart / "Chart.yaml").read_text(encoding="utf-8")
    (chart / "Chart.yaml").write_text(text.replace("\nversion: 0.1.0\n", "\nversion: 0.1.0+build.7\n"),
                                      encoding="utf-8")
    proc = helm_run("template", NAME, str(chart), "--namespace", NAMESPACE, "--api-versions", VAP_API)
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert find(objects, "CustomResourceDefinition")
    for o in objects:
        assert o["metadata"]["labels"]["helm.sh/chart"] == "module-service-controller-0.1.0_build.7", o["kind"]
        for value in o["metadata"]["labels"].values():
            assert re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]?", value), (o["kind"], value)


def test_metrics_service_name_fits_with_a_long_release() -> None:
    """A Service name is a DNS-1035 label (63 characters): "-metrics" is added before the cut."""
    release = "r" * 53  # Helm's longest release name
    objects = helm_template("serviceMonitor.enabled=true", "prometheusRule.enabled=true", release=release)
    service = metrics_service(objects)
    name = service["metadata"]["name"]
    assert len(name) <= 63
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert name.startswith(release)
    # The alerts select that name as the job.
    for _, _, matchers in alert_selectors(find(objects, "PrometheusRule")):
        assert matchers["job"] == name


# ------------------------------------------------------------------------------------- schema
# (--set, a fragment the error must contain)
CLOSED_SHAPES = [
    ("resources.request.cpu=1", "additional properties 'request' not allowed"),
    ("resources.requests.cpu=lots", "at '/resources/requests/cpu'"),
    ("resources.limits.memory=1Gb", "at '/resources/limits/memory'"),
    ("env[0].value=x", "missing property 'name'"),
    ("env[0].name=A,env[0].valeu=x", "additional properties 'valeu' not allowed"),
    ("env[0].name=A,env[0].valueFrom.secretKeyRef.name=s", "missing property 'key'"),
    ("env[0].name=A,env[0].valueFrom.fieldRef.fieldPath=metadata.name,env[0].valueFrom.secretKeyRef.key=k",
     "at '/env/0/valueFrom'"),
    ("env[0].name=A,env[0].value=x,env[0].valueFrom.fieldRef.fieldPath=metadata.name", "at '/env/0'"),
    ("extraVolumeMounts[0].name=a", "missing property 'mountPath'"),
    ("podSecurityContext.runAsUsr=1", "additional properties 'runAsUsr' not allowed"),
    ("logLevel=trace", "at '/logLevel'"),
    ("terminationGracePeriodSeconds=-1", "at '/terminationGracePeriodSeconds'"),
    ("serviceMonitor.authorization.type=Basic,serviceMonitor.authorization.credentials.name=s,"
     "serviceMonitor.authorization.credentials.key=k", "at '/serviceMonitor/authorization/type'"),
]


@pytest.mark.parametrize(("value", "message"), CLOSED_SHAPES, ids=[v for v, _ in CLOSED_SHAPES])
def test_schema_closes_upstream_shapes(value: str, message: str) -> None:
    error = helm_template_error(*value.split(","))
    assert "values don't meet the specifications of the schema" in error, error
    assert message in error, error


def test_schema_accepts_upstream_shapes() -> None:
    objects = helm_template("env[0].name=A", "env[1].name=B", "env[2].name=C", "env[2].valueFrom.secretKeyRef.name=s",
                            "env[2].valueFrom.secretKeyRef.key=k", "env[3].name=D",
                            "env[3].valueFrom.resourceFieldRef.resource=limits.memory",
                            "resources.requests.cpu=0.5", "resources.limits.memory=512Mi",
                            "resources.requests.ephemeral-storage=1Gi", strings=("env[1].value=1",))
    c = container(objects)
    assert c["env"][2:] == [{"name": "A"}, {"name": "B", "value": "1"},
                            {"name": "C", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                            {"name": "D", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}]
    assert c["resources"]["requests"] == {"cpu": "0.5", "memory": "128Mi", "ephemeral-storage": "1Gi"}
