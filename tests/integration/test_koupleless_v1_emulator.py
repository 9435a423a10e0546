"""The emulator of Koupleless module-controller V1.0.0 (tests/koupleless_v1) on the real control plane, with
the Koupleless CRD and without our controller: what it does to ``<module>-service`` and to
ModuleDeployments, as V1.0.0's source says (moduledeployment_controller.go, service_create_handler.go,
service_delete_handler.go of tag V1.0.0)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest

from controller.moduleservice.profiles import PROFILES
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.errors import AlreadyExists, ApiError, NotFound
from controller.runtime.kube.resources import SERVICES
from tests.controlplane import ControlPlane
from tests.harness import Api, api_client, module_deployment, wait_for
from tests.koupleless_v1 import (
    DEFAULT_LABEL_PREFIX,
    MODULE_EXISTED,
    MODULE_REPLICASET_EXISTED,
    Identity,
    ModuleControllerV1,
    release_v1_finalizers,
    run_module_controller_v1,
    running_upstream,
    upstream_client,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("profile_crds")]

KOUPLELESS = PROFILES["koupleless"]
VAP = "/apis/admissionregistration.k8s.io/v1"


@pytest.fixture(autouse=True)
def _no_stuck_namespace(controlplane: ControlPlane, namespace: str) -> Iterator[None]:
    yield
    release_v1_finalizers(controlplane, namespace)


@asynccontextmanager
async def admin(kubeconfig: str) -> AsyncIterator[Api]:
    async with api_client(kubeconfig, KOUPLELESS.resource) as api:
        yield api


async def create_base(api: Api, ns: str, name: str) -> JsonObj:
    """An apps/v1 Deployment to be a ModuleDeployment's base (no Pods: nothing runs them here)."""
    return await api.client.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "base", "image": "example.invalid/base:1"}]}}}})


def md_on(name: str, module: str, base: str) -> JsonObj:
    md = module_deployment(name, module)
    md["spec"]["baseDeploymentName"] = base
    return md


async def wait_reconciled(upstream: ModuleControllerV1, md: str, times: int) -> None:
    async def done() -> bool:
        return upstream.reconciles_by_md[md] >= times
    await wait_for(done, what=f"{times} reconciles of {md}")


async def wait_idle(upstream: ModuleControllerV1) -> None:
    async def idle() -> bool:
        return upstream.idle()
    await wait_for(idle, what="the emulator to be idle")


async def wait_md_gone(api: Api, ns: str, name: str, *, timeout: float = 60.0) -> None:
    async def gone() -> bool:
        return await api.get_md(ns, name) is None
    await wait_for(gone, timeout=timeout, what=f"ModuleDeployment {name} to be deleted")


def finalizers(md: JsonObj | None) -> list[str]:
    return list(((md or {}).get("metadata") or {}).get("finalizers") or [])


def report(upstream: ModuleControllerV1, what: str) -> str:
    line = (f"{what}: reconciles={upstream.reconciles} delete_events={dict(upstream.delete_events)} "
            f"deletes attempted={upstream.deletes_attempted} ok={upstream.deletes_succeeded} "
            f"refused={upstream.deletes_refused} not_found={upstream.deletes_not_found} "
            f"creates attempted={upstream.creates_attempted} ok={upstream.creates_succeeded} "
            f"ops={[(round(o.at, 3), o.op, o.outcome, o.code) for o in upstream.service_ops]}")
    print(line)
    return line


