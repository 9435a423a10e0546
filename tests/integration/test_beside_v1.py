"""Our controller (profile koupleless, as a user of its own) beside Koupleless' module-controller V1.0.0 (the
emulator of tests/koupleless_v1, as V1.0.0's ServiceAccount), on the Koupleless CRD, end to end:

1. adoption of the ``<module>-service`` V1.0.0 made first;
2. a rollout (beta-v1, then beta-v2 of the same module, then beta-v1 deleted) with the deletion guard on;
3. the same rollout with the guard off: every delete by V1.0.0 undone, same addresses;
4. the module retired: its Service gone for good;
5. three installs (seed, koupleless, sofa-serverless), two of them with their upstream module-controller.

The ModuleDeployments have a base Deployment (V1.0.0 adds its finalizers only after it made the base
their owner; without them a deleted ModuleDeployment is gone at once and V1.0.0 never deletes the
Service) and metadata.labels (V1.0.0 panics without them). Who wrote which Service, and when, comes from
the API server's audit log. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import statistics
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime

import anyio
import pytest

from controller.config import Config
from controller.moduleservice.desired import GROUP_LABEL
from controller.moduleservice.profiles import PROFILES, Profile
from controller.runtime.informer import Informer
from controller.runtime.kube.client import JsonObj, KubeClient, load_configuration
from controller.runtime.kube.errors import AlreadyExists, Forbidden
from controller.runtime.kube.resources import SERVICES
from controller.runtime.store import Store
from tests.audit import ServiceWrite, service_writes
from tests.controlplane import ControlPlane
from tests.harness import (
    Api,
    api_client,
    controller_config,
    module_deployment,
    node_port,
    running_controller,
    service_strategy,
    wait_for,
    wait_quiet,
)
from tests.integration.test_guard import guard_installed, guard_objects
from tests.integration.test_koupleless_v1_emulator import create_base
from tests.integration.test_profiles import wait_right, wait_state
from tests.integration.test_side_by_side import foreign_writes, owner_groups
from tests.koupleless_v1 import Identity, ModuleControllerV1, release_v1_finalizers, running_upstream

pytestmark = [pytest.mark.asyncio, pytest.mark.core, pytest.mark.usefixtures("profile_crds")]

SEED, KOUPLELESS, SOFA = PROFILES["seed"], PROFILES["koupleless"], PROFILES["sofa-serverless"]
V1 = Identity()  # system:serviceaccount:module-deployment-system:module-deployment-controller-manager
# sofa-serverless' module-controller, assumed to behave like V1.0.0 (its source was not at hand), as an
# identity of its own.
SOFA_V1 = Identity(namespace="sofa-serverless-system", service_account="module-deployment-controller-manager",
                   group=SOFA.group)
OURS = "msc-koupleless-beside-v1"
MODULE, SERVICE, BASE = "beta", "beta-service", "beta-base"


@pytest.fixture(autouse=True)
def _no_stuck_namespace(controlplane: ControlPlane, namespace: str) -> Iterator[None]:
    yield
    for group in (KOUPLELESS.group, SOFA.group):
        release_v1_finalizers(controlplane, namespace, group)


# ---------------------------------------------------------------------------------------------- helpers
def md(name: str, module: str, *, version: str = "1.0.0", base: str = BASE) -> JsonObj:
    """A ModuleDeployment V1.0.0 can release: labels (it panics without them) and a base Deployment."""
    out = module_deployment(name, module)
    out["metadata"]["labels"] = {"app": module, "module-version": version}
    out["spec"]["baseDeploymentName"] = base
    out["spec"]["template"]["spec"]["module"]["version"] = version
    return out


def addresses(svc: JsonObj) -> tuple[str, str, int]:
    return svc["metadata"]["uid"], svc["spec"]["clusterIP"], node_port(svc)


def finalizers(obj: JsonObj | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


async def wait_released(api: Api, ns: str, name: str) -> JsonObj:
    """Until V1.0.0 owns the ModuleDeployment (its two finalizers) and has completed its release."""
    async def released() -> JsonObj | None:
        got = await api.get_md(ns, name)
        progress = (((got or {}).get("status") or {}).get("releaseStatus") or {}).get("progress")
        return got if len(finalizers(got)) == 2 and progress == "Completed" else None
    return await wait_for(released, timeout=60, what=f"V1.0.0 to release {name}")


async def wait_md_gone(api: Api, ns: str, name: str, *, timeout: float = 90.0) -> None:
    async def gone() -> bool:
        return await api.get_md(ns, name) is None
    await wait_for(gone, timeout=timeout, what=f"ModuleDeployment {name} to be gone", interval=0.2)


async def wait_idle(upstream: ModuleControllerV1) -> None:
    async def idle() -> bool:
        return upstream.idle()
    await wait_for(idle, timeout=60, what="the emulator to be idle")


def writes_of(cp: ControlPlane, ns: str, name: str = SERVICE) -> list[ServiceWrite]:
    return [w for w in service_writes(cp.audit_log, ns) if w.name == name]


def seconds(stamp: str) -> float:
    """An audit timestamp (RFC 3339, microseconds, Z) as seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def short(username: str) -> str:
    """``namespace:name`` of a ServiceAccount's username; anything else as it is."""
    return username.split(":", 2)[2] if username.startswith("system:serviceaccount:") else username


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "none"
    p99 = sorted(values)[max(0, round(0.99 * len(values)) - 1)]
    return (f"p50 {statistics.median(values) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {max(values) * 1000:.0f} ms (n={len(values)})")


