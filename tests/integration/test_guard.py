"""The deletion guard (docs/guard.md) on the real control plane: the chart's ValidatingAdmissionPolicy for the
koupleless profile refuses a listed user (Koupleless' module-controller, here a user made up for this test)
the deletion of a Service that belongs to koupleless.io, and lets everyone and everything else delete.

The control plane is shared and the policy is cluster-scoped: it is rendered with a user name of its own,
which no other test uses, and its binding is narrowed to this test's namespace. The listed user acts
through impersonation, with a Role that lets it delete Services in that namespace only.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import pytest

from controller.moduleservice.profiles import PROFILES
from controller.runtime.kube.client import JsonObj, KubeClient, load_configuration
from controller.runtime.kube.errors import Forbidden, NotFound
from controller.runtime.kube.resources import SERVICES, Resource
from tests.controlplane import ControlPlane
from tests.harness import Api, api_client, module_deployment, wait_for
from tests.render.common import GUARD_KINDS, VAP_API, helm_template

pytestmark = pytest.mark.asyncio

POLICIES = Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicies",
                    "ValidatingAdmissionPolicy", namespaced=False)
BINDINGS = Resource("admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
                    "ValidatingAdmissionPolicyBinding", namespaced=False)
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
GROUP = PROFILES["koupleless"].group
OTHER_GROUP = PROFILES["sofa-serverless"].group
API_GROUP_LABEL = "module-service-controller/api-group"


@asynccontextmanager
async def acting_as(kubeconfig: str, user: str) -> AsyncIterator[KubeClient]:
    """The admin's credentials, acting as ``user`` (Impersonate-User)."""
    async with KubeClient(await load_configuration(kubeconfig), headers={"Impersonate-User": user}) as client:
        yield client


def guard_objects(namespace: str, user: str | Sequence[str], release: str, *,
                  profile: str = "koupleless") -> list[JsonObj]:
    """The chart's guard for ``profile`` with ``user`` (one, or a list) as its only users, bound in
    ``namespace`` only."""
    users = [user] if isinstance(user, str) else list(user)
    sets = [f"profile={profile}", *(f"guard.users[{i}]={u}" for i, u in enumerate(users))]
    objects = [o for o in helm_template(*sets, release=release, api_versions=(VAP_API,)) if o["kind"] in GUARD_KINDS]
    assert sorted(o["kind"] for o in objects) == GUARD_KINDS
    binding = next(o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding")
    binding["spec"]["matchResources"] = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    return objects


@asynccontextmanager
async def guard_installed(api: Api, objects: list[JsonObj]) -> AsyncIterator[None]:
    policy, binding = sorted(objects, key=lambda o: str(o["kind"]))
    try:
        await api.client.request("POST", POLICIES.path(), body=policy)
        await api.client.request("POST", BINDINGS.path(), body=binding)
        yield
    finally:
        for resource, obj in ((BINDINGS, binding), (POLICIES, policy)):
            with suppress(NotFound):
                await api.client.request("DELETE", resource.path(name=obj["metadata"]["name"]))


async def allow_service_deletes(api: Api, namespace: str, user: str) -> None:
    """What a module-controller has: the right to delete Services (here only in ``namespace``)."""
    await api.client.request("POST", ROLES.path(namespace), body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "delete-services"},
        "rules": [{"apiGroups": [""], "resources": ["services"],
                   "verbs": ["get", "list", "delete", "deletecollection"]}]})
    await api.client.request("POST", ROLE_BINDINGS.path(namespace), body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "delete-services"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "delete-services"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


def owner(md: JsonObj) -> JsonObj:
    return {"apiVersion": md["apiVersion"], "kind": "ModuleDeployment", "name": md["metadata"]["name"],
            "uid": md["metadata"]["uid"]}


async def create_service(api: Api, namespace: str, name: str, *, owners: list[JsonObj] | None = None,
                         labels: dict[str, str] | None = None) -> JsonObj:
    meta: JsonObj = {"name": name, "labels": labels or {}}
    if owners:
        meta["ownerReferences"] = owners
    return await api.create_svc(namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"type": "ClusterIP", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}})


