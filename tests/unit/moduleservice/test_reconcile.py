"""The Reconciler on fake stores and a fake client: the write decisions that depend on exact timing
between a request and the watch (read-your-writes), and the bookkeeping that must not grow.

The fake client can run a callback while a request is "on the wire" to simulate what the watch delivers
before the request returns; that ordering is the defect, so a real API server cannot pin it down.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from controller.moduleservice.desired import (
    GROUP_LABEL,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    MD_API_VERSION,
    MODULE_LABEL,
)
from controller.moduleservice.mapping import ServiceKey, md_module, pod_modules
from controller.moduleservice.profiles import PROFILES
from controller.moduleservice.reasons import ADDRESS_CHANGED as REASON_ADDRESS_CHANGED
from controller.moduleservice.reasons import FIGHT as REASON_FIGHT
from controller.moduleservice.reconcile import (
    MD_MODULE_INDEX,
    POD_MODULE_INDEX,
    Reconciler,
)
from controller.moduleservice.statuswriter import StatusWriter
from controller.runtime.clock import FakeClock
from controller.runtime.events import EventRecorder
from controller.runtime.fight import FightDetector
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.errors import AlreadyExists, ApiError, Forbidden, Invalid, ServerError, TooManyRequests
from controller.runtime.result import Result
from controller.runtime.store import EventHandler, Store

pytestmark = pytest.mark.asyncio

NS = "ns"
PREFIX = "module.koupleless.alipay.com/"
KEY = ServiceKey(NS, "m-service")


def md(name: str, module: str = "m", *, uid: str | None = None, rv: str = "1", port: int = 8080,
       target_port: int | str | None = None, enabled: bool = True, deleting: bool = False) -> JsonObj:
    strategy: JsonObj = {"enableModuleService": enabled, "port": port}
    if target_port is not None:
        strategy["targetPort"] = target_port
    meta: JsonObj = {"name": name, "namespace": NS, "uid": uid or f"uid-{name}", "resourceVersion": rv,
                     "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {"apiVersion": MD_API_VERSION, "kind": "ModuleDeployment", "metadata": meta,
            "spec": {"template": {"spec": {"module": {"name": module}}},
                     "operationStrategy": {"serviceStrategy": strategy}}}


def service(rv: str, *, module: str = "m", owner: JsonObj | None = None, selector: dict[str, str] | None = None,
            managed: bool = True, uid: str = "svc-uid", target_port: int | str = 8080) -> JsonObj:
    meta: JsonObj = {"name": f"{module}-service", "namespace": NS, "uid": uid, "resourceVersion": rv}
    if managed:
        owner = owner or md("a", module)
        meta["labels"] = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, MODULE_LABEL: module,
                          GROUP_LABEL: MD_API_VERSION.split("/", 1)[0]}
        meta["ownerReferences"] = [{
            "apiVersion": MD_API_VERSION, "kind": "ModuleDeployment", "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {
        "type": "NodePort", "clusterIP": "10.0.0.1",
        "selector": selector if selector is not None else {f"{PREFIX}{module}": "true"},
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": target_port,
                   "nodePort": 30080}]}}


Hook = Callable[[str, str, Any], Awaitable[JsonObj | None]]


class FakeClient:
    """Records requests; ``hook`` may act "while the request is on the wire" and answer it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.hook: Hook | None = None

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                      content_type: str = "application/json", timeout: float | None = None) -> JsonObj:
        self.calls.append((method, path, copy.deepcopy(body)))
        if self.hook is not None:
            answer = await self.hook(method, path, body)
            if answer is not None:
                return answer
        return copy.deepcopy(body) if isinstance(body, dict) else {}

    def writes(self, method: str, path_part: str = "/services") -> list[Any]:
        return [b for m, p, b in self.calls if m == method and path_part in p]


