"""The identity Koupleless module-controller V1.0.0 runs as, on the test control plane.

Its kustomize default (config/default/kustomization.yaml:2 namespace ``module-deployment-system``, :9
namePrefix ``module-deployment-``; config/rbac/service_account.yaml:11 ServiceAccount ``controller-manager``,
which config/manager/manager.yaml:101 runs the manager as) makes it
``system:serviceaccount:module-deployment-system:module-deployment-controller-manager``. The ClusterRole
holds the rules of config/rbac/role.yaml for what the emulator touches.

One deviation, on by default (``owner_finalizers``): ``update`` on ``deployments/finalizers``. The test API
server runs the OwnerReferencesPermissionEnforcement admission plugin (tests/controlplane/cluster.py), which
refuses an ownerReference with ``blockOwnerDeletion: true`` from a user who cannot update the owner's
finalizers; role.yaml grants only get/list/watch on Deployments (role.yaml:31-38), so there V1.0.0's
updateOwnerReference (moduledeployment_controller.go:286-309) is refused with 403 and its ModuleDeployments
never get finalizers. Clusters without that plugin (the usual default) accept it; the extra rule makes this
control plane behave like them. ``owner_finalizers=False`` keeps role.yaml exact.

The control plane is shared by the whole session: everything here is applied idempotently (server-side
apply) and never deleted. One identity has one rule set: use another ServiceAccount name for another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from controller.runtime.kube.client import JsonObj, KubeClient, RequestHook
from controller.runtime.kube.config import Configuration, load_configuration
from controller.runtime.kube.errors import NotFound
from tests.controlplane import ControlPlane
from tests.harness import wait_for

from .emulator import (
    DEFAULT_GROUP,
    DEFAULT_LABEL_PREFIX,
    DEFAULT_VERSION,
    MODULE_EXISTED,
    MODULE_REPLICASET_EXISTED,
    V1_USER_AGENT,
    ModuleControllerV1,
    run_module_controller_v1,
)

__all__ = [
    "DEFAULT_NAMESPACE",
    "DEFAULT_SERVICE_ACCOUNT",
    "Identity",
    "ensure_identity",
    "release_v1_finalizers",
    "request_token",
    "running_upstream",
    "upstream_client",
    "v1_rules",
]

DEFAULT_NAMESPACE = "module-deployment-system"
DEFAULT_SERVICE_ACCOUNT = "module-deployment-controller-manager"
FIELD_MANAGER = "msc-test-koupleless-v1"
RBAC = "/apis/rbac.authorization.k8s.io/v1"


@dataclass(frozen=True, slots=True)
class Identity:
    namespace: str = DEFAULT_NAMESPACE
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    group: str = DEFAULT_GROUP  # the ModuleDeployment API group its rules name
    owner_finalizers: bool = True  # see the module docstring

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    @property
    def role_name(self) -> str:
        return f"msc-test:koupleless-v1:{self.namespace}:{self.service_account}:{self.group}"

    @property
    def owner_role_name(self) -> str:
        return f"msc-test:koupleless-v1:{self.namespace}:{self.service_account}:owner-finalizers"


def v1_rules(group: str) -> list[JsonObj]:
    """config/rbac/role.yaml's rules for what the emulator touches."""
    return [
        {"apiGroups": [""], "resources": ["services"],  # role.yaml:19-30
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},  # :31-38
        {"apiGroups": [group], "resources": ["moduledeployments"],  # :39-50
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"apiGroups": [group], "resources": ["moduledeployments/finalizers"], "verbs": ["update"]},  # :51-56
        {"apiGroups": [group], "resources": ["moduledeployments/status"],  # :57-64
         "verbs": ["get", "patch", "update"]},
    ]


OWNER_FINALIZERS_RULE: JsonObj = {"apiGroups": ["apps"], "resources": ["deployments/finalizers"], "verbs": ["update"]}


async def _apply(admin: KubeClient, path: str, obj: JsonObj) -> JsonObj:
    return await admin.request("PATCH", path, body=obj, params={"fieldManager": FIELD_MANAGER, "force": True},
                               content_type="application/apply-patch+yaml")


def _binding(name: str, role: str, identity: Identity) -> JsonObj:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": identity.service_account,
                      "namespace": identity.namespace}],
    }