@dataclass
class Recreations:
    """What the audit log says about the Service after a point: V1.0.0's deletes, our creates."""

    v1_deletes: list[ServiceWrite]  # V1.0.0's successful deletes
    creates: list[ServiceWrite]  # our successful creates
    gaps: list[float]  # per V1.0.0 delete: its arrival to the answer of our next create
    while_present: list[ServiceWrite] = field(default_factory=list)  # our writes while the Service existed
    ours: list[ServiceWrite] = field(default_factory=list)  # every write of ours after the point


def recreations(writes: list[ServiceWrite], since: int, *, ours: str = OURS, v1: str = V1.username) -> Recreations:
    """``writes`` in the order received; ``since``: the index from which the rollout counts."""
    exists = False
    while_present: list[ServiceWrite] = []
    pending: ServiceWrite | None = None  # a V1.0.0 delete not yet followed by our create
    gaps: list[float] = []
    for i, w in enumerate(writes):
        if i >= since and w.user == ours and exists:
            while_present.append(w)
        if w.succeeded and w.verb == "create":
            exists = True
            if i >= since and w.user == ours and pending is not None:
                gaps.append(seconds(w.at) - seconds(pending.received))
                pending = None
        elif w.succeeded and w.verb == "delete":
            exists = False
            if i >= since and w.user == v1:
                pending = w
    later = writes[since:]
    return Recreations(
        v1_deletes=[w for w in later if w.user == v1 and w.verb == "delete" and w.succeeded],
        creates=[w for w in later if w.user == ours and w.verb == "create" and w.succeeded],
        gaps=gaps, while_present=while_present, ours=[w for w in later if w.user == ours])


class ServiceVersions:
    """Every version of one Service a watch of the namespace shows (uid, clusterIP, nodePort)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[str, str, int]] = []

    def _record(self, obj: JsonObj) -> None:
        if obj["metadata"]["name"] == self.name:
            seen = addresses(obj)
            if not self.seen or self.seen[-1] != seen:
                self.seen.append(seen)

    def on_add(self, obj: JsonObj) -> None:
        self._record(obj)

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        self._record(new)

    def on_delete(self, obj: JsonObj) -> None:
        pass

    @property
    def uids(self) -> list[str]:
        return list(dict.fromkeys(uid for uid, _, _ in self.seen))


@asynccontextmanager
async def watching(kubeconfig: str, ns: str, name: str) -> AsyncIterator[ServiceVersions]:
    versions = ServiceVersions(name)
    async with KubeClient(await load_configuration(kubeconfig)) as client, anyio.create_task_group() as tg:
        informer = Informer(client, SERVICES, store=Store(), namespace=ns, handlers=[versions])
        await tg.start(informer.run)
        try:
            yield versions
        finally:
            tg.cancel_scope.cancel()


async def wait_guard_enforced(api: Api, clients: Collection[KubeClient], ns: str, group: str) -> None:
    """Until the guard refuses each of ``clients`` the (dry-run) delete of a Service of ``group``: the API
    server loads a new policy asynchronously. The probe Service has a name of its own, so the module
    Service's audit trail holds none of this."""
    probe = f"guard-probe-{group.replace('.', '-')}"
    with suppress(AlreadyExists):
        await api.create_svc(ns, {"apiVersion": "v1", "kind": "Service",
                                  "metadata": {"name": probe, "labels": {GROUP_LABEL: group}},
                                  "spec": {"ports": [{"name": "http", "port": 80}]}})
    for client in clients:
        async def refused(client: KubeClient = client) -> bool:
            try:
                await client.request("DELETE", SERVICES.path(ns, probe), params={"dryRun": "All"})
            except Forbidden:
                return True
            return False
        await wait_for(refused, timeout=60, what=f"the guard of {group} to be enforced", interval=0.2)