class WatchedStore(Store):
    """A Store whose changes reach handlers, as the informer's do: ``upsert``/``delete`` here stand for
    what the watch delivers."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers: list[EventHandler] = []

    def upsert(self, obj: JsonObj) -> JsonObj | None:
        old = super().upsert(obj)
        for h in self.handlers:
            if old is None:
                h.on_add(obj)
            else:
                h.on_update(old, obj)
        return old

    def delete(self, key: str) -> JsonObj | None:
        old = super().delete(key)
        if old is not None:
            for h in self.handlers:
                h.on_delete(old)
        return old


class World:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.mds = Store({MD_MODULE_INDEX: lambda o: [f"{NS}/{md_module(o)}"]})
        self.services = WatchedStore()
        self.pods = Store({POD_MODULE_INDEX: lambda p: [f"{NS}/{m}" for m, _ in pod_modules(p, PREFIX)]})
        self.events = EventRecorder(None)
        self.clock = FakeClock()
        self.reconciler = Reconciler(
            cast(KubeClient, self.client), mds=self.mds, services=self.services, pods=self.pods,
            profile=PROFILES["seed"], events=self.events, clock=self.clock)
        self.status = StatusWriter(self.reconciler)
        self.services.handlers.append(self.reconciler.service_events)

    async def reconcile(self, key: ServiceKey) -> Result:
        """As the work queue would: a key that asks to wait is handed back once its delay has passed."""
        for _ in range(20):
            result = await self.reconciler.reconcile(key)
            if not result.requeue_after:
                return result
            self.clock.advance(result.requeue_after)
        pytest.fail("still asking to wait after 20 rounds")


class TestReadYourWrites:
    """Defect 3: the expectation must carry the resourceVersion the cache showed *before* the write."""

    async def test_foreign_edit_delivered_before_the_patch_returns_is_not_hidden(self) -> None:
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        hijacked = {"app": "someone-else"}
        w.services.upsert(service("10", owner=owner, selector=hijacked))

        async def on_wire(method: str, path: str, body: Any) -> JsonObj | None:
            if method != "PATCH" or "/services/" not in path:
                return None
            ours = service("11", owner=owner)
            w.services.upsert(copy.deepcopy(ours))  # the watch delivers our write...
            w.services.upsert(service("12", owner=owner, selector=hijacked))  # ...then someone's undo
            return ours  # and only now does our request return

        w.client.hook = on_wire
        await w.reconciler.reconcile(KEY)
        assert len(w.client.writes("PATCH")) == 1
        # The cache shows the hijacked selector at rv 12: the next pass must see it and restore ours.
        w.client.hook = None
        await w.reconciler.reconcile(KEY)
        patches = w.client.writes("PATCH")
        assert len(patches) == 2, "someone's edit after our write was hidden by the read-your-writes cache"
        assert patches[1]["spec"]["selector"] == {"app": None, f"{PREFIX}m": "true"}
        assert patches[1]["metadata"]["resourceVersion"] == "12"

    async def test_recreated_after_our_delete_is_seen_not_posted_over(self) -> None:
        w = World()
        owner = md("a", enabled=False)
        w.mds.upsert(owner)
        w.services.upsert(service("10", owner=md("a")))
        recreated = service("12", owner=md("a"), uid="other-uid")

        async def on_wire(method: str, path: str, body: Any) -> JsonObj | None:
            if method == "DELETE":
                w.services.delete(f"{NS}/m-service")  # the watch delivers our delete...
                w.services.upsert(copy.deepcopy(recreated))  # ...and someone re-creates it at once
                return {}
            if method == "POST" and path.endswith("/services"):
                raise AlreadyExists(409, "AlreadyExists", 'services "m-service" already exists')
            return None

        w.client.hook = on_wire
        await w.reconciler.reconcile(KEY)
        assert len(w.client.writes("DELETE")) == 1
        w.mds.upsert(md("a", rv="2"))  # wanted again: the cache shows the re-created Service, which fits
        result = await w.reconciler.reconcile(KEY)
        assert not result.requeue, f"reconcile POSTed over an existing Service the cache shows: {result.reason}"
        assert w.client.writes("POST") == []
        assert w.client.writes("DELETE") == [w.client.writes("DELETE")[0]]


class TestInvalidSpecKeepsService:
    """Defect 6: without CEL, a typo makes the spec invalid; the live Service must stay as it is."""

    @pytest.mark.parametrize("bad", [
        {"target_port": "http_port"},
        {"port": 0},
        {"port": 70000},
    ])
    async def test_typo_keeps_last_good_service(self, bad: dict[str, Any]) -> None:
        w = World()
        good = md("a")
        w.mds.upsert(good)
        w.services.upsert(service("10", owner=good))
        await w.reconciler.reconcile(KEY)
        assert w.client.calls == []  # converged

        w.mds.upsert(md("a", rv="2", **bad))
        await w.reconciler.reconcile(KEY)
        assert w.client.writes("DELETE") == [], "an invalid spec deleted the live Service"
        assert w.client.writes("PATCH") == []
        assert w.client.writes("POST") == []

        await w.status.reconcile(KEY)
        status_patches = w.client.writes("PATCH", "/status")
        assert len(status_patches) == 1
        cond = status_patches[0]["status"]["moduleService"]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")

    async def test_disabled_still_deletes(self) -> None:
        w = World()
        w.mds.upsert(md("a", enabled=False))
        w.services.upsert(service("10", owner=md("a")))
        await w.reconciler.reconcile(KEY)
        assert len(w.client.writes("DELETE")) == 1

    async def test_invalid_beside_nothing_creates_nothing(self) -> None:
        w = World()
        w.mds.upsert(md("a", target_port="http_port"))
        await w.reconciler.reconcile(KEY)
        assert w.client.calls == []


class TestStatusBookkeeping:
    """Defect 7: the status read-your-writes map holds nothing for ModuleDeployments that are gone."""

    @pytest.mark.parametrize("ending", ["deleted", "terminating"])
    async def test_churn_leaves_the_map_empty(self, ending: str) -> None:
        w = World()
        for i in range(2000):
            name, module = f"md-{i}", f"m{i}"
            key = ServiceKey(NS, f"{module}-service")
            w.mds.upsert(md(name, module))
            await w.status.reconcile(key)  # status written; the cache has not seen it yet
            if ending == "deleted":
                w.mds.delete(f"{NS}/{name}")
            else:
                w.mds.upsert(md(name, module, rv="2", deleting=True))
            await w.status.reconcile(key)  # the follow-up pass after the MD went away
            if ending == "terminating":
                w.mds.delete(f"{NS}/{name}")
        assert len(w.client.writes("PATCH", "/status")) == 2000
        assert w.status.pending_writes == 0, f"{w.status.pending_writes} entries leaked"

    async def test_pending_write_still_suppresses_a_repeat(self) -> None:
        # The map's purpose survives the fix: while the cache lags, the same status is not written twice.
        w = World()
        w.mds.upsert(md("a"))
        await w.status.reconcile(KEY)
        await w.status.reconcile(KEY)
        assert len(w.client.writes("PATCH", "/status")) == 1


class TestServiceEcho:
    """Our own Service write coming back on the watch needs no Service reconcile; anything else does."""

    async def test_only_the_object_our_write_returned_is_an_echo(self) -> None:
        w = World()

        async def answer(method: str, path: str, body: Any) -> JsonObj | None:
            out = copy.deepcopy(body)
            out["metadata"].update(resourceVersion="5", uid="svc-uid")
            return cast(JsonObj, out)

        w.client.hook = answer
        w.mds.upsert(md("a"))
        await w.reconcile(KEY)
        (posted,) = w.client.writes("POST")
        created = copy.deepcopy(posted)
        created["metadata"].update(resourceVersion="5", uid="svc-uid")
        news = w.reconciler.service_events
        w.services.upsert(created)  # the watch delivers our create
        assert news.take_echo(created)
        assert not news.take_echo(created), "told once, for the event being delivered"
        edited = copy.deepcopy(created)
        edited["metadata"]["resourceVersion"] = "6"
        edited["spec"]["selector"] = {"app": "other"}
        w.services.upsert(edited)  # someone else's edit after ours
        assert not news.take_echo(edited)
        w.services.delete(f"{NS}/m-service")
        assert not news.take_echo(edited)


class TestStatusEcho:
    """A status-only update reaches the status lane only when it can change what that lane writes."""

    async def test_our_own_write_coming_back_is_skipped_and_ends_the_wait(self) -> None:
        w = World()
        w.mds.upsert(md("a"))
        await w.status.reconcile(KEY)
        (patch,) = w.client.writes("PATCH", "/status")
        old = w.mds.get(f"{NS}/a")
        assert old is not None
        echo = {**md("a", rv="2"), "status": patch["status"]}
        assert w.status.pending_writes == 1
        assert not w.status.status_update_matters(old, echo)
        assert w.status.pending_writes == 0  # the cache shows it now: nothing left to wait for

    async def test_someone_elses_change_of_our_field_matters(self) -> None:
        w = World()
        w.mds.upsert(md("a"))
        await w.status.reconcile(KEY)
        (patch,) = w.client.writes("PATCH", "/status")
        written = {**md("a", rv="2"), "status": patch["status"]}
        edited = copy.deepcopy(written)
        edited["status"]["moduleService"]["port"] = 1
        assert w.status.status_update_matters(written, edited)
        # Without a write of ours pending (a restart), any change of our field matters too.
        assert StatusWriter(w.reconciler).status_update_matters(md("a"), written)

    async def test_the_rest_of_the_status_does_not_matter(self) -> None:
        w = World()
        theirs = {**md("a", rv="2"), "status": {"moduleService": {"port": 8080}, "releaseStatus": {"x": 1}}}
        moved = {**md("a", rv="3"), "status": {"moduleService": {"port": 8080}, "releaseStatus": {"x": 2}}}
        assert not w.status.status_update_matters(theirs, moved)


def recorded(w: World) -> list[tuple[str, str, int]]:
    """(type, reason, count) of every Event waiting in the recorder."""
    return [(type_, reason, count) for type_, reason, _, count in w.events.waiting()]


class TestFight:
    """Defect 4: our writes keep being undone: write with backoff and report it once."""

    async def test_undone_writes_back_off_and_report_once(self) -> None:
        clock = [0.0]
        w = World()
        w.reconciler.fights = FightDetector(lambda: clock[0], threshold=3, base=1.0, cap=60.0, window=300.0)
        owner = md("a")
        w.mds.upsert(owner)
        delays: list[float] = []
        for i in range(20):
            w.services.upsert(service(str(100 + i), owner=owner, selector={"app": "hijacked"}))  # undone again
            result = await w.reconciler.reconcile(KEY)
            if result.requeue_after:
                delays.append(result.requeue_after)
                clock[0] += result.requeue_after  # the queue hands the key back after the delay...
                await w.reconciler.reconcile(KEY)  # ...and then it writes
            clock[0] += 0.1
        assert len(w.client.writes("PATCH")) == 20
        assert delays == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0, 32.0] + [60.0] * 11, abs=0.11)
        fights = [e for e in recorded(w) if e[1] == REASON_FIGHT]
        assert fights == [("Warning", REASON_FIGHT, 1)]
        updated = [e for e in recorded(w) if e[1] == "ServiceUpdated"]
        assert updated == [("Normal", "ServiceUpdated", 20)], "one Event, its count raised"


class TestWriteFailures:
    """Defect 5: a Service write the API refuses shows on the Ready condition and as a Warning Event."""

    @pytest.mark.parametrize(("error", "verb"), [
        (Forbidden(403, "Forbidden", 'services "m-service" is forbidden: exceeded quota: q, requested: '
                   "services.nodeports=1, used: services.nodeports=0, limited: services.nodeports=0"), "POST"),
        (Invalid(422, "Invalid", 'Service "m-service" is invalid: spec.ports[0].nodePort: Invalid value'), "POST"),
        (ServerError(500, "InternalError", "failed to allocate a nodePort: range is full"), "POST"),
        (Forbidden(403, "Forbidden", "denied by admission webhook"), "PATCH"),
    ])
    async def test_failure_on_ready_condition_then_cleared(self, error: ApiError, verb: str) -> None:
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        if verb == "PATCH":
            w.services.upsert(service("10", owner=owner, selector={"app": "x"}))

        async def refuse(method: str, path: str, body: Any) -> JsonObj | None:
            if method == verb and "/services" in path:
                raise error
            return None

        w.client.hook = refuse
        for _ in range(3):
            with pytest.raises(ApiError):
                await w.reconciler.reconcile(KEY)
        doing = "creating" if verb == "POST" else "updating"
        assert w.reconciler.write_error(KEY) == f"{doing} Service m-service failed: {error}"
        await w.status.reconcile(KEY)
        (status,) = w.client.writes("PATCH", "/status")
        cond = status["status"]["moduleService"]["conditions"][0]
        assert (cond["status"], cond["reason"]) == ("False", "ServiceWriteFailed")
        assert error.message in cond["message"]
        assert str(error.status) in cond["message"]
        assert [e for e in recorded(w) if e[0] == "Warning"] == [("Warning", "ServiceWriteFailed", 3)]

        w.client.hook = None
        await w.reconciler.reconcile(KEY)
        assert w.reconciler.write_error(KEY) is None
        w.mds.upsert(md("a", rv="2"))
        w.services.upsert(service("11", owner=owner))  # the watch delivers the Service as written
        await w.status.reconcile(KEY)
        cond = w.client.writes("PATCH", "/status")[-1]["status"]["moduleService"]["conditions"][0]
        assert cond["reason"] == "ServiceReady"

    async def test_throttling_is_not_reported(self) -> None:
        w = World()
        w.mds.upsert(md("a"))

        async def throttle(method: str, path: str, body: Any) -> JsonObj | None:
            raise TooManyRequests(429, "TooManyRequests", "slow down", retry_after=1)

        w.client.hook = throttle
        with pytest.raises(TooManyRequests):
            await w.reconciler.reconcile(KEY)
        assert w.reconciler.write_error(KEY) is None
        assert recorded(w) == []


def created_response(body: JsonObj, *, rv: str = "20", cluster_ip: str = "10.0.0.77",
                     node_port: int = 31777) -> JsonObj:
    """What the API server answers to a Service POST: the object with its addresses allocated, unless the
    request asked for some."""
    out = copy.deepcopy(body)
    out["metadata"].update(uid=f"uid-{rv}", resourceVersion=rv)
    spec = out["spec"]
    spec.setdefault("clusterIP", cluster_ip)
    spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec["ports"][0].setdefault("nodePort", node_port)
    return out


class TestCreateThenDeletedBeforeTheCacheSawIt:
    """Defect 4: after our create, the Service is deleted before the cache has shown it. The cache then
    shows "no Service" again, the very state it showed before the create: the Service must be re-created,
    not taken for our own create still on its way."""

    async def test_add_and_delete_delivered_after_the_post(self) -> None:
        w = World()
        w.mds.upsert(md("a"))
        answers: list[JsonObj] = []

        async def post(method: str, path: str, body: Any) -> JsonObj | None:
            if method == "POST" and path.endswith("/services"):
                answers.append(created_response(body, rv=str(20 + len(answers))))
                return answers[-1]
            return None

        w.client.hook = post
        await w.reconcile(KEY)
        assert len(w.client.writes("POST")) == 1
        w.services.upsert(copy.deepcopy(answers[0]))  # the watch delivers our create...
        w.services.delete(f"{NS}/m-service")  # ...and someone's delete right after it
        await w.reconcile(KEY)
        assert len(w.client.writes("POST")) == 2, "the deleted Service was taken for our own create"

    async def test_add_and_delete_delivered_while_the_post_is_on_the_wire(self) -> None:
        w = World()
        w.mds.upsert(md("a"))

        async def post(method: str, path: str, body: Any) -> JsonObj | None:
            if method == "POST" and path.endswith("/services"):
                ours = created_response(body)
                if len(w.client.writes("POST")) == 1:
                    w.services.upsert(copy.deepcopy(ours))
                    w.services.delete(f"{NS}/m-service")
                return ours
            return None

        w.client.hook = post
        await w.reconcile(KEY)
        await w.reconcile(KEY)
        assert len(w.client.writes("POST")) == 2

    async def test_create_and_delete_folded_by_a_relist(self) -> None:
        w = World()
        w.mds.upsert(md("a"))
        w.client.hook = None
        await w.reconcile(KEY)
        # The watch broke; the relist finds no Service and the store never had one: no event at all.
        w.reconciler.services_relisted()
        await w.reconcile(KEY)
        assert len(w.client.writes("POST")) == 2

    async def test_our_create_still_in_flight_is_not_repeated(self) -> None:
        # What the expectation is for: the cache has said nothing yet, so no second POST.
        w = World()
        w.mds.upsert(md("a"))
        await w.reconcile(KEY)
        await w.reconcile(KEY)
        assert len(w.client.writes("POST")) == 1


class TestDeletedUnderUs:
    """A Service of ours deleted by someone else while a ModuleDeployment wants it comes back at once, with
    the clusterIP and nodePort it had; never through the fight detector's backoff."""

    async def test_recreated_with_its_addresses(self) -> None:
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        live = service("10", owner=owner)
        live["spec"].update(clusterIP="10.0.0.42", clusterIPs=["10.0.0.42"], ipFamilies=["IPv4"],
                            ipFamilyPolicy="SingleStack")
        live["spec"]["ports"][0]["nodePort"] = 31626
        w.services.upsert(live)
        await w.reconcile(KEY)
        assert w.client.calls == []
        w.services.delete(f"{NS}/m-service")  # Koupleless' module-controller deletes it by name
        await w.reconcile(KEY)
        (body,) = w.client.writes("POST")
        assert body["spec"]["clusterIP"] == "10.0.0.42"
        assert body["spec"]["clusterIPs"] == ["10.0.0.42"]
        assert body["spec"]["ipFamilies"] == ["IPv4"]
        assert body["spec"]["ipFamilyPolicy"] == "SingleStack"
        assert body["spec"]["ports"][0]["nodePort"] == 31626
        assert [e for e in recorded(w) if e[1] == "ServiceCreated"] == [("Normal", "ServiceCreated", 1)]

    async def test_every_delete_gets_one_create_without_backoff(self) -> None:
        w = World()
        w.reconciler.fights = FightDetector(w.clock.now, threshold=3, base=1.0, cap=60.0, window=300.0)
        owner = md("a")
        w.mds.upsert(owner)
        w.client.hook = None
        for i in range(20):
            live = service(str(100 + i), owner=owner)
            w.services.upsert(live)  # the watch shows our re-created Service...
            w.services.delete(f"{NS}/m-service")  # ...and the next delete by name
            await w.reconcile(KEY)  # a pause for the address release, never the fight backoff
            await w.reconcile(KEY)  # and never a second create for one delete
            w.clock.advance(0.5)
        posts = w.client.writes("POST")
        assert len(posts) == 20
        assert all(p["spec"]["ports"][0]["nodePort"] == 30080 for p in posts)
        assert [e for e in recorded(w) if e[1] == REASON_FIGHT] == []

    async def test_refused_address_gives_a_fresh_one_and_a_warning(self) -> None:
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        w.services.upsert(service("10", owner=owner))
        w.services.delete(f"{NS}/m-service")

        async def taken(method: str, path: str, body: Any) -> JsonObj | None:
            if method == "POST" and path.endswith("/services"):
                if "clusterIP" in body["spec"]:
                    raise Invalid(422, "Invalid", 'Service "m-service" is invalid: spec.clusterIPs: Invalid value: '
                                  '[]string{"10.0.0.1"}: failed to allocate IP 10.0.0.1: provided IP is already '
                                  "allocated")
                return created_response(body, cluster_ip="10.0.0.99", node_port=31999)
            return None

        w.client.hook = taken
        await w.reconcile(KEY)
        *tries, fresh = w.client.writes("POST")
        assert len(tries) == 1 + w.reconciler.addresses.retries, "the old addresses are asked for a few times"
        assert all(t["spec"]["clusterIP"] == "10.0.0.1" for t in tries)
        assert "clusterIP" not in fresh["spec"]
        assert "nodePort" not in fresh["spec"]["ports"][0]
        ((type_, _, message, _),) = [e for e in w.events.waiting() if e[1] == REASON_ADDRESS_CHANGED]
        assert type_ == "Warning"
        assert "clusterIP 10.0.0.1, nodePort 30080" in message
        assert "clusterIP 10.0.0.99, nodePort 31999" in message

    async def test_addresses_not_released_yet_are_asked_for_again(self) -> None:
        # The watch shows a delete before the API server has freed the addresses.
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        w.services.upsert(service("10", owner=owner))
        w.services.delete(f"{NS}/m-service")
        refusals = [1]

        async def not_yet(method: str, path: str, body: Any) -> JsonObj | None:
            if method == "POST" and path.endswith("/services"):
                if refusals[0]:
                    refusals[0] -= 1
                    raise Invalid(422, "Invalid", 'Service "m-service" is invalid: spec.ports[0].nodePort: Invalid '
                                  "value: 30080: provided port is already allocated")
                return created_response(body)
            return None

        w.client.hook = not_yet
        await w.reconcile(KEY)
        posts = w.client.writes("POST")
        assert len(posts) == 2
        assert all(p["spec"]["ports"][0]["nodePort"] == 30080 for p in posts)
        assert not [e for e in w.events.waiting() if e[1] == REASON_ADDRESS_CHANGED]

    async def test_fresh_upstream_copy_is_replaced_to_restore_the_addresses(self) -> None:
        # Koupleless' module-controller deletes ours and, while the ModuleDeployment's generation is 1,
        # creates its own at once: same shape, new addresses.
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        w.services.upsert(service("10", owner=owner))
        w.services.delete(f"{NS}/m-service")
        upstream = service("11", managed=False, uid="upstream-uid")
        upstream["spec"].update(clusterIP="10.0.0.66")
        upstream["spec"]["ports"][0]["nodePort"] = 31666
        w.services.upsert(upstream)
        w.client.hook = None
        await w.reconcile(KEY)
        (delete,) = w.client.writes("DELETE")
        assert delete["preconditions"] == {"uid": "upstream-uid"}
        w.services.delete(f"{NS}/m-service")  # the watch shows our delete
        await w.reconcile(KEY)
        (post,) = w.client.writes("POST")
        assert (post["spec"]["clusterIP"], post["spec"]["ports"][0]["nodePort"]) == ("10.0.0.1", 30080)
        assert w.client.writes("PATCH") == [], "adopting it would have kept the new addresses"

    async def test_upstream_copy_with_the_same_addresses_is_adopted(self) -> None:
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        w.services.upsert(service("10", owner=owner))
        w.services.delete(f"{NS}/m-service")
        w.services.upsert(service("11", managed=False, uid="upstream-uid"))  # same addresses (10.0.0.1, 30080)
        await w.reconcile(KEY)
        assert w.client.writes("DELETE") == []
        assert len(w.client.writes("PATCH")) == 1

    @pytest.mark.parametrize("how", ["disabled", "last-owner-deleted"])
    async def test_a_service_nobody_wants_is_not_brought_back_with_old_addresses(self, how: str) -> None:
        w = World()
        owner = md("a")
        w.mds.upsert(owner)
        w.services.upsert(service("10", owner=owner))
        if how == "disabled":
            w.mds.upsert(md("a", rv="2", enabled=False))
            await w.reconcile(KEY)  # we delete it
        else:
            w.mds.delete(f"{NS}/a")
        w.services.delete(f"{NS}/m-service")  # our delete, or the garbage collector's
        assert len(w.reconciler.addresses) == 0
        w.mds.upsert(md("b"))  # wanted again later: a new Service, addresses as the API server chooses
        await w.reconcile(KEY)
        (body,) = w.client.writes("POST")
        assert "clusterIP" not in body["spec"]


