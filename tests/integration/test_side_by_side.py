"""Three installs in one cluster, one per API profile (seed, koupleless, sofa-serverless): a migration from
sofa-serverless to Koupleless with this project's own CRD beside them. Each serves the ModuleDeployments of
its own group, in the same namespace, with module names they share and module names of their own, through
create, port change, disable, rename and delete. None may write another's Service.

Each install runs as a user of its own, and the writes are counted from the API server's audit log: a
claim about the cluster, not about the controllers' bookkeeping.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import AsyncExitStack

import pytest

from controller.moduleservice.profiles import PROFILES, Profile
from controller.runtime.kube.client import JsonObj
from tests.audit import ServiceWrite, service_writes
from tests.controlplane import ControlPlane
from tests.harness import Api, api_client, controller_config, module_deployment, running_controller, service_strategy
from tests.integration.test_profiles import wait_right, wait_state

SHARED = "shared"  # a module name all three installs serve: one Service name, three candidates


def owner_groups(svc: JsonObj) -> set[str]:
    """The API groups of the Service's ModuleDeployment owners (written here, not imported: this test must
    also run against a controller from before groups decided ownership, and fail there)."""
    return {r["apiVersion"].split("/", 1)[0] for r in svc["metadata"].get("ownerReferences") or ()
            if r.get("kind") == "ModuleDeployment"}


def user(profile: Profile) -> str:
    return f"msc-{profile.name}"


def foreign_writes(writes: list[ServiceWrite], users: Collection[str], *, installs: Mapping[str, str] | None = None,
                   refused_ok: Collection[str] = ()) -> list[str]:
    """Writes by one install to a Service another install created (and nobody has deleted since).

    A Service's owner is the install whose create made it; a successful delete (by its owner, or by the
    garbage collector after the last owner went) ends it. A create that meets AlreadyExists writes nothing.
    ``installs`` maps a user to its install (default: every user is an install of its own), so that this
    controller and the module-controller serving the same API group count as one. A write by a user in
    ``refused_ok`` that the API server refused changed nothing and is not counted either: Koupleless'
    module-controller deletes by name whatever the owner, and the deletion guard refusing it is the point.
    """
    def install(user: str) -> str:
        return (installs or {}).get(user, user)

    owner: dict[str, str] = {}
    bad: list[str] = []
    for w in writes:
        current = owner.get(w.name)
        if w.user in users and current is not None and current != install(w.user) and not (
                w.verb == "create" and not w.succeeded) and not (w.user in refused_ok and not w.succeeded):
            bad.append(f"{w.user} {w.verb} {w.name} ({w.code}) owned by {current}")
        if w.verb == "create" and w.succeeded:
            owner[w.name] = install(w.user)
        elif w.verb == "delete" and w.succeeded:
            owner.pop(w.name, None)
    return bad


@pytest.mark.asyncio
@pytest.mark.core
async def test_three_profiles_never_write_each_others_services(controlplane: ControlPlane, namespace: str,
                                                               profile_crds: None) -> None:
    profiles = [PROFILES[name] for name in ("seed", "koupleless", "sofa-serverless")]
    users = {user(p) for p in profiles}
    async with AsyncExitStack() as stack:
        apis: dict[str, Api] = {}
        for p in profiles:
            apis[p.name] = await stack.enter_async_context(api_client(str(controlplane.kubeconfig), p.resource))
            config = controller_config(str(controlplane.user_kubeconfig(user(p))), namespace, profile=p.name)
            await stack.enter_async_context(running_controller(config))

        # Create: each its own module, and all three the shared one.
        own: dict[str, JsonObj] = {}
        for p in profiles:
            own[p.name] = await apis[p.name].create_md(namespace, module_deployment(f"{p.name}-own", f"{p.name}-mod"))
        for p in profiles:
            await apis[p.name].create_md(namespace, module_deployment(f"{p.name}-shared", SHARED))
        for p in profiles:
            await wait_right(apis[p.name], namespace, f"{p.name}-mod", [own[p.name]], p)
        shared = await apis["seed"].wait_svc(namespace, f"{SHARED}-service", lambda s: len(owner_groups(s)) == 1)
        (winner_group,) = owner_groups(shared)
        assert shared["metadata"]["labels"]["module-service-controller/api-group"] == winner_group
        winner = next(p for p in profiles if p.group == winner_group)
        for p in profiles:
            if p is not winner:
                await wait_state(apis[p.name], namespace, f"{p.name}-shared", "NameConflict", p,
                                 contains=winner_group, type_="Warning")

        # Port change, disable, re-enable under another module name (a rename), each on its own module.
        for p in profiles:
            await apis[p.name].patch_md(namespace, f"{p.name}-own", service_strategy(port=9090))
        for p in profiles:
            await wait_right(apis[p.name], namespace, f"{p.name}-mod", [own[p.name]], p, port=9090)
        for p in profiles:
            await apis[p.name].patch_md(namespace, f"{p.name}-own", service_strategy(enableModuleService=False))
        for p in profiles:
            await apis[p.name].wait_svc_gone(namespace, f"{p.name}-mod-service")
        for p in profiles:
            await apis[p.name].patch_md(namespace, f"{p.name}-own", {
                "spec": {"template": {"spec": {"module": {"name": f"{p.name}-renamed"}}},
                         "operationStrategy": {"serviceStrategy": {"enableModuleService": True}}}})
        for p in profiles:
            await wait_right(apis[p.name], namespace, f"{p.name}-renamed", [own[p.name]], p, port=9090)

        # Delete: the shared Service's owner goes first; another install takes the name over.
        await apis[winner.name].delete_md(namespace, f"{winner.name}-shared")
        successor = await apis["seed"].wait_svc(
            namespace, f"{SHARED}-service", lambda s: owner_groups(s) not in (set(), {winner_group}),
            timeout=60, what="the shared Service taken over by another install")
        (successor_group,) = owner_groups(successor)
        for p in profiles:
            await apis[p.name].delete_md(namespace, f"{p.name}-own")
            await apis[p.name].delete_md(namespace, f"{p.name}-shared")
        for p in profiles:
            await apis[p.name].wait_svc_gone(namespace, f"{p.name}-renamed-service", timeout=60)
        await apis["seed"].wait_svc_gone(namespace, f"{SHARED}-service", timeout=60)

    writes = service_writes(controlplane.audit_log, namespace)
    creators = {w.user for w in writes if w.verb == "create" and w.succeeded}
    assert creators == users, f"every install made Services of its own: {creators}"
    assert successor_group != winner_group
    bad = foreign_writes(writes, users)
    by_user = {u: sum(1 for w in writes if w.user == u) for u in sorted(users)}
    print(f"\nthree installs side by side: {len(writes)} audited Service writes {by_user}; shared Service "
          f"created by {winner_group}, then {successor_group}; writes to another install's Service: {len(bad)}")
    assert bad == []


def test_foreign_writes_are_found() -> None:
    """The audit check itself can fail: a patch by one install of a Service another created is found."""
    writes = [
        ServiceWrite("create", "a-service", "msc-seed", 201, "t1"),
        ServiceWrite("create", "a-service", "msc-koupleless", 409, "t2"),
        ServiceWrite("patch", "a-service", "msc-koupleless", 200, "t3"),
        ServiceWrite("delete", "a-service", "admin", 200, "t4"),
        ServiceWrite("create", "a-service", "msc-koupleless", 201, "t5"),
    ]
    assert foreign_writes(writes, {"msc-seed", "msc-koupleless"}) == [
        "msc-koupleless patch a-service (200) owned by msc-seed"]


def test_foreign_writes_by_install() -> None:
    """An install is every user of one API group: its module-controller's create, then this controller's
    adoption patch, is one install's; a refused delete by a module-controller is not a write, a successful
    one is."""
    installs = {"msc-koupleless": "koupleless.io", "v1": "koupleless.io", "msc-seed": "koupleless.alipay.com"}
    writes = [
        ServiceWrite("create", "a-service", "v1", 201, "t1"),
        ServiceWrite("patch", "a-service", "msc-koupleless", 200, "t2"),
        ServiceWrite("create", "b-service", "msc-seed", 201, "t3"),
        ServiceWrite("delete", "b-service", "v1", 403, "t4"),
        ServiceWrite("delete", "b-service", "v1", 200, "t5"),
    ]
    users = set(installs)
    assert foreign_writes(writes, users, installs=installs, refused_ok={"v1"}) == [
        "v1 delete b-service (200) owned by koupleless.alipay.com"]
    assert foreign_writes(writes, users, installs=installs) == [
        "v1 delete b-service (403) owned by koupleless.alipay.com",
        "v1 delete b-service (200) owned by koupleless.alipay.com"]