# ---------------------------------------------------------------------------------------------- create
async def test_creates_the_service_on_generation_1_exactly_as_v1(kubeconfig: str, namespace: str,
                                                                  controlplane: ControlPlane) -> None:
    async with admin(kubeconfig) as api, running_upstream(controlplane, namespace) as upstream:
        created = await api.create_md(namespace, module_deployment("m1-md", "m1"))
        assert created["metadata"]["generation"] == 1
        svc = await api.wait_svc(namespace, "m1-service")
        # No base Deployment: every reconcile fails at the owner reference and is requeued, and each one
        # publishes the create event again (generation stays 1), finding the Service there.
        await wait_reconciled(upstream, "m1-md", 4)
        assert upstream.create_events["m1-md"] >= 4

        meta, spec = svc["metadata"], svc["spec"]
        assert not {"labels", "annotations", "ownerReferences", "finalizers"} & set(meta), meta
        # Written with no fieldManager: the API server names V1.0.0's user agent ("manager").
        assert {m["manager"] for m in meta["managedFields"]} == {"manager"}
        assert spec["type"] == "NodePort"
        assert spec["selector"] == {f"{DEFAULT_LABEL_PREFIX}m1": "true"}
        ports = [{k: p[k] for k in ("name", "protocol", "port", "targetPort")} for p in spec["ports"]]
        assert ports == [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": 8080}]
        # Created once; a second CREATE can only come from a cache that had not yet seen the first, and
        # the API server answers it 409 (V1.0.0 reads through the same kind of cache).
        assert upstream.creates_succeeded == 1, report(upstream, "create")
        assert {o.outcome for o in upstream.ops(op="create")[1:]} <= {"already_exists"}
        assert upstream.ops(op="create")[0].module_deployment == "m1-md"
        assert upstream.deletes_attempted == 0
        still = await api.get_svc(namespace, "m1-service")
        assert still is not None
        assert still["metadata"]["uid"] == meta["uid"]


async def test_leaves_an_existing_service_of_that_name_alone(kubeconfig: str, namespace: str,
                                                             controlplane: ControlPlane) -> None:
    async with admin(kubeconfig) as api, running_upstream(controlplane, namespace) as upstream:
        theirs = await api.create_svc(namespace, {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "m2-service", "labels": {"owner": "someone-else"}},
            "spec": {"selector": {"app": "other"}, "ports": [{"name": "web", "port": 9090}]}})

        async def cached() -> bool:
            return upstream.cached_service("m2-service") is not None
        await wait_for(cached, what="the emulator's cache to hold m2-service")
        await api.create_md(namespace, module_deployment("m2-md", "m2"))
        await wait_reconciled(upstream, "m2-md", 4)
        assert upstream.create_events["m2-md"] >= 4
        assert upstream.creates_attempted == 0
        now = await api.get_svc(namespace, "m2-service")
        assert now is not None
        assert now["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]


# ---------------------------------------------------------------------------------------------- finalizers
async def test_without_the_base_deployment_no_finalizers_and_delete_leaves_the_service(
        kubeconfig: str, namespace: str, controlplane: ControlPlane) -> None:
    async with admin(kubeconfig) as api, running_upstream(controlplane, namespace) as upstream:
        await api.create_md(namespace, md_on("m3-md", "m3", "no-such-base"))
        await api.wait_svc(namespace, "m3-service")
        await wait_reconciled(upstream, "m3-md", 4)
        md = await api.get_md(namespace, "m3-md")
        assert md is not None
        assert finalizers(md) == []
        assert not md["metadata"].get("ownerReferences")
        assert any('deployments.apps "no-such-base" not found' in e for _, key, e in upstream.reconcile_errors
                   if key.endswith("/m3-md"))

        # Without finalizers the ModuleDeployment is gone at once: the reconcile that follows finds
        # NotFound (moduledeployment_controller.go:76-79), so no delete event, and the Service stays.
        await api.delete_md(namespace, "m3-md")
        await wait_md_gone(api, namespace, "m3-md")

        async def forgotten() -> bool:
            return upstream.cached_md("m3-md") is None and upstream.idle()
        await wait_for(forgotten, what="the emulator to have handled the deletion")
        assert upstream.delete_events["m3-md"] == 0
        assert upstream.deletes_attempted == 0
        assert await api.get_svc(namespace, "m3-service") is not None


async def test_with_the_base_deployment_owner_and_finalizers_then_deletion_completes(
        kubeconfig: str, namespace: str, controlplane: ControlPlane) -> None:
    async with admin(kubeconfig) as api, running_upstream(controlplane, namespace) as upstream:
        base = await create_base(api, namespace, "base-4")
        await api.create_md(namespace, md_on("m4-md", "m4", "base-4"))

        async def completed() -> JsonObj | None:
            md = await api.get_md(namespace, "m4-md")
            release = ((md or {}).get("status") or {}).get("releaseStatus") or {}
            return md if release.get("progress") == "Completed" else None
        md = await wait_for(completed, what="the release to complete")
        assert sorted(finalizers(md)) == sorted([MODULE_REPLICASET_EXISTED, MODULE_EXISTED])
        refs = md["metadata"]["ownerReferences"]
        assert refs == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "base-4",
                         "uid": base["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
        # The Update wrote the Go zero value of serviceStrategy.targetPort (an IntOrString, no omitempty).
        assert md["spec"]["operationStrategy"]["serviceStrategy"]["targetPort"] == 0
        # The harness's ModuleDeployments have no labels: V1.0.0 would have panicked creating the
        # ModuleReplicaSet (moduledeployment_controller.go:491).
        assert any(where.startswith("MDC:491") for name, where in upstream.would_panic if name == "m4-md")
        await api.wait_svc(namespace, "m4-service")

        await api.delete_md(namespace, "m4-md")
        # Completed -> Terminating, spec.replicas 0, module-existed removed, then ModuleReplicaSets
        # deleted and, 10 s later (GetNextReconcileTime), module-replicaset-existed removed.
        await wait_md_gone(api, namespace, "m4-md", timeout=60)
        await api.wait_svc_gone(namespace, "m4-service")
        report(upstream, "retirement")
        assert upstream.delete_events["m4-md"] >= 4
        assert upstream.deletes_attempted >= 1
        assert upstream.deletes_succeeded == 1
        assert upstream.deletes_refused == 0
        assert {o.outcome for o in upstream.ops(op="delete")} <= {"ok", "not_found"}


async def test_exact_role_yaml_is_refused_the_owner_reference_here(kubeconfig: str, namespace: str,
                                                                    controlplane: ControlPlane) -> None:
    """With role.yaml's rules only, OwnerReferencesPermissionEnforcement (on in this control plane)
    refuses blockOwnerDeletion on the base Deployment: V1.0.0's ModuleDeployments get no finalizers."""
    strict = Identity(service_account="strict-controller-manager", owner_finalizers=False)
    async with admin(kubeconfig) as api, running_upstream(controlplane, namespace, identity=strict) as upstream:
        await create_base(api, namespace, "base-5")
        await api.create_md(namespace, md_on("m5-md", "m5", "base-5"))

        async def refused() -> bool:
            return any("blockOwnerDeletion" in e for _, key, e in upstream.reconcile_errors if key.endswith("/m5-md"))
        await wait_for(refused, what="the owner reference Update to be refused")
        md = await api.get_md(namespace, "m5-md")
        assert finalizers(md) == []
        assert not (md or {})["metadata"].get("ownerReferences")
        await api.delete_md(namespace, "m5-md")


# ---------------------------------------------------------------------------------------------- refused deletes
def refuse_deletes_policy(name: str, namespace: str, username: str) -> tuple[JsonObj, JsonObj]:
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchExpressions": [
                    {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}]},
                "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["DELETE"],
                                   "resources": ["services"]}],
            },
            "validations": [{"expression": f"request.userInfo.username != '{username}'",
                             "message": "Services here are not Koupleless' to delete"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return policy, binding


async def wait_policy_active(api: Api, upstream: KubeClient, namespace: str) -> ApiError:
    """Until a DELETE of a throwaway Service by the emulator's identity is refused; returns the refusal."""
    probe = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "vap-probe"},
             "spec": {"ports": [{"port": 80}]}}

    async def refused() -> ApiError | None:
        with suppress(AlreadyExists):
            await api.create_svc(namespace, probe)
        try:
            await upstream.request("DELETE", SERVICES.path(namespace, "vap-probe"))
        except NotFound:
            return None
        except ApiError as exc:
            return exc
        return None
    return await wait_for(refused, timeout=30, what="the admission policy to refuse the emulator's deletes",
                          interval=0.2)


