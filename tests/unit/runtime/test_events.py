"""The event correlator (aggregate, deduplicate, per-object budget) on a fake clock, the fight detector,
and the recorder's sends (POST once, then PATCH of count, coalesced) on a fake client."""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any, cast

import anyio
import pytest

from controller.runtime.eventcorrelator import AGGREGATE_PREFIX, EventCorrelator, EventIdentity
from controller.runtime.events import EventRecorder, ObjectRef
from controller.runtime.fight import FightDetector
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.errors import NotFound
from tests.harness import wait_for


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ev(message: str = "Updated Service m-service (8080->8080)", *, name: str = "md-a", reason: str = "ServiceUpdated",
       type_: str = "Normal") -> EventIdentity:
    return EventIdentity("ns", "ModuleDeployment", name, f"uid-{name}", "example.com/v1", type_, reason, message)


class TestCorrelator:
    def test_identical_events_are_one_event_whose_count_rises(self) -> None:
        c = EventCorrelator(Clock())
        first = c.observe(ev(), now_stamp="T0")
        assert first is not None
        assert first.count == 1
        later = [c.observe(ev(), now_stamp=f"T{i}") for i in range(1, 10)]
        assert all(o is not None for o in later)
        assert {o.name for o in later if o} == {first.name}
        assert [o.count for o in later if o] == list(range(2, 11))
        assert {o.first_seen for o in later if o} == {"T0"}

    def test_different_message_reason_or_object_is_a_new_event(self) -> None:
        c = EventCorrelator(Clock())
        names = {o.name for o in (c.observe(e, now_stamp="T") for e in (
            ev(), ev("other"), ev(reason="ServiceCreated"), ev(name="md-b"), ev(type_="Warning"))) if o}
        assert len(names) == 5

    def test_similar_messages_are_combined_from_the_tenth(self) -> None:
        clock = Clock()
        c = EventCorrelator(clock, burst=100)
        obs = [c.observe(ev(f"port {8000 + i}"), now_stamp="T") for i in range(30)]
        assert all(o is not None for o in obs)
        distinct = {o.name for o in obs if o}
        assert len(distinct) == 10, "nine distinct events, then one combined event"
        last = obs[-1]
        assert last is not None
        assert last.message == AGGREGATE_PREFIX + "port 8029"
        assert last.count == 21
        clock.t += 601  # a quiet window later, messages count afresh
        fresh = c.observe(ev("port 9999"), now_stamp="T")
        assert fresh is not None
        assert not fresh.message.startswith(AGGREGATE_PREFIX)

    def test_per_object_budget_refills_slowly(self) -> None:
        clock = Clock()
        c = EventCorrelator(clock)
        got = [c.observe(ev(f"m{i % 3}"), now_stamp="T") for i in range(40)]
        assert sum(o is not None for o in got) == 25
        assert c.filtered == 15
        other = c.observe(ev(name="md-b"), now_stamp="T")  # budgets are per object
        assert other is not None
        clock.t += 299
        assert c.observe(ev("m0"), now_stamp="T") is None
        clock.t += 2
        again = c.observe(ev("m0"), now_stamp="T")
        # the count includes the repeats the filter dropped
        assert again is not None
        assert again.count == len([i for i in range(40) if i % 3 == 0]) + 2

    def test_caches_are_bounded(self) -> None:
        c = EventCorrelator(Clock(), cache_size=100)
        for i in range(5000):
            c.observe(ev(name=f"md-{i}"), now_stamp="T")
        assert c.cached() <= 300


class TestFightDetector:
    def test_undos_back_off_exponentially_and_report_once(self) -> None:
        clock = Clock()
        f: FightDetector[str] = FightDetector(clock, threshold=3, base=1.0, cap=60.0, window=300.0)
        writes: list[float] = []
        reported = 0
        # Someone undoes our write 0.1 s after each write, for 300 s: we write whenever allowed.
        end = clock.t + 300
        while clock.t < end:
            wait = f.delay("k", "want")
            if wait > 0:
                clock.t += wait
                continue
            writes.append(clock.t)
            reported += f.wrote("k", "want")
            clock.t += 0.1
        gaps = [b - a for a, b in itertools.pairwise(writes)]
        assert reported == 1
        assert gaps[:2] == pytest.approx([0.1, 0.1])
        assert gaps[2:6] == pytest.approx([1.0, 2.0, 4.0, 8.0])
        assert max(gaps) == pytest.approx(60.0)
        assert len(writes) == 12  # 3 at once, then 1, 2, 4, 8, 16, 32 s apart, then 60 s (the cap)

    def test_a_different_desired_state_or_a_quiet_window_starts_afresh(self) -> None:
        clock = Clock()
        f: FightDetector[str] = FightDetector(clock, threshold=1, base=5.0, cap=60.0, window=300.0)
        f.wrote("k", "a")
        f.wrote("k", "a")
        assert f.delay("k", "a") == pytest.approx(10.0)
        assert f.delay("k", "b") == 0.0
        assert f.delay("other", "a") == 0.0
        clock.t += 301
        assert f.delay("k", "a") == 0.0
        assert len(f) == 0, "entries older than the window are dropped"

    def test_window_must_exceed_cap(self) -> None:
        with pytest.raises(ValueError, match="window"):
            FightDetector(Clock(), cap=60.0, window=60.0)


class FakeEventsApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, JsonObj]] = []
        self.events: dict[str, JsonObj] = {}
        self.gate: anyio.Event | None = None
        self.at_gate = 0  # requests that reached the gate
        self.in_flight: list[str] = []  # Event names on the wire now

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                      content_type: str = "application/json", timeout: float | None = None) -> JsonObj:
        name = body["metadata"]["name"] if method == "POST" else path.rsplit("/", 1)[1]
        self.in_flight.append(name)
        try:
            if self.gate is not None:
                self.at_gate += 1
                await self.gate.wait()
        finally:
            self.in_flight.remove(name)
        self.calls.append((method, path, copy.deepcopy(body)))
        if method == "POST":
            self.events[body["metadata"]["name"]] = copy.deepcopy(body)
            return dict(body)
        name = path.rsplit("/", 1)[1]
        if name not in self.events:
            raise NotFound(404, "NotFound", f'events "{name}" not found')
        self.events[name].update(body)
        return self.events[name]


REF = ObjectRef("ns", "md-a", "uid-a", "example.com/v1", "ModuleDeployment")


async def drain(rec: EventRecorder) -> None:
    async def sent() -> bool:
        return rec.pending == 0
    await wait_for(sent, timeout=10, interval=0.001, what="every Event sent")


@pytest.mark.asyncio
class TestRecorder:
    async def test_repeats_patch_the_count_of_one_event(self) -> None:
        api = FakeEventsApi()
        rec = EventRecorder(cast(KubeClient, api))
        async with anyio.create_task_group() as tg:
            await tg.start(rec.run)
            for _ in range(5):
                rec.record(REF, "Normal", "ServiceUpdated", "Updated Service m-service")
                await drain(rec)
            tg.cancel_scope.cancel()
        assert [m for m, _, _ in api.calls] == ["POST", "PATCH", "PATCH", "PATCH", "PATCH"]
        assert len(api.events) == 1
        (event,) = api.events.values()
        assert event["count"] == 5
        assert event["firstTimestamp"] <= event["lastTimestamp"]

    async def test_repeats_while_waiting_are_coalesced(self) -> None:
        api = FakeEventsApi()
        api.gate = anyio.Event()
        rec = EventRecorder(cast(KubeClient, api))
        async with anyio.create_task_group() as tg:
            await tg.start(rec.run)
            rec.record(REF, "Normal", "ServiceUpdated", "one")
            with anyio.fail_after(10):
                while api.at_gate == 0:  # until the POST of "one" is on the wire, held by the gate
                    await anyio.sleep(0.001)
            for _ in range(10):
                rec.record(REF, "Normal", "ServiceUpdated", "one")
                rec.record(REF, "Warning", "Other", "two")
            api.gate.set()
            await drain(rec)
            tg.cancel_scope.cancel()
        methods = [(m, b.get("reason") or b.get("message")) for m, _, b in api.calls]
        assert methods == [("POST", "ServiceUpdated"), ("POST", "Other"), ("PATCH", "one")]
        counts = sorted(e["count"] for e in api.events.values())
        assert counts == [10, 11]

    async def test_each_send_waits_for_the_owner_with_the_time_it_started_waiting(self) -> None:
        api = FakeEventsApi()
        asked: list[float] = []
        opened = anyio.Event()

        async def idle(since: float) -> None:  # the owner's gate (the Manager: Services first)
            asked.append(since)
            await opened.wait()

        rec = EventRecorder(cast(KubeClient, api), idle=idle)
        async with anyio.create_task_group() as tg:
            await tg.start(rec.run)
            before = time.monotonic()
            rec.record(REF, "Normal", "ServiceCreated", "one")
            after = time.monotonic()
            with anyio.fail_after(10):
                while not asked:
                    await anyio.sleep(0.001)
            rec.record(REF, "Normal", "ServiceCreated", "two")
            await anyio.sleep(0.01)
            assert api.calls == [], "nothing goes out while the owner holds the gate"
            opened.set()
            await drain(rec)
            tg.cancel_scope.cancel()
        assert before <= asked[0] <= after
        assert asked[1] >= asked[0], "the second event waits from its own record time"
        assert [b["message"] for _, _, b in api.calls] == ["one", "two"]

    async def test_several_go_out_at_once_but_one_event_never_twice(self) -> None:
        api = FakeEventsApi()
        api.gate = anyio.Event()
        rec = EventRecorder(cast(KubeClient, api), senders=3)
        refs = [ObjectRef("ns", f"md-{i}", f"uid-{i}", "example.com/v1", "ModuleDeployment") for i in range(5)]
        async with anyio.create_task_group() as tg:
            await tg.start(rec.run)
            for ref in refs:
                rec.record(ref, "Normal", "ServiceCreated", "created")
            with anyio.fail_after(10):
                while api.at_gate < 3:
                    await anyio.sleep(0.001)
            rec.record(refs[0], "Normal", "ServiceCreated", "created")  # a repeat of one on the wire
            await anyio.wait_all_tasks_blocked()
            assert len(api.in_flight) == 3, "three senders, three Events on the wire"
            assert len(set(api.in_flight)) == 3
            api.gate.set()
            await drain(rec)
            tg.cancel_scope.cancel()
        assert sorted(m for m, _, _ in api.calls) == ["PATCH"] + ["POST"] * 5
        assert [m for m, p, b in api.calls if "md-0." in p or (b.get("metadata") or {}).get("name", "")
                .startswith("md-0.")] == ["POST", "PATCH"], "the repeat waits for its create"

    async def test_expired_event_is_created_again(self) -> None:
        api = FakeEventsApi()
        rec = EventRecorder(cast(KubeClient, api))
        async with anyio.create_task_group() as tg:
            await tg.start(rec.run)
            rec.record(REF, "Normal", "ServiceUpdated", "x")
            await drain(rec)
            api.events.clear()  # the Event's TTL ran out
            rec.record(REF, "Normal", "ServiceUpdated", "x")
            await drain(rec)
            tg.cancel_scope.cancel()
        assert [m for m, _, _ in api.calls] == ["POST", "PATCH", "POST"]
        (event,) = api.events.values()
        assert event["count"] == 2