async def ensure_identity(admin: KubeClient, identity: Identity) -> None:
    """Creates (or brings back to this shape) the namespace, the ServiceAccount (the serviceaccount
    controller only makes ``default``), the ClusterRole and its binding."""
    ns, sa = identity.namespace, identity.service_account
    await _apply(admin, f"/api/v1/namespaces/{ns}",
                 {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    await _apply(admin, f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}",
                 {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": ns}})
    role = identity.role_name
    await _apply(admin, f"{RBAC}/clusterroles/{role}", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
        "rules": v1_rules(identity.group)})
    await _apply(admin, f"{RBAC}/clusterrolebindings/{role}", _binding(role, role, identity))
    owner = identity.owner_role_name
    if identity.owner_finalizers:
        await _apply(admin, f"{RBAC}/clusterroles/{owner}", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": owner},
            "rules": [OWNER_FINALIZERS_RULE]})
        await _apply(admin, f"{RBAC}/clusterrolebindings/{owner}", _binding(owner, owner, identity))
    else:
        with suppress(NotFound):
            await admin.request("DELETE", f"{RBAC}/clusterrolebindings/{owner}")


async def request_token(admin: KubeClient, identity: Identity, *, expiration_seconds: int = 3600) -> str:
    """A bound token for the ServiceAccount (TokenRequest API)."""
    path = f"/api/v1/namespaces/{identity.namespace}/serviceaccounts/{identity.service_account}/token"
    answer = await admin.request("POST", path, body={
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": expiration_seconds}})
    token = (answer.get("status") or {}).get("token")
    if not isinstance(token, str) or not token:
        raise AssertionError(f"TokenRequest for {identity.username} returned no token")
    return token


async def _allowed(client: KubeClient, attributes: JsonObj) -> bool:
    review = await client.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body={
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes}})
    return bool((review.get("status") or {}).get("allowed"))


async def _rbac_in_force(client: KubeClient, identity: Identity) -> None:
    """Waits until the API server's authorizer answers with the rules just applied (its RBAC cache is
    filled by a watch, so a fresh binding takes a moment)."""
    wanted: list[tuple[JsonObj, bool]] = [
        ({"verb": "watch", "group": identity.group, "resource": "moduledeployments"}, True),
        ({"verb": "update", "group": identity.group, "resource": "moduledeployments", "subresource": "status"}, True),
        ({"verb": "delete", "group": "", "resource": "services"}, True),
        ({"verb": "watch", "group": "apps", "resource": "deployments"}, True),
        ({"verb": "update", "group": "apps", "resource": "deployments", "subresource": "finalizers"},
         identity.owner_finalizers),
    ]

    async def in_force() -> bool:
        return all([await _allowed(client, attrs) == allowed for attrs, allowed in wanted])
    await wait_for(in_force, timeout=30, what=f"RBAC of {identity.username} to be in force", interval=0.1)


def _kubeconfig(source: ControlPlane | str | Path) -> str:
    return str(source.kubeconfig if isinstance(source, ControlPlane) else source)


@asynccontextmanager
async def upstream_client(source: ControlPlane | str | Path, identity: Identity | None = None, *,
                          on_request: RequestHook | None = None) -> AsyncIterator[KubeClient]:
    """A KubeClient that authenticates as ``identity`` (default: V1.0.0's; a bearer token from the
    TokenRequest API, the CA of the control plane's kubeconfig), once its RBAC is in force. ``source``: the
    control plane or its kubeconfig."""
    identity = identity or Identity()
    admin_config = await load_configuration(_kubeconfig(source))
    async with KubeClient(admin_config) as admin:
        await ensure_identity(admin, identity)
        token = await request_token(admin, identity)
    config = Configuration(host=admin_config.host, ssl_ca_cert=admin_config.ssl_ca_cert,
                           verify_ssl=admin_config.verify_ssl, token=token, source=identity.username)
    async with KubeClient(config, on_request=on_request, user_agent=V1_USER_AGENT) as client:
        await _rbac_in_force(client, identity)
        yield client


@asynccontextmanager
async def running_upstream(
    source: ControlPlane | str | Path,
    namespace: str,
    *,
    identity: Identity | None = None,
    version: str = DEFAULT_VERSION,
    label_prefix: str = DEFAULT_LABEL_PREFIX,
    replicaset_requeue_after: float | None = None,
) -> AsyncIterator[ModuleControllerV1]:
    """The emulator of V1.0.0 for ``identity.group`` in ``namespace``, running as ``identity`` (default:
    V1.0.0's own)."""
    identity = identity or Identity()
    async with upstream_client(source, identity) as client, run_module_controller_v1(
            client, namespace, group=identity.group, version=version, label_prefix=label_prefix,
            replicaset_requeue_after=replicaset_requeue_after) as emulator:
        yield emulator


def release_v1_finalizers(controlplane: ControlPlane, namespace: str, group: str = DEFAULT_GROUP) -> None:
    """Removes V1.0.0's finalizers from every ModuleDeployment of ``group`` in ``namespace`` (as admin), so
    that a test that stopped the emulator mid-retirement does not leave its namespace terminating for
    good. For a fixture's teardown: synchronous, and it never fails."""
    out = controlplane.kubectl("get", f"moduledeployments.{group}", "-n", namespace, "-o",
                               "jsonpath={range .items[*]}{.metadata.name}{'\\n'}{end}", check=False)
    for name in out.split():
        current = controlplane.kubectl("get", f"moduledeployments.{group}", name, "-n", namespace, "-o",
                                       "jsonpath={.metadata.finalizers}", check=False)
        if MODULE_EXISTED in current or MODULE_REPLICASET_EXISTED in current:
            controlplane.kubectl("patch", f"moduledeployments.{group}", name, "-n", namespace, "--type=json",
                                 "-p", '[{"op": "remove", "path": "/metadata/finalizers"}]', check=False)
