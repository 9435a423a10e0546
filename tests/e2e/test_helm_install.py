"""the Helm way: ``helm install`` of charts/module-service-controller
on a vanilla cluster (exit 0), the same scenarios as the kustomize install (install_scenarios.py) with
the controller started from the installed Deployment under the installed ServiceAccount's token,
``helm upgrade`` (new flags, monitoring switched on) and ``helm uninstall``, which keeps the CRD, the
ModuleDeployments and their Services.

A DEDICATED control plane, as in test_install.py. The release name is module-service-controller, so the
object names (and the ServiceAccount the can-i table asks about) are the kustomize install's. Tests run
in file order; uninstall is last. Run with ``-s`` to see helm's output.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane import ControlPlane
from tests.e2e.install_common import (
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
    run_tool,
    start_controller,
    token_kubeconfig,
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
from tests.harness import api_client, module_deployment, poll
from tests.helm import ensure_helm

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

RELEASE = "module-service-controller"
CHART = "charts/module-service-controller"

# (kind, namespace or "", name) of everything `helm install` with the default values creates, bar the CRD.
EXPECTED_OBJECTS = [
    ("serviceaccount", SYSTEM_NS, SA_NAME),
    ("clusterrole", "", "module-service-controller"),
    ("clusterrolebinding", "", "module-service-controller"),
    ("clusterrole", "", "module-service-controller-metrics-reader"),
    ("role", SYSTEM_NS, "module-service-controller-leader-election"),
    ("rolebinding", SYSTEM_NS, "module-service-controller-leader-election"),
    ("deployment.apps", SYSTEM_NS, "module-service-controller"),
    ("poddisruptionbudget.policy", SYSTEM_NS, "module-service-controller"),
    ("service", SYSTEM_NS, "module-service-controller-metrics"),
    # The cluster serves the ValidatingAdmissionPolicy API: the deletion guard is on.
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


def _helm(installed: Installed, *args: str, kubeconfig: Path | None = None) -> str:
    """helm against the install's control plane, with its own config and cache directories; returns
    stdout and stderr (printed with ``-s``), asserting exit 0."""
    home = installed.tmp / "helm-home"
    env = {"HELM_CONFIG_HOME": str(home / "config"), "HELM_CACHE_HOME": str(home / "cache"),
           "HELM_DATA_HOME": str(home / "data")}
    proc = run_tool(ensure_helm(), installed.cp, *args, kubeconfig=kubeconfig, env=env)
    output = proc.stdout + proc.stderr
    print(f"\n$ helm {' '.join(args)}\n{output}")
    assert proc.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """A vanilla control plane, then the README's `helm install`."""
    tmp = tmp_path_factory.mktemp("helm")
    with dedicated_controlplane(tmp) as cp:
        installed = Installed(cp, tmp, "")
        try:
            installed.output = _helm(installed, "install", RELEASE, CHART, "--namespace", SYSTEM_NS,
                                     "--create-namespace")
            yield installed
        finally:
            for process in installed.controllers:
                process.stop()


@pytest.fixture(scope="module")
def sa_kubeconfig(installed: Installed) -> Path:
    return _sa_kubeconfig(installed)


def _deployment(cp: ControlPlane) -> dict[str, object]:
    return get(cp, "deployment.apps", SYSTEM_NS, RELEASE)


@pytest.fixture(scope="module")
def controller(installed: Installed, sa_kubeconfig: Path) -> ControllerProcess:
    return start_controller(installed, _deployment(installed.cp), sa_kubeconfig)


def test_helm_install_on_a_vanilla_cluster(installed: Installed) -> None:
    cp = installed.cp
    assert "STATUS: deployed" in installed.output
    assert not exists(cp, "/apis/monitoring.coreos.com/v1")
    for kind, namespace, name in EXPECTED_OBJECTS:
        obj = get(cp, kind, namespace, name)
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", (kind, labels)
        assert obj["metadata"]["annotations"]["meta.helm.sh/release-name"] == RELEASE, kind
    crd = get(cp, "customresourcedefinition", "", MD_CRD)
    assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}.get("Established") == "True"
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    manifest = ok(run_tool(ensure_helm(), cp, "get", "manifest", RELEASE, "--namespace", SYSTEM_NS))
    assert manifest.count("\nkind: ") + manifest.startswith("kind: ") == len(EXPECTED_OBJECTS) + 1


