"""the kustomize way, exactly as the README says:

- on a VANILLA cluster (no Prometheus Operator CRDs) ``kubectl apply -k manifests/crd --server-side`` and
  ``kubectl apply -k manifests/ --server-side`` both exit 0;
- the controller runs as a host process started from the installed Deployment's args and env, under the
  installed ServiceAccount's token (no kubelet here), and serves the scenarios of install_scenarios.py;
- ``kubectl auth can-i`` shows exactly the RBAC it needs; a live /metrics scrape has every name the
  dashboard and the alerts use;
- monitoring is opt-in: manifests/variants/monitoring once the Prometheus Operator CRDs are there;
- ``kubectl delete -k`` uninstalls and never takes the CRD, a ModuleDeployment or its Service with it;
  the separate, documented commands then remove the ModuleDeployments and the CRD.

Everything runs on a DEDICATED control plane (module-scoped, about 4 s to start), not the shared session
one: the install creates cluster-scoped objects with fixed names, and the last test deletes the CRD. The
tests run in file order. Run with ``-s`` to see the kubectl output and the can-i table.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.install_common import (
    LEASE_NAME,
    MANAGED_SERVICES,
    MD_CRD,
    PROMETHEUS_CRDS,
    SA_NAME,
    SYSTEM_NS,
    WAIT,
    ControllerProcess,
    Installed,
    create_namespace,
    dedicated_controlplane,
    delete,
    exists,
    get,
    gone,
    kubectl,
    ok,
    request_token,
    start_controller,
)
from tests.e2e.install_common import sa_kubeconfig as _sa_kubeconfig
from tests.e2e.install_scenarios import (  # collected here, against this module's install
    svc_ok,
    test_can_i_table,
    test_deleted_module_deployment_takes_its_service,
    test_disable_deletes_the_service,
    test_foreign_service_is_a_name_conflict,
    test_ns,
    test_pods_are_counted,
    test_port_change_updates_the_service,
    test_sample_gets_its_service,
    test_token_carries_only_the_service_account_identity,
)
from tests.harness import api_client, module_deployment, poll, wait_for

# The dashboard/alert expressions are read exactly as the static checks read them.
from tests.unit.test_observability import (
    ALERTS,
    DASHBOARD,
    PROMETHEUS_OWN,
    exprs,
    metric_names,
    rules_of,
    var_query,
    variables_of,
)

pytestmark = pytest.mark.core

__all__ = [
    "test_can_i_table",
    "test_deleted_module_deployment_takes_its_service",
    "test_disable_deletes_the_service",
    "test_foreign_service_is_a_name_conflict",
    "test_ns",
    "test_pods_are_counted",
    "test_port_change_updates_the_service",
    "test_sample_gets_its_service",
    "test_token_carries_only_the_service_account_identity",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """A vanilla control plane, then the README's two commands: the CRD on its own, then the controller."""
    tmp = tmp_path_factory.mktemp("install")
    with dedicated_controlplane(tmp) as cp:
        installed = Installed(cp, tmp, "")
        try:
            crd = kubectl(cp, "apply", "-k", "manifests/crd", "--server-side")
            assert crd.returncode == 0, crd.stdout + crd.stderr
            ok(kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{MD_CRD}"))
            proc = kubectl(cp, "apply", "-k", "manifests/", "--server-side")
            installed.output = proc.stdout + proc.stderr
            assert proc.returncode == 0, installed.output
            yield installed
        finally:
            for process in installed.controllers:
                process.stop()


@pytest.fixture(scope="module")
def sa_kubeconfig(installed: Installed) -> Path:
    return _sa_kubeconfig(installed)


@pytest.fixture(scope="module")
def controller(installed: Installed, sa_kubeconfig: Path) -> ControllerProcess:
    """The installed Deployment's controller (every namespace, leader election, secure metrics) as a host
    process on loopback ports, with the ServiceAccount's token. Stopped by ``installed``."""
    deployment = get(installed.cp, "deployment.apps", SYSTEM_NS, "module-service-controller")
    return start_controller(installed, deployment, sa_kubeconfig)


# ---------------------------------------------------------------------------------------------- 1. install
# (kind, namespace or "", name) of everything `kubectl apply -k manifests/` installs.
EXPECTED_OBJECTS = [
    ("namespace", "", SYSTEM_NS),
    ("serviceaccount", SYSTEM_NS, SA_NAME),
    ("clusterrole", "", "module-service-controller"),
    ("clusterrolebinding", "", "module-service-controller"),
    ("clusterrole", "", "module-service-controller-metrics-reader"),
    ("role", SYSTEM_NS, "module-service-controller-leader-election"),
    ("rolebinding", SYSTEM_NS, "module-service-controller-leader-election"),
    ("deployment.apps", SYSTEM_NS, "module-service-controller"),
    ("poddisruptionbudget.policy", SYSTEM_NS, "module-service-controller"),
    ("service", SYSTEM_NS, "module-service-controller-metrics"),
    ("validatingadmissionpolicy.admissionregistration.k8s.io", "", "module-service-controller-guard"),
    ("validatingadmissionpolicybinding.admissionregistration.k8s.io", "", "module-service-controller-guard"),
    # The built-in view, edit and admin roles aggregate these: users of those may read/write ModuleDeployments.
    ("clusterrole", "", "module-service-controller-view"),
    ("clusterrole", "", "module-service-controller-edit"),
]
MONITORING_OBJECTS = [
    ("servicemonitor.monitoring.coreos.com", SYSTEM_NS, "module-service-controller"),
    ("prometheusrule.monitoring.coreos.com", SYSTEM_NS, "module-service-controller"),
    ("configmap", SYSTEM_NS, "module-service-controller-dashboard"),
    # The identity the ServiceMonitor scrapes secure metrics with (its `authorization` credentials).
    ("serviceaccount", SYSTEM_NS, "module-service-controller-metrics-scraper"),
    ("secret", SYSTEM_NS, "module-service-controller-metrics-scraper-token"),
    ("clusterrolebinding", "", "module-service-controller-metrics-scraper"),
]


def _applied(output: str, rendered: list[dict[str, object]]) -> None:
    """Every rendered object was applied, without warnings (e.g. PodSecurity "restricted")."""
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == len(rendered), output
    assert all(line.endswith((" serverside-applied", " unchanged")) for line in lines), output


def test_apply_k_on_a_vanilla_cluster_installs_everything(installed: Installed) -> None:
    cp = installed.cp
    print(f"\n$ kubectl apply -k manifests/ --server-side\n{installed.output}")
    # Vanilla: the Prometheus Operator's kinds are unknown here.
    assert not exists(cp, "/apis/monitoring.coreos.com/v1")
    rendered = [d for d in yaml.safe_load_all(ok(kubectl(cp, "kustomize", "manifests/"))) if d]
    _applied(installed.output, rendered)
    live = {(kind, name): get(cp, kind, namespace, name) for kind, namespace, name in EXPECTED_OBJECTS}
    assert {(o["kind"], o["metadata"]["name"]) for o in rendered} == {
        (obj["kind"], name) for (_, name), obj in live.items()}, "EXPECTED_OBJECTS is not what manifests/ holds"
    for (kind, _), obj in live.items():
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "module-service-controller", (kind, labels)

    crd = get(cp, "customresourcedefinition", "", MD_CRD)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}.get("Established") == "True"
    # The Deployment is accepted as written (no kubelet here runs it).
    deployment = live["deployment.apps", "module-service-controller"]
    assert deployment["spec"]["replicas"] == 3
    pod_spec = deployment["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == SA_NAME
    assert "--leader-elect" in pod_spec["containers"][0]["args"]
    metrics_svc = live["service", "module-service-controller-metrics"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert metrics_svc["spec"]["selector"].items() <= pod_labels.items()

    # Upgrade = apply again: idempotent, still no conflict.
    again = kubectl(cp, "apply", "-k", "manifests/", "--server-side")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stderr.strip() == "", again.stderr


# ---------------------------------------------------------------------------------------------- 4. /metrics
# Labels that Prometheus attaches to every scraped series (target labels), not the controller; `cluster`
# (the render's default cluster label) comes from an external label or relabelling in a shared Prometheus.
TARGET_LABELS = {"namespace", "job", "pod", "instance", "service", "endpoint", "container", "cluster"}
# Labels whose values appear only when they happen: a series with code="503" exists after the first 503.
# tests/e2e/test_prometheus_e2e.py shows that the alerts selecting them fire when the fault is injected.
RUNTIME_VALUE_LABELS = {"code"}
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")


def _used_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every dashboard panel target, dashboard variable and alert rule."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = [(f"panel {panel['title']!r}", expr) for panel, expr in exprs(dashboard)]
    for name, var in variables_of(dashboard).items():
        if var["type"] == "query":
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", var_query(var))
            assert match, name
            out.append((f"variable {name}", match.group(1)))
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    out += [(f"alert {rule['alert']}", str(rule["expr"])) for rule in rules_of(alerts)]
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
                    if label not in TARGET_LABELS | RUNTIME_VALUE_LABELS and "$" not in value]
        if not any(_matches(labels, matchers) for labels in series[name]):
            problems.append(f"{where}: no {name} series matches {matchers}")
    # Grouping/matching labels that are not target labels must exist on every metric of the expression; with
    # a group_left join, on one of them at least (the join carries the left side's labels over).
    joined = "group_left" in expr
    for group in _GROUPING.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            if not label or label in TARGET_LABELS:
                continue
            lacking = [name for name in sorted(names & series.keys())
                       if not any(label in labels for labels in series[name])]
            if joined and len(lacking) < len(names & series.keys()):
                continue
            problems += [f"{where}: {name} has no label {label!r} to group by" for name in lacking]
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
        reader = request_token(cp, test_ns, "prometheus")
        nobody = request_token(cp, test_ns, "nobody")
        # The controller checks scrapers with TokenReview + SubjectAccessReview under ITS identity.
        assert (await _scrape(controller.metrics_port, None))[0] == 401
        assert (await _scrape(controller.metrics_port, nobody))[0] == 403

        async with api_client(str(cp.kubeconfig)) as api:
            md = await api.create_md(test_ns, module_deployment("scraped", "m-scraped"))
            await api.wait_svc(test_ns, "m-scraped-service", svc_ok("m-scraped", 8080, [md]), timeout=WAIT)
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
        delete(cp, f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")

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


# ---------------------------------------------------------------------------------------------- monitoring
def test_monitoring_variant_once_the_prometheus_operator_is_there(installed: Installed,
                                                                   controller: ControllerProcess) -> None:
    """Opt-in monitoring: with the Prometheus Operator's CRDs (a stand-in, tests/e2e/data), the monitoring
    variant adds the ServiceMonitor, the PrometheusRule and the dashboard ConfigMap over the same install."""
    cp = installed.cp
    ok(kubectl(cp, "apply", "--server-side", "-f", str(PROMETHEUS_CRDS)))
    ok(kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
               "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"))
    proc = kubectl(cp, "apply", "-k", "manifests/variants/monitoring", "--server-side")
    print(f"\n$ kubectl apply -k manifests/variants/monitoring --server-side\n{proc.stdout}{proc.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rendered = [d for d in yaml.safe_load_all(ok(kubectl(cp, "kustomize", "manifests/variants/monitoring"))) if d]
    _applied(proc.stdout, rendered)
    assert len(rendered) == len(EXPECTED_OBJECTS) + len(MONITORING_OBJECTS)
    live = {kind: get(cp, kind, ns, name) for kind, ns, name in MONITORING_OBJECTS}
    # Kept their spec (the stand-in CRDs preserve unknown fields; a pruned or rejected field shows here).
    monitor = live["servicemonitor.monitoring.coreos.com"]
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["scheme"]) == ("https", "https")
    assert endpoint["tlsConfig"]["insecureSkipVerify"] is True
    metrics_svc = get(cp, "service", SYSTEM_NS, "module-service-controller-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    rule = live["prometheusrule.monitoring.coreos.com"]
    alerts = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    assert rule["spec"]["groups"] == alerts["groups"]
    dashboard = live["configmap"]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["module-service-controller.json"]) == json.loads(
        DASHBOARD.read_text(encoding="utf-8"))
    controller.assert_running()


# ---------------------------------------------------------------------------------------------- uninstall
def test_delete_k_keeps_the_crd_the_module_deployments_and_their_services(
        installed: Installed, controller: ControllerProcess) -> None:
    """README "Uninstall": ``kubectl delete -k`` (of the variant that was applied) removes the controller
    and everything it installed, and nothing of the users': the CRD, every ModuleDeployment and their
    Services stay. Then the separate commands: delete the ModuleDeployments (the garbage collector takes
    their Services), then the CRD."""
    cp = installed.cp
    ns = create_namespace(cp, "e2e-uninstall")
    md_path = f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{ns}/moduledeployments/left"
    svc_path = f"/api/v1/namespaces/{ns}/services/m-left-service"
    try:
        cp.request(md_path.rsplit("/", 1)[0], "POST", module_deployment("left", "m-left"))
        poll(lambda: exists(cp, svc_path), timeout=WAIT, what="m-left-service")
        # The Deployment goes first in a real uninstall; here: SIGTERM, and the Lease is released.
        assert controller.stop() == 0, controller.log_tail()
        lease = cp.request(f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NS}/leases/{LEASE_NAME}")
        assert not lease["spec"].get("holderIdentity"), lease
        service_uid = cp.request(svc_path)["metadata"]["uid"]

        # docs/install.md "Uninstall": kube-controller-manager deletes the scraper's token Secret with its
        # ServiceAccount, which kubectl deletes first.
        proc = kubectl(cp, "delete", "-k", "manifests/variants/monitoring", "--ignore-not-found")
        print(f"\n$ kubectl delete -k manifests/variants/monitoring --ignore-not-found\n{proc.stdout}{proc.stderr}")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for kind, namespace, name in EXPECTED_OBJECTS + MONITORING_OBJECTS:
            poll(gone(cp, kind, namespace, name), timeout=WAIT, what=f"{kind}/{name} to be gone")
        # Nothing of the users' went with it.
        assert exists(cp, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{MD_CRD}")
        assert exists(cp, md_path)
        assert cp.request(svc_path)["metadata"]["uid"] == service_uid

        # The separate, deliberate removal (README): ModuleDeployments first, so that the garbage collector
        # can still resolve the Services' owner references and delete them; then the CRD.
        md_delete = ok(kubectl(cp, "delete", "moduledeployments.koupleless.alipay.com", "--all", "--all-namespaces"))
        print(f"$ kubectl delete moduledeployments.koupleless.alipay.com --all --all-namespaces\n{md_delete}")
        poll(lambda: not exists(cp, svc_path), timeout=WAIT, what="the garbage collector to delete m-left-service")
        crd_delete = ok(kubectl(cp, "delete", "-k", "manifests/crd"))
        print(f"$ kubectl delete -k manifests/crd\n{crd_delete}")
        poll(gone(cp, "customresourcedefinition", "", MD_CRD), timeout=WAIT, what="the CRD to be gone")
        left = json.loads(ok(kubectl(cp, "get", "services", "-A", "-l", MANAGED_SERVICES, "-o", "json")))
        assert left["items"] == [], "a module Service outlived its ModuleDeployment"
        # The cluster's own Service is untouched.
        assert exists(cp, "/api/v1/namespaces/default/services/kubernetes")
    finally:
        delete(cp, f"/api/v1/namespaces/{ns}")
