"""On a Koupleless install: every API identity profile on the real control plane, with CRDs shaped like
the real ones (tests/data/crds), the Service Koupleless' own module-controller creates, its habits
(deleting the Service on ModuleDeployment delete, replacing the whole status), a status schema that
prunes ours, and the CRD missing, deleted and re-created while the controller runs.

CRDs are cluster-scoped and the control plane is shared: the tests that create or delete a CRD use a
group of their own (``<random>.<profile group>``), so nothing else sees it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
import yaml
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from controller.app import App
from controller.moduleservice.profiles import PROFILES, Profile, resolve_profile
from controller.runtime.kube.client import JsonObj, load_configuration
from controller.runtime.kube.errors import AlreadyExists, Conflict, NotFound
from controller.runtime.kube.resources import CRDS
from controller.runtime.metrics import Metrics
from tests.harness import (
    PROFILE_CRD_FILES,
    Api,
    TrackingKubeClient,
    api_client,
    controller_config,
    module_deployment,
    module_service,
    node_port,
    ready_condition,
    running_controller,
    service_problems,
    service_strategy,
    wait_for,
    wait_quiet,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.core]

CRD_FILES = PROFILE_CRD_FILES  # the session fixture profile_crds (tests/conftest.py) applies them
PRUNES_STATUS = {"seed": False, "koupleless": True, "sofa-serverless": True}


@pytest.fixture(params=list(PROFILES))
def profile(request: pytest.FixtureRequest, profile_crds: None) -> Profile:
    return PROFILES[request.param]


# ---------------------------------------------------------------------------------------------- helpers
def crd_manifest(shape: str, group: str) -> JsonObj:
    """The CRD of profile ``shape`` moved to API group ``group``."""
    crd = yaml.safe_load(CRD_FILES[shape].read_text())
    crd["metadata"] = {"name": f"moduledeployments.{group}"}
    crd["spec"]["group"] = group
    assert isinstance(crd, dict)
    return crd


async def crd_established(api: Api, name: str) -> JsonObj | None:
    try:
        crd = await api.client.request("GET", CRDS.path(name=name))
    except NotFound:
        return None
    conditions = (crd.get("status") or {}).get("conditions") or []
    return crd if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions) else None


async def install_crd(api: Api, crd: JsonObj) -> None:
    with suppress(AlreadyExists):
        await api.client.request("POST", CRDS.path(), body=crd)
    name = crd["metadata"]["name"]
    await wait_for(lambda: crd_established(api, name), timeout=60, what=f"CRD {name} established")


async def delete_crd(api: Api, name: str) -> None:
    with suppress(NotFound):
        await api.client.request("DELETE", CRDS.path(name=name))

    async def gone() -> bool:
        try:
            await api.client.request("GET", CRDS.path(name=name))
        except NotFound:
            return True
        return False
    await wait_for(gone, timeout=90, what=f"CRD {name} to be deleted")


@asynccontextmanager
async def own_crd(kubeconfig: str, shape: str, tweak: Any = None) -> AsyncIterator[Profile]:
    """A CRD of ``shape`` under a fresh group (so deleting it disturbs nobody); yields the profile that
    serves it (``--profile shape --api-group <group>``); deletes it afterwards."""
    group = f"t{uuid.uuid4().hex[:8]}.{PROFILES[shape].group}"
    profile = resolve_profile(shape, group=group)
    crd = crd_manifest(shape, group)
    if tweak is not None:
        tweak(crd)
    async with api_client(kubeconfig, profile.resource) as api:
        await install_crd(api, crd)
        try:
            yield profile
        finally:
            with anyio.CancelScope(shield=True):
                await delete_crd(api, profile.crd_name)


def upstream_service(module: str, prefix: str, port: int = 8080) -> JsonObj:
    """Exactly what Koupleless' module-controller (service_create_handler.go) creates: no labels, no
    owner references, the module selector, one port http/TCP, NodePort."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{module}-service"},
        "spec": {"type": "NodePort", "selector": {f"{prefix}{module}": "true"},
                 "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": port}]},
    }