class TestAnotherInstallsService:
    """A Service owned through another API group (another install of this controller) is never written."""

    @pytest.mark.parametrize("marker", ["owner-reference", "group-label"])
    async def test_never_written_and_named_in_status(self, marker: str) -> None:
        w = World()
        w.mds.upsert(md("a", port=9090))
        theirs = service("10", managed=False)
        if marker == "owner-reference":
            theirs["metadata"]["ownerReferences"] = [{
                "apiVersion": "serverless.alipay.com/v1alpha1", "kind": "ModuleDeployment", "name": "x",
                "uid": "uid-x", "controller": True, "blockOwnerDeletion": True}]
        else:
            theirs["metadata"]["labels"] = {MANAGED_BY_LABEL: MANAGED_BY_VALUE, GROUP_LABEL: "serverless.alipay.com"}
        w.services.upsert(theirs)
        await w.reconcile(KEY)
        assert w.client.calls == []
        w.mds.upsert(md("a", rv="2", enabled=False))  # not wanted by us: still not ours to delete
        await w.reconcile(KEY)
        assert w.client.calls == []
        w.mds.upsert(md("a", rv="3", port=9090))
        await w.status.reconcile(KEY)
        (status,) = w.client.writes("PATCH", "/status")
        cond = status["status"]["moduleService"]["conditions"][0]
        assert cond["reason"] == "NameConflict"
        assert "serverless.alipay.com" in cond["message"]