@asynccontextmanager
async def guard(api: Api, ns: str, profile: Profile, users: list[str],
                clients: Collection[KubeClient]) -> AsyncIterator[None]:
    """The chart's guard for ``profile`` listing ``users``, bound in ``ns`` only, enforced."""
    objects = guard_objects(ns, users, f"g{uuid.uuid4().hex[:6]}", profile=profile.name)
    async with guard_installed(api, objects):
        await wait_guard_enforced(api, clients, ns, profile.group)
        yield


async def two_versions(api: Api, ns: str) -> tuple[JsonObj, JsonObj, JsonObj]:
    """beta-v1 then beta-v2 of module beta on one base, both released by V1.0.0; their Service as ours."""
    await create_base(api, ns, BASE)
    v1 = await api.create_md(ns, md("beta-v1", MODULE, version="1.0.0"))
    v2 = await api.create_md(ns, md("beta-v2", MODULE, version="1.0.1"))
    for name in ("beta-v1", "beta-v2"):
        await wait_released(api, ns, name)
    svc = await wait_right(api, ns, MODULE, [v1, v2], KOUPLELESS)
    return v1, v2, svc


def ours_config(cp: ControlPlane, ns: str, profile: Profile = KOUPLELESS, user: str = OURS) -> Config:
    return controller_config(str(cp.user_kubeconfig(user)), ns, profile=profile.name)


# ---------------------------------------------------------------------------------------------- 1. adoption
async def test_adopts_the_service_v1_made_first(controlplane: ControlPlane, kubeconfig: str, namespace: str) -> None:
    async with api_client(kubeconfig, KOUPLELESS.resource) as api, \
            running_upstream(controlplane, namespace, identity=V1) as upstream:
        await create_base(api, namespace, BASE)
        beta = await api.create_md(namespace, md("beta-v1", MODULE))
        theirs = await api.wait_svc(namespace, SERVICE)
        await wait_released(api, namespace, "beta-v1")
        assert not theirs["metadata"].get("ownerReferences")
        assert GROUP_LABEL not in (theirs["metadata"].get("labels") or {})

        async with running_controller(ours_config(controlplane, namespace)) as manager:
            adopted = await wait_right(api, namespace, MODULE, [beta], KOUPLELESS)
            await api.wait_event(namespace, reason="ServiceAdopted", involved="beta-v1")
            await wait_quiet(manager)
        assert addresses(adopted) == addresses(theirs)
        assert adopted["metadata"]["labels"][GROUP_LABEL] == KOUPLELESS.group
        assert [(r["apiVersion"], r["kind"], r["name"], r["uid"], r.get("controller"))
                for r in adopted["metadata"]["ownerReferences"]] == [
            (KOUPLELESS.api_version, "ModuleDeployment", "beta-v1", beta["metadata"]["uid"], True)]
        await wait_idle(upstream)

    writes = writes_of(controlplane, namespace)
    mine = [(w.verb, w.code) for w in writes if w.user == OURS]
    v1 = [(w.verb, w.code) for w in writes if w.user == V1.username]
    print(f"\nadoption: V1.0.0's writes {v1}, ours {mine}; kept uid/clusterIP/nodePort {addresses(theirs)}")
    assert mine == [("patch", 200)], "adopted with one patch, nothing else"
    assert [w for w in v1 if w[0] == "create" and 200 <= w[1] < 300] == [("create", 201)]
    assert not [w for w in v1 if w[0] != "create"]