async def wait_right(api: Api, ns: str, module: str, owners: list[JsonObj], profile: Profile, *, port: int = 8080,
                     target_port: int | str | None = None, timeout: float = 30.0) -> JsonObj:
    """Waits for exactly the Service the controller must make under ``profile``."""
    def check(svc: JsonObj) -> bool:
        return not service_problems(svc, module=module, port=port, target_port=target_port, owners=owners,
                                    label_prefix=profile.label_prefix, api_version=profile.api_version)
    return await api.wait_svc(ns, f"{module}-service", check, timeout=timeout,
                              what=f"{module}-service as the controller makes it ({profile.name})")


async def wait_state(api: Api, ns: str, md: str, reason: str, profile: Profile, *, contains: str = "",
                     type_: str = "Normal") -> None:
    """The ModuleDeployment's state as a user sees it: ``status.moduleService`` where the CRD keeps it,
    else an Event on the ModuleDeployment (``kubectl describe``)."""
    if not PRUNES_STATUS[profile.name]:
        await api.wait_reason(ns, md, reason, check=lambda ms: contains in ready_condition(ms).get("message", ""))
        return

    async def probe() -> JsonObj | None:
        return next((e for e in await api.events(ns)
                     if e.get("reason") == reason and e.get("type") == type_ and contains in e.get("message", "")
                     and (e.get("involvedObject") or {}).get("name") == md), None)
    event = await wait_for(probe, timeout=30, what=f"{type_} Event {reason} on {md}")
    assert event["involvedObject"]["apiVersion"] == profile.api_version
    assert event["involvedObject"]["kind"] == "ModuleDeployment"


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    for family in registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def status_writes(manager: App) -> list[tuple[str, str]]:
    writes = getattr(manager.client, "writes", None) or []
    return [w for w in writes if w[1].endswith("/status")]


def record_writes(manager: App) -> None:
    assert isinstance(manager.client, TrackingKubeClient)
    manager.client.writes = []


