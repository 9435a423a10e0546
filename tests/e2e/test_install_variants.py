"""The kustomize variants on a real control plane:

- ``variants/namespaced``, applied by a namespace owner WITHOUT any cluster-scoped right (proof that it
  holds nothing cluster-scoped), serves its own namespace only under a Role;
- ``variants/koupleless`` and ``variants/sofa-serverless`` on a cluster that has only that profile's CRD
  (as a Koupleless install does): they install no CRD, and the controller, started with the variant's
  ``--profile``, serves ModuleDeployments of that group.

Each on a DEDICATED control plane. The controller runs as a host process started from the installed
Deployment, under the installed ServiceAccount's token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.install_common import (
    MD_CRD,
    ROOT,
    SA_NAME,
    SYSTEM_NS,
    WAIT,
    Installed,
    create_namespace,
    dedicated_controlplane,
    exists,
    get,
    gone,
    kubectl,
    lease_of,
    ok,
    request_token,
    sa_kubeconfig,
    start_controller,
    token_kubeconfig,
)
from tests.harness import module_deployment, poll

GUARD_POLICY = "validatingadmissionpolicy.admissionregistration.k8s.io"

TEAM_NS = "team-a"
# Each profile's API group and module label prefix.
PROFILES = {
    "koupleless": ("koupleless.io", "module.koupleless.io/"),
    "sofa-serverless": ("serverless.alipay.com", "module.serverless.alipay.com/"),
}


def _can_i(installed: Installed, user: str, verb: str, resource: str, *scope: str) -> bool:
    proc = kubectl(installed.cp, "auth", "can-i", verb, resource, f"--as={user}", *scope)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.strip() == "yes"


# ---------------------------------------------------------------------------------------------- namespaced
@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Installed, Path]]:
    """A cluster admin has installed the CRD and created namespace team-a, where a ServiceAccount
    ``installer`` may do anything, and nothing anywhere else. The installer applies the namespaced
    variant into team-a through an overlay, as the README shows."""
    tmp = tmp_path_factory.mktemp("namespaced")
    with dedicated_controlplane(tmp) as cp:
        installed = Installed(cp, tmp, "", namespace=TEAM_NS)
        try:
            ok(kubectl(cp, "apply", "-k", "manifests/crd", "--server-side"))
            ok(kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s", f"crd/{MD_CRD}"))
            ok(kubectl(cp, "create", "namespace", TEAM_NS))
            ok(kubectl(cp, "create", "serviceaccount", "installer", "-n", TEAM_NS))
            ok(kubectl(cp, "create", "role", "owner", "-n", TEAM_NS, "--verb=*", "--resource=*.*"))
            ok(kubectl(cp, "create", "rolebinding", "owner", "-n", TEAM_NS, "--role=owner",
                       f"--serviceaccount={TEAM_NS}:installer"))
            installer = token_kubeconfig(cp, request_token(cp, TEAM_NS, "installer"), tmp / "installer.kubeconfig")
            overlay = tmp / "overlay"
            overlay.mkdir()
            (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": TEAM_NS,
                "resources": [os.path.relpath(ROOT / "manifests" / "variants" / "namespaced", overlay)]}))
            proc = kubectl(cp, "apply", "-k", str(overlay), "--server-side", kubeconfig=installer)
            installed.output = proc.stdout + proc.stderr
            print(f"\n$ kubectl apply -k <overlay: namespace {TEAM_NS}> --server-side   (as {TEAM_NS}:installer)\n"
                  f"{installed.output}")
            assert proc.returncode == 0, installed.output
            yield installed, installer
        finally:
            for process in installed.controllers:
                process.stop()


def test_namespaced_variant_installs_and_serves_only_its_namespace(team: tuple[Installed, Path]) -> None:
    installed, installer = team
    cp = installed.cp
    user = f"system:serviceaccount:{TEAM_NS}:installer"
    assert not _can_i(installed, user, "create", "clusterroles.rbac.authorization.k8s.io"), "no cluster rights"
    lines = [line for line in installed.output.splitlines() if line.strip()]
    assert lines, installed.output
    assert all(line.endswith(" serverside-applied") for line in lines), installed.output
    assert not exists(cp, f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{SA_NAME}")

    other = create_namespace(cp, "other")
    cp.request(f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{other}/moduledeployments", "POST",
               module_deployment("elsewhere", "m-elsewhere"))
    deployment = get(cp, "deployment.apps", TEAM_NS, SA_NAME)
    controller = start_controller(installed, deployment, sa_kubeconfig(installed, TEAM_NS, SA_NAME),
                                  lease_namespace=TEAM_NS)
    assert f"--namespace={TEAM_NS}" in controller.argv
    assert "--metrics-secure" not in controller.argv

    cp.request(f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{TEAM_NS}/moduledeployments", "POST",
               module_deployment("here", "m-here"))
    svc = poll(lambda: exists(cp, f"/api/v1/namespaces/{TEAM_NS}/services/m-here-service")
               and cp.request(f"/api/v1/namespaces/{TEAM_NS}/services/m-here-service"),
               timeout=WAIT, what="m-here-service")
    assert svc["spec"]["selector"] == {"module.koupleless.alipay.com/m-here": "true"}

    def ready() -> bool:
        md = cp.request(f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{TEAM_NS}/moduledeployments/here")
        conditions = ((md.get("status") or {}).get("moduleService") or {}).get("conditions") or []
        return any(c.get("reason") == "ServiceReady" for c in conditions)

    poll(ready, timeout=WAIT, what="status ServiceReady on team-a/here")
    # The other namespace is not served (the informers list team-a only): no Service, no status there.
    assert not exists(cp, f"/api/v1/namespaces/{other}/services/m-elsewhere-service")
    elsewhere = cp.request(f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{other}/moduledeployments/elsewhere")
    assert "status" not in elsewhere or not elsewhere["status"].get("moduleService")
    sa = f"system:serviceaccount:{TEAM_NS}:{SA_NAME}"
    assert _can_i(installed, sa, "list", "services", "-n", TEAM_NS)
    assert _can_i(installed, sa, "watch", "moduledeployments.koupleless.alipay.com", "-n", TEAM_NS)
    assert not _can_i(installed, sa, "list", "services", "-n", other)
    assert not _can_i(installed, sa, "list", "services", "--all-namespaces")
    assert not _can_i(installed, sa, "create", "tokenreviews.authentication.k8s.io")
    controller.assert_running()
    log = controller.log_path.read_text(errors="replace")
    assert "forbidden" not in log.lower(), controller.log_tail()

    # Uninstall, by the same installer: the controller goes, the CRD and the ModuleDeployment stay.
    assert controller.stop() == 0, controller.log_tail()
    overlay = installed.tmp / "overlay"
    proc = kubectl(cp, "delete", "-k", str(overlay), kubeconfig=installer)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    poll(gone(cp, "deployment.apps", TEAM_NS, SA_NAME), timeout=WAIT, what="the Deployment to be gone")
    assert exists(cp, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{MD_CRD}")
    assert exists(cp, f"/apis/koupleless.alipay.com/v1alpha1/namespaces/{TEAM_NS}/moduledeployments/here")


# ---------------------------------------------------------------------------------------------- profiles
def _profile_crd(profile: str) -> dict[str, Any]:
    """The profile's CRD as a real install has it (tests/data/crds: no CEL, a status that prunes ours)."""
    crd = yaml.safe_load((ROOT / "tests" / "data" / "crds" / f"{profile}.yaml").read_text(encoding="utf-8"))
    return dict(crd)