# ---------------------------------------------------------------------------------------------- 2. guard on
async def test_rollout_with_the_guard_on_keeps_the_service(controlplane: ControlPlane, kubeconfig: str,
                                                           namespace: str) -> None:
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(api_client(kubeconfig, KOUPLELESS.resource))
        upstream = await stack.enter_async_context(running_upstream(controlplane, namespace, identity=V1))
        await stack.enter_async_context(guard(api, namespace, KOUPLELESS, [V1.username], [upstream.client]))
        manager = await stack.enter_async_context(running_controller(ours_config(controlplane, namespace)))
        _, v2, before = await two_versions(api, namespace)
        await wait_quiet(manager)
        since = len(writes_of(controlplane, namespace))

        await api.delete_md(namespace, "beta-v1")
        await wait_md_gone(api, namespace, "beta-v1")
        after = await wait_right(api, namespace, MODULE, [v2], KOUPLELESS)
        await wait_quiet(manager)
        await wait_idle(upstream)

        rollout = writes_of(controlplane, namespace)[since:]
        v1_deletes = [w for w in rollout if w.user == V1.username and w.verb == "delete"]
        print(f"\nguard on: V1.0.0 attempted {len(v1_deletes)} deletes of {SERVICE}, codes "
              f"{sorted({w.code for w in v1_deletes})}, succeeded {sum(w.succeeded for w in v1_deletes)}; "
              f"emulator: refused {upstream.deletes_refused}, not found {upstream.deletes_not_found}; "
              f"our writes {[(w.verb, w.code) for w in rollout if w.user == OURS]}; "
              f"uid/clusterIP/nodePort {addresses(before)} -> {addresses(after)}")
        assert addresses(after) == addresses(before)
        assert v1_deletes, "V1.0.0 never tried to delete the Service: the scenario did not happen"
        assert [w for w in v1_deletes if w.succeeded] == []
        assert {w.code for w in v1_deletes} == {403}
        assert upstream.deletes_refused == len(v1_deletes)
        # beta-v1 no longer owns it: one patch of ours drops its owner reference (the UID stays); nothing
        # else changed the Service.
        assert [(w.user, w.verb) for w in rollout if w.succeeded] == [(OURS, "patch")]


# ---------------------------------------------------------------------------------------------- 3. guard off
async def test_rollout_with_the_guard_off_undoes_every_delete(controlplane: ControlPlane, kubeconfig: str,
                                                              namespace: str) -> None:
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(api_client(kubeconfig, KOUPLELESS.resource))
        versions = await stack.enter_async_context(watching(kubeconfig, namespace, SERVICE))
        upstream = await stack.enter_async_context(running_upstream(controlplane, namespace, identity=V1))
        manager = await stack.enter_async_context(running_controller(ours_config(controlplane, namespace)))
        _, v2, before = await two_versions(api, namespace)
        await wait_quiet(manager)
        since = len(writes_of(controlplane, namespace))

        await api.delete_md(namespace, "beta-v1")
        await wait_md_gone(api, namespace, "beta-v1")
        await wait_idle(upstream)
        after = await wait_right(api, namespace, MODULE, [v2], KOUPLELESS)
        await wait_quiet(manager)

        async def audited() -> Recreations | None:
            got = recreations(writes_of(controlplane, namespace), since)
            return got if len(got.creates) >= len(got.v1_deletes) else None
        found = await wait_for(audited, timeout=30, what="the audit log to show our last create")
        rollout = writes_of(controlplane, namespace)[since:]
        changed = [e for e in await api.events(namespace) if e.get("reason") == "ServiceAddressChanged"]

    kept = {(ip, port) for _, ip, port in versions.seen}
    print(f"\nguard off: V1.0.0 deleted {SERVICE} {len(found.v1_deletes)} times "
          f"(emulator: attempted {upstream.deletes_attempted}, ok {upstream.deletes_succeeded}, "
          f"not found {upstream.deletes_not_found}); our creates {len(found.creates)} "
          f"({len(found.creates) / max(1, len(found.v1_deletes)):.2f} per delete); gap from V1.0.0's delete to "
          f"our create: {percentiles(found.gaps)}; versions seen {len(versions.uids)}, addresses {sorted(kept)}; "
          f"our writes while it existed {[(w.verb, w.code) for w in found.while_present]}; rollout writes "
          f"{[(short(w.user), w.verb, w.code) for w in rollout]}")
    assert found.v1_deletes, "V1.0.0 never deleted the Service: the scenario did not happen"
    assert len(found.creates) == len(found.gaps) == len(found.v1_deletes), "one create per delete"
    # While the Service existed, one write of ours at most: the patch that drops beta-v1's owner reference,
    # when our controller sees beta-v1 terminating before V1.0.0's delete (both follow the same event).
    assert [w for w in found.ours if w.verb not in ("create", "patch")] == [], "creates after deletes, nothing else"
    assert [w.verb for w in found.while_present if w.succeeded] in ([], ["patch"]), found.while_present
    assert kept == {addresses(before)[1:]}, "every re-created Service had the same clusterIP and nodePort"
    assert addresses(after)[1:] == addresses(before)[1:]
    assert len(versions.uids) == 1 + len(found.creates)
    assert changed == []
    # Gross regressions only (the old fight backoff took 1, 2, 4 ... 60 s); the figures are printed above.
    assert max(found.gaps) < 8.0, found.gaps