# ---------------------------------------------------------------------------------------------- per profile
class TestEveryProfile:
    async def test_lifecycle(self, kubeconfig: str, namespace: str, profile: Profile) -> None:
        config = controller_config(kubeconfig, namespace, profile=profile.name)
        async with api_client(kubeconfig, profile.resource) as api, running_controller(config) as manager:
            record_writes(manager)
            assert sample(manager.registry, "moduleservice_api_info", group=profile.group, version="v1alpha1",
                          label_prefix=profile.label_prefix, profile=profile.name) == 1
            assert sample(manager.registry, "moduleservice_status_pruned") == PRUNES_STATUS[profile.name]

            md = await api.create_md(namespace, module_deployment("md-life", "life-mod"))
            svc = await wait_right(api, namespace, "life-mod", [md], profile)
            await wait_state(api, namespace, "md-life", "ServiceReady", profile, contains="8080->8080")

            # int-or-string targetPort, as the Koupleless CRD allows; the nodePort stays.
            await api.patch_md(namespace, "md-life", service_strategy(port=9090, targetPort="http-alt"))
            moved = await wait_right(api, namespace, "life-mod", [md], profile, port=9090, target_port="http-alt")
            assert (moved["metadata"]["uid"], node_port(moved)) == (svc["metadata"]["uid"], node_port(svc))
            await wait_state(api, namespace, "md-life", "ServiceReady", profile, contains="9090->http-alt")

            await api.patch_md(namespace, "md-life", service_strategy(enableModuleService=False))
            await api.wait_svc_gone(namespace, "life-mod-service")
            await wait_state(api, namespace, "md-life", "ServiceDisabled", profile)

            await api.patch_md(namespace, "md-life", service_strategy(enableModuleService=True))
            again = await wait_right(api, namespace, "life-mod", [md], profile, port=9090, target_port="http-alt")
            assert again["metadata"]["uid"] != svc["metadata"]["uid"]
            await wait_quiet(manager)
            if PRUNES_STATUS[profile.name]:
                assert status_writes(manager) == []
                assert module_service(await api.get_md(namespace, "md-life") or {}) == {}
            await api.delete_md(namespace, "md-life")
            await api.wait_svc_gone(namespace, "life-mod-service")

    async def test_upstream_service_is_adopted_then_updated(self, kubeconfig: str, namespace: str,
                                                            profile: Profile) -> None:
        config = controller_config(kubeconfig, namespace, profile=profile.name)
        async with api_client(kubeconfig, profile.resource) as api, running_controller(config) as manager:
            upstream = await api.create_svc(namespace, upstream_service("adopt-mod", profile.label_prefix))
            md = await api.create_md(namespace, module_deployment("md-adopt", "adopt-mod"))
            adopted = await wait_right(api, namespace, "adopt-mod", [md], profile)
            kept = ("uid", "clusterIP", "nodePort")

            def identity(svc: JsonObj) -> tuple[Any, ...]:
                return svc["metadata"]["uid"], svc["spec"]["clusterIP"], node_port(svc)
            assert identity(adopted) == identity(upstream), kept
            await api.wait_event(namespace, reason="ServiceAdopted", involved="md-adopt")
            await wait_state(api, namespace, "md-adopt", "ServiceReady", profile)

            await api.patch_md(namespace, "md-adopt", service_strategy(port=9090, targetPort=9091))
            updated = await wait_right(api, namespace, "adopt-mod", [md], profile, port=9090, target_port=9091)
            assert identity(updated) == identity(upstream), kept
            await wait_quiet(manager)

    async def test_same_name_other_selector_is_a_name_conflict(self, kubeconfig: str, namespace: str,
                                                               profile: Profile) -> None:
        config = controller_config(kubeconfig, namespace, profile=profile.name)
        async with api_client(kubeconfig, profile.resource) as api, running_controller(config) as manager:
            foreign = upstream_service("nc-mod", profile.label_prefix)
            foreign["spec"]["selector"] = {"app": "nc-mod"}
            foreign = await api.create_svc(namespace, foreign)
            await api.create_md(namespace, module_deployment("md-nc", "nc-mod"))
            await wait_state(api, namespace, "md-nc", "NameConflict", profile, type_="Warning")
            await wait_quiet(manager)
            svc = await api.get_svc(namespace, "nc-mod-service")
            assert svc is not None
            assert svc["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
            assert not svc["metadata"].get("ownerReferences")
            assert not svc["metadata"].get("labels")

    async def test_crd_deleted_and_recreated(self, kubeconfig: str, namespace: str, profile: Profile) -> None:
        async with own_crd(kubeconfig, profile.name) as own, api_client(kubeconfig, own.resource) as api:
            config = controller_config(kubeconfig, namespace, profile=profile.name, api_group=own.group)
            with capture_logs() as logs:
                async with running_controller(config) as manager:
                    md = await api.create_md(namespace, module_deployment("md-crd", "crd-mod"))
                    await wait_right(api, namespace, "crd-mod", [md], own)
                    assert manager.readyz.run("crd") is None

                    await delete_crd(api, own.crd_name)

                    async def not_ready() -> str | None:
                        return manager.readyz.run("crd")
                    why = await wait_for(not_ready, what="/readyz to say the CRD is gone")
                    assert why == (f"CustomResourceDefinition {own.crd_name} is not installed: "
                                   f"ModuleDeployments ({own.api_version}) are not served until it is")
                    assert sample(manager.registry, "moduleservice_crd_served") == 0
                    status, body = manager.readyz.render(verbose=True)
                    assert status == 500
                    assert f"[-]crd failed: {why}" in body

                    await install_crd(api, crd_manifest(profile.name, own.group))
                    established = time.monotonic()

                    async def serving() -> bool:
                        return manager.serving
                    await wait_for(serving, timeout=10, what="ModuleDeployments served again within 10 s")
                    served_after = time.monotonic() - established
                    md2 = await api.create_md(namespace, module_deployment("md-crd2", "crd-mod"))
                    await wait_right(api, namespace, "crd-mod", [md2], own)
                    await wait_quiet(manager)
            events = [e["event"] for e in logs]
            assert events.count("crd_not_served") == 1, events  # deleted
            assert events.count("crd_served") == 2, events  # at start, and re-created
            print(f"{profile.name}: served {served_after:.2f}s after the CRD was re-established")


# ---------------------------------------------------------------------------------------------- the rest
class TestAdoptionOff:
    async def test_upstream_service_is_left_alone(self, kubeconfig: str, namespace: str) -> None:
        profile = PROFILES["seed"]
        config = controller_config(kubeconfig, namespace, adopt_unowned_services=False)
        async with api_client(kubeconfig) as api, running_controller(config) as manager:
            upstream = await api.create_svc(namespace, upstream_service("off-mod", profile.label_prefix))
            await api.create_md(namespace, module_deployment("md-off", "off-mod"))
            await api.wait_reason(namespace, "md-off", "NameConflict")
            await wait_quiet(manager)
            svc = await api.get_svc(namespace, "off-mod-service")
            assert svc is not None
            assert svc["metadata"]["resourceVersion"] == upstream["metadata"]["resourceVersion"]


class TestOnlyTheUpstreamShapeIsAdopted:
    """A user's Service with our name, the module selector and one port ``http`` but no owner is not
    Koupleless' module-controller's when it is not a plain NodePort: adopting it would turn it into a
    NodePort and give it owner references (the garbage collector would then delete it with the
    ModuleDeployments)."""

    @pytest.mark.parametrize("shape", [
        pytest.param({"type": "LoadBalancer"}, id="load-balancer"),
        pytest.param({"type": "ClusterIP"}, id="cluster-ip"),
        pytest.param({"externalIPs": ["192.0.2.10"]}, id="node-port-with-external-ips"),
    ])
    async def test_left_alone_as_a_name_conflict(self, kubeconfig: str, namespace: str, shape: JsonObj) -> None:
        profile = PROFILES["seed"]
        config = controller_config(kubeconfig, namespace)
        async with api_client(kubeconfig) as api, running_controller(config) as manager:
            theirs = upstream_service("lb-mod", profile.label_prefix)
            theirs["spec"].update(shape)
            theirs = await api.create_svc(namespace, theirs)
            await api.create_md(namespace, module_deployment("md-lb", "lb-mod"))
            await api.wait_reason(namespace, "md-lb", "NameConflict")
            await wait_quiet(manager)
            svc = await api.get_svc(namespace, "lb-mod-service")
            assert svc is not None
            assert svc["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
            assert svc["spec"]["type"] == theirs["spec"]["type"]
            assert not svc["metadata"].get("ownerReferences")


class TestPrunedStatus:
    @pytest.mark.parametrize("name", ["koupleless", "sofa-serverless"])
    async def test_known_from_the_crd_schema(self, kubeconfig: str, namespace: str, name: str,
                                             profile_crds: None) -> None:
        """The schema says it: not one status write, one warning, the metric, Events per state change."""
        profile = PROFILES[name]
        config = controller_config(kubeconfig, namespace, profile=name)
        with capture_logs() as logs:
            async with api_client(kubeconfig, profile.resource) as api, running_controller(config) as manager:
                record_writes(manager)
                a = await api.create_md(namespace, module_deployment("md-a", "pr-mod"))
                await wait_right(api, namespace, "pr-mod", [a], profile)
                await wait_state(api, namespace, "md-a", "ServiceReady", profile, contains="8080->8080")
                await api.create_md(namespace, module_deployment("md-b", "pr-mod", port=9999))
                await wait_state(api, namespace, "md-b", "PortConflict", profile, type_="Warning")
                await api.create_pod(namespace, "base-1", {f"{profile.label_prefix}pr-mod": "true"})
                await api.set_pod_ready(namespace, "base-1", True)
                await api.patch_md(namespace, "md-a", service_strategy(port=8081))
                await wait_state(api, namespace, "md-a", "ServiceReady", profile, contains="8081->8081")
                await wait_quiet(manager)
                assert status_writes(manager) == []
                assert sample(manager.registry, "moduleservice_status_pruned") == 1
                ready = [e for e in await api.events(namespace)
                         if e["reason"] == "ServiceReady" and e["involvedObject"]["name"] == "md-a"]
                assert sorted(e["message"] for e in ready) == [
                    "Service pr-mod-service serves port 8080->8080", "Service pr-mod-service serves port 8081->8081"]
        warnings = [e for e in logs if e["event"] == "status_not_writable"]
        assert len(warnings) == 1, warnings
        assert warnings[0]["crd"] == profile.crd_name
        assert "no moduleService property" in warnings[0]["reason"]

    async def test_found_from_the_patch_response(self, kubeconfig: str, namespace: str) -> None:
        """A schema that seems to have room (moduleService: an object without properties) but prunes
        everything inside it: the first PATCH response tells, and no status write follows."""
        def hollow(crd: JsonObj) -> None:
            status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
            status["properties"]["moduleService"] = {"type": "object"}

        async with own_crd(kubeconfig, "koupleless", hollow) as own, api_client(kubeconfig, own.resource) as api:
            config = controller_config(kubeconfig, namespace, profile="koupleless", api_group=own.group)
            with capture_logs() as logs:
                async with running_controller(config) as manager:
                    record_writes(manager)
                    assert sample(manager.registry, "moduleservice_status_pruned") == 0
                    a = await api.create_md(namespace, module_deployment("md-a", "hollow-mod"))
                    await wait_right(api, namespace, "hollow-mod", [a], own)
                    await api.wait_event(namespace, reason="ServiceReady", involved="md-a")
                    for port in (8081, 8082, 8083):
                        await api.patch_md(namespace, "md-a", service_strategy(port=port))
                        await wait_right(api, namespace, "hollow-mod", [a], own, port=port)
                    await wait_state(api, namespace, "md-a", "ServiceReady", own, contains="8083->8083")
                    await wait_quiet(manager)
                    writes = status_writes(manager)
                    assert len(writes) == 1, writes
                    assert sample(manager.registry, "moduleservice_status_pruned") == 1
                    print(f"status writes on a pruning CRD found by the PATCH response: {len(writes)}")

                    # A CRD update that leaves the schema alone (a label) must not switch status writing
                    # back on, nor send the Events again.
                    def ready_8083(events: list[JsonObj]) -> int:
                        return sum(int(e.get("count") or 1) for e in events
                                   if e["reason"] == "ServiceReady" and "8083->8083" in e["message"])

                    before = ready_8083(await api.events(namespace))
                    await api.client.request("PATCH", CRDS.path(name=own.crd_name),
                                             body={"metadata": {"labels": {"touched": "yes"}}},
                                             content_type="application/merge-patch+json")

                    async def crd_seen() -> bool:
                        crd = manager.crd_gate.crds.get(own.crd_name) or {}
                        return bool((crd.get("metadata") or {}).get("labels", {}).get("touched") == "yes")

                    await wait_for(crd_seen, what="the controller to see the CRD update")
                    await api.patch_md(namespace, "md-a", service_strategy(port=8084))
                    await wait_right(api, namespace, "hollow-mod", [a], own, port=8084)
                    await wait_state(api, namespace, "md-a", "ServiceReady", own, contains="8084->8084")
                    await wait_quiet(manager)
                    assert status_writes(manager) == writes, "status writing came back on after a CRD update"
                    assert sample(manager.registry, "moduleservice_status_pruned") == 1
                    assert ready_8083(await api.events(namespace)) == before, "the Events were sent again"
            warnings = [e for e in logs if e["event"] == "status_not_writable"]
            assert len(warnings) == 1, warnings
            assert "PATCH response" in warnings[0]["reason"]


class TestCoexistence:
    async def test_upstream_deletes_the_service_another_md_still_wants(self, kubeconfig: str,
                                                                      namespace: str, profile_crds: None) -> None:
        profile = PROFILES["koupleless"]
        config = controller_config(kubeconfig, namespace, profile=profile.name)
        async with api_client(kubeconfig, profile.resource) as api, running_controller(config) as manager:
            a = await api.create_md(namespace, module_deployment("md-a", "co-mod"))
            await wait_right(api, namespace, "co-mod", [a], profile)
            b = await api.create_md(namespace, module_deployment("md-b", "co-mod"))
            svc = await wait_right(api, namespace, "co-mod", [a, b], profile)
            # What the upstream's delete handler does when md-a goes: delete the Service by name.
            await api.delete_md(namespace, "md-a")
            await api.delete_svc(namespace, "co-mod-service")
            deleted = time.monotonic()

            def back(s: JsonObj) -> bool:
                return s["metadata"]["uid"] != svc["metadata"]["uid"] and not service_problems(
                    s, module="co-mod", port=8080, owners=[b], label_prefix=profile.label_prefix,
                    api_version=profile.api_version)
            await api.wait_svc(namespace, "co-mod-service", back, timeout=10, what="the Service back for md-b")
            print(f"Service back {time.monotonic() - deleted:.2f}s after the upstream deleted it")
            await wait_quiet(manager)

    async def test_status_replaced_by_another_writer(self, kubeconfig: str, namespace: str) -> None:
        """Koupleless' module-controller writes the whole status (Status().Update). 50 replacements, each
        answered by exactly one write of ours; 50 more back to back, coalesced; then silence."""
        config = controller_config(kubeconfig, namespace)
        async with api_client(kubeconfig) as api, running_controller(config) as manager:
            await api.create_md(namespace, module_deployment("md-r", "rep-mod"))
            await api.wait_reason(namespace, "md-r", "ServiceReady")
            await wait_quiet(manager)
            record_writes(manager)

            async def replace(i: int) -> None:
                while True:
                    md = await api.get_md(namespace, "md-r")
                    assert md is not None
                    md["status"] = {"replicas": i, "conditions": [{"type": "Ready", "status": "True"}]}
                    try:
                        await api.client.request("PUT", api.md.path(namespace, "md-r", "status"), body=md)
                        return
                    except Conflict:
                        continue

            for i in range(50):
                await replace(i)
                await api.wait_reason(namespace, "md-r", "ServiceReady",
                                      check=lambda ms: bool(ms.get("nodePort")))
            await wait_quiet(manager)
            ping_pong = len(status_writes(manager))

            for i in range(50, 100):
                await replace(i)
            ms = await api.wait_reason(namespace, "md-r", "ServiceReady", check=lambda ms: bool(ms.get("nodePort")))
            await wait_quiet(manager)
            final = await api.get_md(namespace, "md-r")
            assert final is not None
            assert final["status"]["replicas"] == 99
            assert module_service(final) == ms
            burst = len(status_writes(manager)) - ping_pong
            print(f"status writes: {ping_pong} for 50 replacements one by one, {burst} for 50 back to back")
            assert ping_pong == 50
            assert 1 <= burst <= 50


# ---------------------------------------------------------------------------------------------- missing at start
@asynccontextmanager
async def started_controller(config: Any) -> AsyncIterator[App]:
    """An App that is not expected to serve yet (unlike running_controller, which waits for it)."""
    client = TrackingKubeClient(await load_configuration(config.kubeconfig))
    async with client:
        registry = CollectorRegistry()
        manager = App(config, client, registry=registry, metrics=Metrics(registry), handle_signals=False)
        async with anyio.create_task_group() as tg:
            tg.start_soon(manager.run)
            try:
                yield manager
            finally:
                with anyio.move_on_after(10):
                    await wait_quiet(manager)
                tg.cancel_scope.cancel()


def _requests(registry: CollectorRegistry, path_code: str) -> float:
    return sum(s.value for f in registry.collect() for s in f.samples
               if s.name == "rest_client_requests_total" and s.labels.get("code") == path_code)


@pytest.fixture
def unique_group() -> str:
    return f"t{uuid.uuid4().hex[:8]}.koupleless.io"


class TestCrdMissingAtStart:
    async def test_waits_without_crashing_then_serves_within_10s(self, kubeconfig: str, namespace: str,
                                                                 unique_group: str) -> None:
        own = resolve_profile("koupleless", group=unique_group)
        config = controller_config(kubeconfig, namespace, profile="koupleless", api_group=unique_group,
                                   cache_sync_timeout=5)
        async with api_client(kubeconfig, own.resource) as api:
            try:
                with capture_logs() as logs:
                    async with started_controller(config) as manager:
                        async def says_why() -> str | None:
                            why = manager.readyz.run("crd")
                            return why if why is not None and "is not installed" in why else None
                        why = await wait_for(says_why, what="/readyz to say why")
                        assert why == (f"CustomResourceDefinition {own.crd_name} is not installed: "
                                       f"ModuleDeployments ({own.api_version}) are not served until it is")
                        started = time.monotonic()

                        # Alive past the cache-sync timeout, and no request for the missing resource.
                        async def past_sync_timeout() -> bool:
                            return time.monotonic() - started > config.cache_sync_timeout + 2
                        await wait_for(past_sync_timeout, what="the cache-sync timeout to pass")
                        assert not manager.serving
                        assert _requests(manager.registry, "404") == 0

                        await install_crd(api, crd_manifest("koupleless", unique_group))
                        established = time.monotonic()

                        async def serving() -> bool:
                            return manager.serving
                        await wait_for(serving, timeout=10, what="ModuleDeployments served within 10 s")
                        print(f"served {time.monotonic() - established:.2f}s after the CRD was established")
                        md = await api.create_md(namespace, module_deployment("md-late", "late-mod"))
                        await wait_right(api, namespace, "late-mod", [md], own)
                events = [e["event"] for e in logs]
                assert events.count("crd_not_served") == 1, events
                assert events.count("crd_served") == 1, events
                missing = next(e for e in logs if e["event"] == "crd_not_served")
                assert missing["crd"] == own.crd_name
                assert missing["log_level"] == "warning"
            finally:
                with anyio.CancelScope(shield=True):
                    await delete_crd(api, own.crd_name)