@pytest.mark.asyncio
async def test_helm_upgrade_changes_flags_and_turns_monitoring_on(
        installed: Installed, controller: ControllerProcess, sa_kubeconfig: Path) -> None:
    """`helm upgrade` with new values: the Deployment takes the new flags, the monitoring objects appear
    (once the Prometheus Operator CRDs are there), the CRD keeps its identity, and a controller started
    from the upgraded Deployment serves."""
    cp = installed.cp
    crd_uid = get(cp, "customresourcedefinition", "", MD_CRD)["metadata"]["uid"]
    ok(kubectl(cp, "apply", "--server-side", "-f", str(PROMETHEUS_CRDS)))
    ok(kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
               "crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com"))
    output = _helm(installed, "upgrade", RELEASE, CHART, "--namespace", SYSTEM_NS, "--reuse-values",
                   "--set", "replicas=2", "--set", "leaderElection.leaseDuration=20s",
                   "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
                   "--set", "dashboard.enabled=true")
    assert "REVISION: 2" in output
    deployment = _deployment(cp)
    spec = deployment["spec"]
    assert isinstance(spec, dict)
    assert spec["replicas"] == 2
    assert "--leader-elect-lease-duration=20s" in spec["template"]["spec"]["containers"][0]["args"]
    for kind, namespace, name in MONITORING_OBJECTS:
        assert get(cp, kind, namespace, name)["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert get(cp, "customresourcedefinition", "", MD_CRD)["metadata"]["uid"] == crd_uid

    # The rollout, as a kubelet would do it: the old controller goes (SIGTERM releases the Lease), the new
    # one starts from the upgraded Deployment and takes over.
    assert controller.stop() == 0, controller.log_tail()
    upgraded = start_controller(installed, deployment, sa_kubeconfig)
    assert "--leader-elect-lease-duration=20s" in upgraded.argv
    ns = create_namespace(cp, "e2e-upgrade")
    try:
        async with api_client(str(cp.kubeconfig)) as api:
            md = await api.create_md(ns, module_deployment("after", "m-after"))
            await api.wait_svc(ns, "m-after-service", svc_ok("m-after", 8080, [md]), timeout=WAIT)
            await api.wait_reason(ns, "after", "ServiceReady", timeout=WAIT)
        upgraded.assert_running()
    finally:
        delete(cp, f"/api/v1/namespaces/{ns}")


def test_helm_uninstall_keeps_the_crd_the_module_deployments_and_their_services(installed: Installed) -> None:
    cp = installed.cp
    (controller,) = [c for c in installed.controllers if c.proc.poll() is None]
    ns = create_namespace(cp, "e2e-helm-uninstall")
    md_path = f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{ns}/moduledeployments/left"
    svc_path = f"/api/v1/namespaces/{ns}/services/m-left-service"
    try:
        cp.request(md_path.rsplit("/", 1)[0], "POST", module_deployment("left", "m-left"))
        poll(lambda: exists(cp, svc_path), timeout=WAIT, what="m-left-service")
        assert controller.stop() == 0, controller.log_tail()
        service_uid = cp.request(svc_path)["metadata"]["uid"]

        output = _helm(installed, "uninstall", RELEASE, "--namespace", SYSTEM_NS)
        assert f"kept due to the resource policy:\n[CustomResourceDefinition] {MD_CRD}" in output
        for kind, namespace, name in EXPECTED_OBJECTS + MONITORING_OBJECTS:
            poll(gone(cp, kind, namespace, name), timeout=WAIT, what=f"{kind}/{name} to be gone")
        assert exists(cp, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{MD_CRD}")
        assert exists(cp, md_path)
        assert cp.request(svc_path)["metadata"]["uid"] == service_uid
        releases = json.loads(ok(run_tool(ensure_helm(), cp, "list", "-A", "-o", "json")))
        assert releases == []
    finally:
        delete(cp, f"/api/v1/namespaces/{ns}")


def test_helm_namespaced_install_by_a_namespace_owner(installed: Installed) -> None:
    """Namespaced mode: a ServiceAccount that may do anything in team-b and nothing cluster-wide installs
    the chart there (the CRD is the cluster admin's, still here after the uninstall above); the
    controller serves team-b under its Role; the owner uninstalls it again."""
    cp = installed.cp
    team = create_namespace(cp, "team-b")
    ok(kubectl(cp, "create", "serviceaccount", "installer", "-n", team))
    ok(kubectl(cp, "create", "role", "owner", "-n", team, "--verb=*", "--resource=*.*"))
    ok(kubectl(cp, "create", "rolebinding", "owner", "-n", team, "--role=owner", f"--serviceaccount={team}:installer"))
    owner = token_kubeconfig(cp, request_token(cp, team, "installer"), installed.tmp / "owner.kubeconfig")
    try:
        output = _helm(installed, "install", RELEASE, CHART, "--namespace", team, "--set", "namespaced.enabled=true",
                       "--set", "metrics.secure=false", kubeconfig=owner)
        assert "STATUS: deployed" in output
        role = get(cp, "role", team, RELEASE)
        assert {g for rule in role["rules"] for g in rule["apiGroups"]} >= {"koupleless.alipay.com"}
        controller = start_controller(installed, get(cp, "deployment.apps", team, RELEASE),
                                      _sa_kubeconfig(installed, team, SA_NAME), lease_namespace=team)
        assert f"--namespace={team}" in controller.argv
        cp.request(f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{team}/moduledeployments", "POST",
                   module_deployment("team", "m-team"))
        svc = poll(lambda: exists(cp, f"/api/v1/namespaces/{team}/services/m-team-service")
                   and cp.request(f"/api/v1/namespaces/{team}/services/m-team-service"),
                   timeout=WAIT, what="m-team-service")
        assert svc["spec"]["selector"] == {"module.koupleless.alipay.com/m-team": "true"}
        assert controller.stop() == 0, controller.log_tail()
        assert "forbidden" not in controller.log_path.read_text(errors="replace").lower(), controller.log_tail()
        _helm(installed, "uninstall", RELEASE, "--namespace", team, kubeconfig=owner)
        poll(gone(cp, "deployment.apps", team, RELEASE), timeout=WAIT, what="the Deployment to be gone")
        assert exists(cp, f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{team}/moduledeployments/team")
    finally:
        delete(cp, f"/api/v1/namespaces/{team}")