# ---------------------------------------------------------------------------------------------- 4. retired
async def test_module_retired_service_gone_for_good(controlplane: ControlPlane, kubeconfig: str,
                                                    namespace: str) -> None:
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(api_client(kubeconfig, KOUPLELESS.resource))
        upstream = await stack.enter_async_context(running_upstream(controlplane, namespace, identity=V1))
        manager = await stack.enter_async_context(running_controller(ours_config(controlplane, namespace)))
        await two_versions(api, namespace)
        await wait_quiet(manager)
        since = len(writes_of(controlplane, namespace))
        creates_before = upstream.creates_attempted

        await api.delete_md(namespace, "beta-v1")
        await api.delete_md(namespace, "beta-v2")
        for name in ("beta-v1", "beta-v2"):
            await wait_md_gone(api, namespace, name)
        await api.wait_svc_gone(namespace, SERVICE)
        await wait_idle(upstream)
        await wait_quiet(manager)
        assert await api.get_svc(namespace, SERVICE) is None
        assert upstream.creates_attempted == creates_before, "V1.0.0 tried to create it again"

    retirement = writes_of(controlplane, namespace)[since:]
    # In the order answered: a patch received just after a delete can still be applied before it.
    done = sorted((w for w in retirement if w.succeeded), key=lambda w: w.at)
    print(f"\nretired: writes {[(short(w.user), w.verb, w.code) for w in retirement]}")
    assert done, "nobody deleted the Service"
    assert done[-1].verb == "delete", f"the last write re-created it: {done[-1]}"


# ---------------------------------------------------------------------------------------------- 5. three installs
def user(profile: Profile) -> str:
    return f"msc-{profile.name}-beside"


SHARED = "shared"
UPSTREAMS = {KOUPLELESS.name: V1, SOFA.name: SOFA_V1}