async def test_refused_deletes_are_counted_and_the_deletion_still_completes(
        kubeconfig: str, namespace: str, controlplane: ControlPlane) -> None:
    """V1.0.0 carries on when its DELETE is refused: PublishEvent returns the handler's error
    (event.go:46-48) and the reconciler drops it (moduledeployment_controller.go:95)."""
    identity = Identity()
    name = f"msc-test-refuse-v1-deletes-{uuid.uuid4().hex[:8]}"
    policy, binding = refuse_deletes_policy(name, namespace, identity.username)
    async with admin(kubeconfig) as api:
        await api.client.request("POST", f"{VAP}/validatingadmissionpolicies", body=policy)
        try:
            await api.client.request("POST", f"{VAP}/validatingadmissionpolicybindings", body=binding)
            async with upstream_client(controlplane, identity) as client:
                refusal = await wait_policy_active(api, client, namespace)
                assert refusal.status in (403, 422), refusal
                async with run_module_controller_v1(client, namespace, replicaset_requeue_after=1.0) as upstream:
                    await retire_refused(api, upstream, namespace)
        finally:
            with anyio.CancelScope(shield=True):
                for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
                    with suppress(NotFound):
                        await api.client.request("DELETE", f"{VAP}/{kind}/{name}")


async def retire_refused(api: Api, upstream: ModuleControllerV1, namespace: str) -> None:
    await create_base(api, namespace, "base-6")
    await api.create_md(namespace, md_on("m6-md", "m6", "base-6"))
    svc = await api.wait_svc(namespace, "m6-service")

    async def owned() -> bool:
        return len(finalizers(await api.get_md(namespace, "m6-md"))) == 2
    await wait_for(owned, what="the finalizers")

    await api.delete_md(namespace, "m6-md")
    await wait_md_gone(api, namespace, "m6-md")
    report(upstream, "refused retirement")
    # Every reconcile of the terminating ModuleDeployment found the Service and was refused its DELETE;
    # none of them stopped the termination.
    assert upstream.deletes_refused >= 1
    assert upstream.deletes_succeeded == 0
    assert all(o.code in (403, 422) for o in upstream.ops(op="delete", service="m6-service")
               if o.outcome == "refused")
    assert upstream.deletes_refused == upstream.delete_events["m6-md"]
    assert len([e for _, md, e in upstream.discarded_errors if md == "m6-md"]) == upstream.deletes_refused
    still: Any = await api.get_svc(namespace, "m6-service")
    assert still is not None
    assert still["metadata"]["uid"] == svc["metadata"]["uid"]