@pytest.fixture(scope="module", params=sorted(PROFILES))
def profile_install(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    ) -> Iterator[tuple[str, Installed]]:
    profile: str = request.param
    group, _ = PROFILES[profile]
    tmp = tmp_path_factory.mktemp(f"variant-{profile}")
    with dedicated_controlplane(tmp) as cp:
        installed = Installed(cp, tmp, "")
        try:
            ok(kubectl(cp, "apply", "--server-side", "-f", "-", input=json.dumps(_profile_crd(profile))))
            ok(kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s", f"crd/moduledeployments.{group}"))
            proc = kubectl(cp, "apply", "-k", f"manifests/variants/{profile}", "--server-side")
            installed.output = proc.stdout + proc.stderr
            print(f"\n$ kubectl apply -k manifests/variants/{profile} --server-side\n{installed.output}")
            assert proc.returncode == 0, installed.output
            yield profile, installed
        finally:
            for process in installed.controllers:
                process.stop()


def test_profile_variant_serves_its_group(profile_install: tuple[str, Installed]) -> None:
    profile, installed = profile_install
    group, prefix = PROFILES[profile]
    cp = installed.cp
    assert not exists(cp, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{MD_CRD}"), "shipped a CRD"
    sa = f"system:serviceaccount:{SYSTEM_NS}:{SA_NAME}"
    assert _can_i(installed, sa, "watch", f"moduledeployments.{group}", "--all-namespaces")
    assert _can_i(installed, sa, "patch", f"moduledeployments.{group}", "--subresource=status", "-n", "default")
    assert not _can_i(installed, sa, "list", f"moduledeployments.{MD_CRD.split('.', 1)[1]}", "--all-namespaces")

    controller = start_controller(installed, get(cp, "deployment.apps", SYSTEM_NS, SA_NAME), sa_kubeconfig(installed))
    assert f"--profile={profile}" in controller.argv
    assert lease_of(controller.argv) == f"{SA_NAME}-{profile}", "a Lease of its own: installs may sit side by side"
    # The deletion guard protects this profile's group.
    policy = get(cp, GUARD_POLICY, "", f"{SA_NAME}-guard")
    assert policy["spec"]["variables"][0] == {"name": "group", "expression": f"'{group}'"}
    ns = create_namespace(cp, f"e2e-{profile}")
    md = module_deployment("prof", "m-prof")
    md["apiVersion"] = f"{group}/v1alpha1"
    created = cp.request(f"/apis/{group}/v1alpha1/namespaces/{ns}/moduledeployments", "POST", md)
    svc_path = f"/api/v1/namespaces/{ns}/services/m-prof-service"
    svc = poll(lambda: exists(cp, svc_path) and cp.request(svc_path), timeout=WAIT, what="m-prof-service")
    assert svc["spec"]["selector"] == {f"{prefix}m-prof": "true"}
    (ref,) = svc["metadata"]["ownerReferences"]
    assert (ref["apiVersion"], ref["kind"], ref["uid"]) == (f"{group}/v1alpha1", "ModuleDeployment",
                                                             created["metadata"]["uid"])
    controller.assert_running()

    # Uninstall keeps the Koupleless CRD and the ModuleDeployment.
    assert controller.stop() == 0, controller.log_tail()
    ok(kubectl(cp, "delete", "-k", f"manifests/variants/{profile}"))
    poll(gone(cp, "deployment.apps", SYSTEM_NS, SA_NAME), timeout=WAIT, what="the Deployment to be gone")
    poll(gone(cp, GUARD_POLICY, "", f"{SA_NAME}-guard"), timeout=WAIT, what="the guard to be gone")
    assert exists(cp, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/moduledeployments.{group}")
    assert exists(cp, f"/apis/{group}/v1alpha1/namespaces/{ns}/moduledeployments/prof")