async def delete_as(client: KubeClient, namespace: str, name: str, *, dry_run: bool = False) -> None:
    await client.request("DELETE", SERVICES.path(namespace, name), params={"dryRun": "All"} if dry_run else None)


async def uid(api: Api, namespace: str, name: str) -> str | None:
    svc = await api.get_svc(namespace, name)
    return None if svc is None else str(svc["metadata"]["uid"])


async def refused(client: KubeClient, namespace: str, name: str) -> Forbidden:
    with pytest.raises(Forbidden) as caught:
        await delete_as(client, namespace, name)
    return caught.value


async def test_guard_refuses_the_listed_user_only(controlplane: ControlPlane, kubeconfig: str, namespace: str,
                                                  profile_crds: None) -> None:
    tag = uuid.uuid4().hex[:6]
    user = f"msc-guard-test-{tag}"  # stands for Koupleless' module-controller
    koupleless = PROFILES["koupleless"].resource
    async with api_client(kubeconfig, koupleless) as api, acting_as(kubeconfig, user) as module_controller:
        await allow_service_deletes(api, namespace, user)
        md = await api.create_md(namespace, module_deployment("md-k", "mod-k"))
        async with api_client(kubeconfig, PROFILES["sofa-serverless"].resource) as other_api:
            other_md = await other_api.create_md(namespace, module_deployment("md-s", "mod-s"))
        owned = await create_service(api, namespace, "owned-service", owners=[owner(md)])
        labelled = await create_service(api, namespace, "labelled-service",
                                        labels={API_GROUP_LABEL: GROUP, "guard-test": "batch"})
        foreign = await create_service(api, namespace, "foreign-service", owners=[owner(other_md)])
        # Owner references decide over the label: owned by another group's ModuleDeployment, not ours.
        await create_service(api, namespace, "mixed-service", owners=[owner(other_md)],
                             labels={API_GROUP_LABEL: GROUP})
        await create_service(api, namespace, "unowned-service")
        await create_service(api, namespace, "other-label-service", labels={API_GROUP_LABEL: OTHER_GROUP})
        assert foreign["metadata"]["ownerReferences"][0]["apiVersion"] == f"{OTHER_GROUP}/v1alpha1"

        async with guard_installed(api, guard_objects(namespace, user, f"g{tag}")):
            # The API server loads a new policy asynchronously: wait (with a dry run, which changes
            # nothing) until it refuses.
            async def enforced() -> bool:
                try:
                    await delete_as(module_controller, namespace, "owned-service", dry_run=True)
                except Forbidden:
                    return True
                return False
            await wait_for(enforced, timeout=60, what="the guard to refuse owned-service", interval=0.2)

            # Refused: ours by owner reference and by label, with a reason and a message that says why.
            error = await refused(module_controller, namespace, "owned-service")
            assert error.reason == "Forbidden"
            assert f"Service {namespace}/owned-service belongs to the ModuleDeployments of {GROUP}" in error.message, \
                error.message
            error = await refused(module_controller, namespace, "labelled-service")
            assert f"{namespace}/labelled-service" in error.message, error.message
            # A delete of many Services is admitted one Service at a time: ours stays.
            with pytest.raises(Forbidden):
                await module_controller.request("DELETE", SERVICES.path(namespace),
                                                params={"labelSelector": "guard-test=batch"})
            assert await uid(api, namespace, "owned-service") == owned["metadata"]["uid"]
            assert await uid(api, namespace, "labelled-service") == labelled["metadata"]["uid"]

            # Allowed to the listed user: Services of another group, or of nobody.
            for name in ("foreign-service", "mixed-service", "unowned-service", "other-label-service"):
                await delete_as(module_controller, namespace, name)
                assert await api.get_svc(namespace, name) is None, name

            # Everyone else may delete ours: the admin here (people, this controller)...
            await delete_as(api.client, namespace, "labelled-service")
            assert await api.get_svc(namespace, "labelled-service") is None
            # ...and the garbage collector, once the owning ModuleDeployment is gone.
            await api.delete_md(namespace, "md-k")

            async def collected() -> bool:
                return await api.get_svc(namespace, "owned-service") is None
            await wait_for(collected, timeout=60, what="the garbage collector to delete owned-service", interval=0.2)
