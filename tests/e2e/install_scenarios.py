"""The scenarios every install runs (kustomize: test_install.py, Helm: test_helm_install.py), collected
in each of those modules by importing them there: each module's own ``installed``, ``controller`` and
``sa_kubeconfig`` fixtures give the install they run against. The controller runs as a host process
started from the installed Deployment, under the installed ServiceAccount's token."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from controller.runtime.kube.client import JsonObj
from tests.e2e.install_common import (
    LEASE_NAME,
    SA_USER,
    SYSTEM_NS,
    WAIT,
    ControllerProcess,
    Installed,
    create_namespace,
    delete,
    kubectl,
    ok,
)
from tests.harness import (
    SEED_MD,
    Api,
    api_client,
    module_deployment,
    node_port,
    ready_condition,
    service_problems,
    wait_for,
)


@pytest.fixture
def test_ns(installed: Installed) -> Iterator[str]:
    name = create_namespace(installed.cp, "e2e-install")
    yield name
    delete(installed.cp, f"/api/v1/namespaces/{name}")


# ---------------------------------------------------------------------------------------------- 2. scenarios
def test_token_carries_only_the_service_account_identity(installed: Installed, sa_kubeconfig: Path) -> None:
    whoami = json.loads(ok(kubectl(installed.cp, "auth", "whoami", "-o", "json", kubeconfig=sa_kubeconfig)))
    user = whoami["status"]["userInfo"]
    assert user["username"] == SA_USER
    assert "system:masters" not in user.get("groups", [])
    denied = kubectl(installed.cp, "get", "secrets", "-n", SYSTEM_NS, kubeconfig=sa_kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower(), denied.stderr


def svc_ok(module: str, port: int, owners: list[JsonObj], target_port: int | None = None,
            ) -> Callable[[JsonObj], bool]:
    def check(svc: JsonObj) -> bool:
        return not service_problems(svc, module=module, port=port, target_port=target_port, owners=owners)
    return check


async def _events(api: Api, ns: str, reason: str, type_: str, involved: str) -> list[JsonObj]:
    return [e for e in await api.events(ns) if e.get("reason") == reason and e.get("type") == type_
            and (e.get("involvedObject") or {}).get("name") == involved]


@pytest.mark.asyncio
async def test_sample_gets_its_service(installed: Installed, controller: ControllerProcess, test_ns: str) -> None:
    """README: ``kubectl apply -k manifests/samples`` -> the seed's Service, with blockOwnerDeletion owner
    references (admitted under OwnerReferencesPermissionEnforcement: the finalizers RBAC works)."""
    ok(kubectl(installed.cp, "apply", "-k", "manifests/samples", "--namespace", test_ns))
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.get_md(test_ns, SEED_MD["metadata"]["name"])
        assert md is not None
        svc = await api.wait_svc(test_ns, "dynamic-provider-service", svc_ok("dynamic-provider", 8080, [md]),
                                 timeout=WAIT)
        ref = svc["metadata"]["ownerReferences"][0]
        assert (ref["controller"], ref["blockOwnerDeletion"]) == (True, True)
        ms = await api.wait_reason(test_ns, md["metadata"]["name"], "ServiceReady", timeout=WAIT)
        assert (ms["serviceName"], ms["nodePort"]) == ("dynamic-provider-service", node_port(svc))
        assert await wait_for(lambda: _events(api, test_ns, "ServiceCreated", "Normal", md["metadata"]["name"]),
                              timeout=WAIT, what="a ServiceCreated Event")
    controller.assert_running()


@pytest.mark.asyncio
async def test_port_change_updates_the_service(installed: Installed, controller: ControllerProcess,
                                               test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.create_md(test_ns, module_deployment("ports", "m-ports", port=8080))
        svc = await api.wait_svc(test_ns, "m-ports-service", svc_ok("m-ports", 8080, [md]), timeout=WAIT)
        allocated = node_port(svc)
        md = await api.patch_md(test_ns, "ports", {"spec": {"operationStrategy": {"serviceStrategy": {
            "port": 9090, "targetPort": 9091}}}})
        svc = await api.wait_svc(test_ns, "m-ports-service", svc_ok("m-ports", 9090, [md], target_port=9091),
                                 timeout=WAIT, what="the Service on 9090->9091")
        assert node_port(svc) == allocated
        ms = await api.wait_reason(test_ns, "ports", "ServiceReady", timeout=WAIT,
                                   check=lambda ms: ms.get("observedGeneration") == md["metadata"]["generation"])
        assert (ms["port"], ms["targetPort"]) == (9090, 9091)
    controller.assert_running()


@pytest.mark.asyncio
async def test_disable_deletes_the_service(installed: Installed, controller: ControllerProcess,
                                           test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.create_md(test_ns, module_deployment("off", "m-off"))
        await api.wait_svc(test_ns, "m-off-service", svc_ok("m-off", 8080, [md]), timeout=WAIT)
        await api.patch_md(test_ns, "off", {"spec": {"operationStrategy": {"serviceStrategy": {
            "enableModuleService": False}}}})
        await api.wait_svc_gone(test_ns, "m-off-service", timeout=WAIT)
        await api.wait_reason(test_ns, "off", "ServiceDisabled", timeout=WAIT)
        assert await wait_for(lambda: _events(api, test_ns, "ServiceDeleted", "Normal", "off"),
                              timeout=WAIT, what="a ServiceDeleted Event")
    controller.assert_running()


@pytest.mark.asyncio
async def test_foreign_service_is_a_name_conflict(installed: Installed, controller: ControllerProcess,
                                                  test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        foreign = await api.create_svc(test_ns, {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "m-taken-service"},
            "spec": {"selector": {"app": "someone-else"}, "ports": [{"port": 80}]}})
        await api.create_md(test_ns, module_deployment("taken", "m-taken"))
        ms = await api.wait_reason(test_ns, "taken", "NameConflict", timeout=WAIT)
        assert ready_condition(ms)["status"] == "False"
        warnings = await wait_for(lambda: _events(api, test_ns, "NameConflict", "Warning", "taken"),
                                  timeout=WAIT, what="a NameConflict Warning Event")
        assert warnings[0]["involvedObject"]["kind"] == "ModuleDeployment"
        after = await api.get_svc(test_ns, "m-taken-service")
        assert after is not None
        assert after["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"], "foreign Service touched"
    controller.assert_running()


@pytest.mark.asyncio
async def test_pods_are_counted(installed: Installed, controller: ControllerProcess, test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        await api.create_md(test_ns, module_deployment("counted", "m-counted"))
        label = {"module.koupleless.alipay.com/m-counted": "true"}
        for name in ("base-0", "base-1"):
            await api.create_pod(test_ns, name, label)
        await api.create_pod(test_ns, "base-other", {"module.koupleless.alipay.com/m-other": "true"})
        await api.set_pod_ready(test_ns, "base-0", True)
        await api.set_pod_ready(test_ns, "base-1", False)
        await api.wait_reason(test_ns, "counted", "ServiceReady", timeout=WAIT,
                              check=lambda ms: (ms.get("pods"), ms.get("readyPods")) == (2, 1))
        await api.set_pod_ready(test_ns, "base-1", True)
        await api.wait_reason(test_ns, "counted", "ServiceReady", timeout=WAIT,
                              check=lambda ms: (ms.get("pods"), ms.get("readyPods")) == (2, 2))
    controller.assert_running()


@pytest.mark.asyncio
async def test_deleted_module_deployment_takes_its_service(installed: Installed, controller: ControllerProcess,
                                                           test_ns: str) -> None:
    async with api_client(str(installed.cp.kubeconfig)) as api:
        md = await api.create_md(test_ns, module_deployment("gone", "m-gone"))
        await api.wait_svc(test_ns, "m-gone-service", svc_ok("m-gone", 8080, [md]), timeout=WAIT)
        await api.delete_md(test_ns, "gone")
        await api.wait_svc_gone(test_ns, "m-gone-service", timeout=WAIT)
    controller.assert_running()


# ---------------------------------------------------------------------------------------------- 3. can-i
# (verb, resource, namespace or "" for cluster scope, expected). Namespaced checks use a namespace the
# controller does not live in, except where its own namespace is the point. "resource#name" asks about
# one object (the Role allows get and update on the install's own Lease only).
CAN_I: list[tuple[str, str, str, bool]] = [
    ("get", "secrets", "default", False),
    ("list", "secrets", "default", False),
    ("watch", "secrets", "default", False),
    ("get", "secrets", SYSTEM_NS, False),
    ("delete", "pods", "default", False),
    ("create", "pods", "default", False),
    ("patch", "pods", "default", False),
    ("create", "moduledeployments.koupleless.alipay.com", "default", False),
    ("update", "moduledeployments.koupleless.alipay.com", "default", False),
    ("patch", "moduledeployments.koupleless.alipay.com", "default", False),
    ("delete", "moduledeployments.koupleless.alipay.com", "default", False),
    ("create", "leases.coordination.k8s.io", "default", False),
    ("update", "leases.coordination.k8s.io", "default", False),
    ("delete", "leases.coordination.k8s.io", SYSTEM_NS, False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", "", False),
    ("create", "serviceaccounts/token", SYSTEM_NS, False),
    ("get", "moduledeployments.koupleless.alipay.com", "default", True),
    ("list", "moduledeployments.koupleless.alipay.com", "default", True),
    ("watch", "moduledeployments.koupleless.alipay.com", "", True),
    ("patch", "moduledeployments.koupleless.alipay.com/status", "default", True),
    ("update", "moduledeployments.koupleless.alipay.com/status", "default", True),
    ("update", "moduledeployments.koupleless.alipay.com/finalizers", "default", True),
    ("get", "services", "default", True),
    ("list", "services", "", True),
    ("watch", "services", "", True),
    ("create", "services", "default", True),
    ("patch", "services", "default", True),
    ("update", "services", "default", True),
    ("delete", "services", "default", True),
    ("get", "pods", "default", True),
    ("list", "pods", "", True),
    ("watch", "pods", "", True),
    ("create", "events", "default", True),
    ("patch", "events", "default", True),
    ("create", "events.events.k8s.io", "default", True),
    ("get", f"leases.coordination.k8s.io#{LEASE_NAME}", SYSTEM_NS, True),
    ("create", "leases.coordination.k8s.io", SYSTEM_NS, True),
    ("update", f"leases.coordination.k8s.io#{LEASE_NAME}", SYSTEM_NS, True),
    ("get", "leases.coordination.k8s.io#module-service-controller-koupleless", SYSTEM_NS, False),
    ("update", "leases.coordination.k8s.io#another-install", SYSTEM_NS, False),
    ("update", "leases.coordination.k8s.io", SYSTEM_NS, False),
    ("create", "tokenreviews.authentication.k8s.io", "", True),
    ("create", "subjectaccessreviews.authorization.k8s.io", "", True),
]


def _scope(verb: str, namespace: str) -> list[str]:
    if namespace:
        return ["-n", namespace]
    return ["--all-namespaces"] if verb in ("list", "watch") else []


def _scope_label(verb: str, namespace: str) -> str:
    return namespace or ("(all)" if verb in ("list", "watch") else "(cluster)")


def test_can_i_table(installed: Installed) -> None:
    cp = installed.cp

    def ask(row: tuple[str, str, str, bool]) -> tuple[str, str]:
        verb, resource, namespace, _ = row
        resource, _, name = resource.partition("#")
        resource, _, sub = resource.partition("/")
        target = f"{resource}/{name}" if name else resource
        args = ["auth", "can-i", verb, target, f"--as={SA_USER}", *_scope(verb, namespace)]
        if sub:
            args.append(f"--subresource={sub}")
        proc = kubectl(cp, *args)
        # can-i exits 0 for yes, 1 for no; anything else (or other output) is an error.
        assert proc.returncode in (0, 1), proc.stderr
        return proc.stdout.strip(), proc.stderr.strip()

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(ask, CAN_I))
    header = ("VERB", "RESOURCE", "NAMESPACE", "EXPECTED", "GOT")
    rows = [(verb, resource, _scope_label(verb, ns), "yes" if want else "no", got)
            for (verb, resource, ns, want), (got, _) in zip(CAN_I, answers, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows])
    print(f"\n$ kubectl auth can-i <verb> <resource> --as={SA_USER}\n{table}")
    wrong = [r for r in rows if r[3] != r[4]]
    assert not wrong, f"unexpected answers:\n{table}"