@pytest.mark.parametrize("guarded", [pytest.param(True, id="guard-on"), pytest.param(False, id="guard-off")])
async def test_three_installs_with_their_module_controllers(controlplane: ControlPlane, kubeconfig: str,
                                                            namespace: str, guarded: bool) -> None:
    """seed (no module-controller), koupleless beside V1.0.0, sofa-serverless beside a second emulator for
    its group and label prefix, as another identity: sofa-serverless' own module-controller is assumed to
    behave like V1.0.0 (its source was not at hand). Module names are shared; create, port change, disable,
    rename, delete. No install (ours, or its module-controller, whose create-if-absent is not a write to
    another's Service) may write a Service another install's group owns.

    V1.0.0 deletes ``<module>-service`` by name whoever owns it, so beside another install serving the
    same module name only the guard of that install keeps it from deleting that install's Service: with
    the guards (every install's lists both module-controllers, as the chart's default list does) nothing
    is written across installs; without them ours still write nothing across, and what the
    module-controllers did is printed.
    """
    profiles = [SEED, KOUPLELESS, SOFA]
    ours = {user(p) for p in profiles}
    upstream_users = {i.username for i in UPSTREAMS.values()}
    installs = {user(p): p.group for p in profiles} | {i.username: i.group for i in UPSTREAMS.values()}
    async with AsyncExitStack() as stack:
        apis: dict[str, Api] = {}
        for p in profiles:
            apis[p.name] = await stack.enter_async_context(api_client(kubeconfig, p.resource))
        admin = apis[SEED.name]
        await create_base(admin, namespace, BASE)
        upstreams: dict[str, ModuleControllerV1] = {}
        for name, identity in UPSTREAMS.items():
            upstreams[name] = await stack.enter_async_context(running_upstream(
                controlplane, namespace, identity=identity, label_prefix=PROFILES[name].label_prefix))
        if guarded:
            for p in profiles:
                await stack.enter_async_context(guard(admin, namespace, p, sorted(upstream_users),
                                                      [u.client for u in upstreams.values()]))
        for p in profiles:
            await stack.enter_async_context(running_controller(ours_config(controlplane, namespace, p, user(p))))

        own: dict[str, JsonObj] = {}
        for p in profiles:
            own[p.name] = await apis[p.name].create_md(namespace, md(f"{p.name}-own", f"{p.name}-mod"))
        for p in profiles:
            await apis[p.name].create_md(namespace, md(f"{p.name}-shared", SHARED))
        for p in profiles:
            await wait_right(apis[p.name], namespace, f"{p.name}-mod", [own[p.name]], p)
        shared = await admin.wait_svc(namespace, f"{SHARED}-service", lambda s: len(owner_groups(s)) == 1)
        (winner_group,) = owner_groups(shared)
        winner = next(p for p in profiles if p.group == winner_group)
        for p in profiles:
            if p is not winner:
                await wait_state(apis[p.name], namespace, f"{p.name}-shared", "NameConflict", p,
                                 contains=winner_group, type_="Warning")
        for name in UPSTREAMS:
            await wait_released(apis[name], namespace, f"{name}-own")
            await wait_released(apis[name], namespace, f"{name}-shared")

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

        await apis[winner.name].delete_md(namespace, f"{winner.name}-shared")
        successor = await admin.wait_svc(
            namespace, f"{SHARED}-service", lambda s: owner_groups(s) not in (set(), {winner_group}),
            timeout=60, what="the shared Service taken over by another install")
        (successor_group,) = owner_groups(successor)
        for p in profiles:
            await apis[p.name].delete_md(namespace, f"{p.name}-own")
            await apis[p.name].delete_md(namespace, f"{p.name}-shared")
        for p in profiles:
            await wait_md_gone(apis[p.name], namespace, f"{p.name}-own")
            await wait_md_gone(apis[p.name], namespace, f"{p.name}-shared")
            await apis[p.name].wait_svc_gone(namespace, f"{p.name}-renamed-service", timeout=60)
        await admin.wait_svc_gone(namespace, f"{SHARED}-service", timeout=60)
        for u in upstreams.values():
            await wait_idle(u)

    writes = [w for w in service_writes(controlplane.audit_log, namespace) if not w.name.startswith("guard-probe")]
    creators = {installs[w.user] for w in writes if w.verb == "create" and w.succeeded and w.user in installs}
    by_user = {short(u): sum(1 for w in writes if w.user == u) for u in sorted(installs)}
    unchanged = [f"{short(w.user)} {w.verb} {w.name} ({w.code})" for w in writes
                 if w.user in upstream_users and not w.succeeded]
    ours_bad = foreign_writes(writes, ours, installs=installs)
    upstream_bad = foreign_writes(writes, upstream_users, installs=installs, refused_ok=upstream_users)
    print(f"\nthree installs, guard {'on' if guarded else 'off'}: {len(writes)} audited Service writes {by_user}; "
          f"shared Service owned by {winner_group}, then {successor_group}; writes to another install's Service: "
          f"ours {len(ours_bad)}, the module-controllers' {len(upstream_bad)} {upstream_bad}; "
          f"the module-controllers' writes that changed nothing {len(unchanged)} {unchanged}")
    assert successor_group != winner_group
    assert creators == {p.group for p in profiles}, f"every install made Services of its own: {creators}"
    assert ours_bad == []
    if guarded:
        assert upstream_bad == []
