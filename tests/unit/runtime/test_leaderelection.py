"""Unit tests for controller.runtime.leaderelection against an in-memory Lease API with optimistic concurrency.

Durations are small (lease 1 s, renew 0.5 s, retry 0.1 s). Tests that bound how long something takes run
on a fake clock (:func:`on_fake_clock`), so a loaded machine cannot stretch them; the others await their
conditions under ``anyio.fail_after`` deadlines and never sleep for them.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from controller.runtime.clock import Clock, FakeClock, SystemClock
from controller.runtime.errors import ConfigError
from controller.runtime.kube.errors import (
    AlreadyExists,
    Conflict,
    KubeError,
    NotFound,
    ServerError,
    TransportError,
)
from controller.runtime.leaderelection import LeaderElector, LeadershipLost
from controller.runtime.leaselock import (
    DEFAULT_LOCK_NAME,
    KubeLeaseApi,
    LeaderElectionConfig,
    LeaderElectionRecord,
    default_identity,
    micro_time,
)
from tests.harness import wait_for as harness_wait_for

__all__: list[str] = []

JsonObj = dict[str, Any]
NS = "ctl"
NAME = "lock"
LEASE = 1.0  # written as leaseDurationSeconds=1
RENEW = 0.5
RETRY = 0.1
SLACK = 0.2  # scheduling slack for real-time upper bounds
STEP = 0.01  # the fake clock's step
DEADLINE = 10.0  # real-time guard of a fake-clock test
MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


class LeaseStore:
    """The 'server': Lease objects with a global resourceVersion counter."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], JsonObj] = {}
        self._rv = 0
        # Called once (then cleared) just before the next replace is checked, to inject a racing write.
        self.before_replace: Callable[[], None] | None = None

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def lease(self, namespace: str = NS, name: str = NAME) -> JsonObj:
        return copy.deepcopy(self.objects[(namespace, name)])

    def spec(self) -> JsonObj:
        spec: JsonObj = self.lease()["spec"]
        return spec

    def get(self, namespace: str, name: str) -> JsonObj:
        obj = self.objects.get((namespace, name))
        if obj is None:
            raise NotFound(404, "NotFound", f'leases "{name}" not found')
        return copy.deepcopy(obj)

    def create(self, namespace: str, body: JsonObj) -> JsonObj:
        name = body["metadata"]["name"]
        if (namespace, name) in self.objects:
            raise AlreadyExists(409, "AlreadyExists", f'leases "{name}" already exists')
        stored = copy.deepcopy(body)
        stored["metadata"]["namespace"] = namespace
        stored["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[(namespace, name)] = stored
        return copy.deepcopy(stored)

    def replace(self, namespace: str, name: str, body: JsonObj) -> JsonObj:
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook()
        current = self.objects.get((namespace, name))
        if current is None:
            raise NotFound(404, "NotFound", f'leases "{name}" not found')
        sent_rv = body.get("metadata", {}).get("resourceVersion")
        if sent_rv != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "the object has been modified; please apply your changes")
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[(namespace, name)] = stored
        return copy.deepcopy(stored)

    def force_spec(self, **spec: Any) -> None:
        """A write by someone else (bumps resourceVersion)."""
        obj = self.objects[(NS, NAME)]
        obj["spec"].update(spec)
        obj["metadata"]["resourceVersion"] = self._next_rv()


class FakeLeaseApi:
    """One candidate's connection to a LeaseStore; it can fail, hang or add latency."""

    def __init__(self, store: LeaseStore | None = None) -> None:
        self.store = store or LeaseStore()
        self.fail: KubeError | None = None
        self.hang = False
        self.latency = 0.0
        self.calls: list[str] = []

    async def _gate(self, verb: str) -> None:
        self.calls.append(verb)
        if self.latency:
            await anyio.sleep(random.uniform(0, self.latency))
        else:
            await anyio.lowlevel.checkpoint()
        if self.hang:
            await anyio.sleep_forever()
        if self.fail is not None:
            raise self.fail

    async def get(self, namespace: str, name: str) -> JsonObj:
        await self._gate("get")
        return self.store.get(namespace, name)

    async def create(self, namespace: str, body: JsonObj) -> JsonObj:
        await self._gate("create")
        return self.store.create(namespace, body)

    async def replace(self, namespace: str, name: str, body: JsonObj) -> JsonObj:
        await self._gate("replace")
        return self.store.replace(namespace, name, body)


def config(identity: str, **overrides: Any) -> LeaderElectionConfig:
    values: dict[str, Any] = {
        "lock_namespace": NS,
        "lock_name": NAME,
        "identity": identity,
        "lease_duration": LEASE,
        "renew_deadline": RENEW,
        "retry_period": RETRY,
    }
    values.update(overrides)
    return LeaderElectionConfig(**values)


class Changes:
    """on_change recorder that also snapshots is_leader at the moment of the callback."""

    def __init__(self) -> None:
        self.events: list[tuple[bool, bool]] = []
        self.elector: LeaderElector | None = None

    def __call__(self, leading: bool) -> None:
        assert self.elector is not None
        self.events.append((leading, self.elector.is_leader))


class NowClock(SystemClock):
    """Real sleeps, but ``now`` from a test's hand: for the boundary tests that set the time outright."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


def elector(api: FakeLeaseApi, identity: str, **kw: Any) -> tuple[LeaderElector, Changes]:
    changes = Changes()
    given: Clock | Callable[[], float] | None = kw.pop("clock", None)
    clock: Clock
    if given is None:
        clock = SystemClock()
    elif isinstance(given, FakeClock | SystemClock):
        clock = given
    else:
        clock = NowClock(given)  # type: ignore[arg-type]
    e = LeaderElector(config(identity, **kw), api, clock=clock, on_change=changes)
    changes.elector = e
    return e, changes


def leading(e: LeaderElector) -> bool:
    """Reads is_leader without mypy narrowing it across clock changes."""
    return e.is_leader


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """The harness's wait_for, for a plain predicate."""
    async def holds() -> bool:
        return cond()
    await harness_wait_for(holds, timeout=timeout, interval=0.005)


async def on_fake_clock(clock: FakeClock, call: Callable[[], Awaitable[Any]], *, step: float = 0.01,
                        limit: float = 30.0) -> Any:
    """Runs ``call`` to its end, advancing ``clock`` by ``step`` each time every task is blocked."""
    result: list[Any] = []
    done = anyio.Event()

    async def run() -> None:
        try:
            result.append(await call())
        finally:
            done.set()

    started = clock.now()
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while not done.is_set():
                await anyio.wait_all_tasks_blocked()
                if done.is_set():
                    break
                assert clock.now() - started < limit, f"still running after {limit} fake seconds"
                clock.advance(step)
    return result[0] if result else None


async def expect_lost(call: Callable[[], Awaitable[None]]) -> LeadershipLost:
    try:
        await call()
    except LeadershipLost as exc:
        return exc
    raise AssertionError("LeadershipLost was not raised")


class TestConfig:
    def test_defaults_match_controller_runtime(self) -> None:
        cfg = LeaderElectionConfig(lock_namespace="ns")
        assert cfg.lock_name == DEFAULT_LOCK_NAME == "module-service-controller"
        assert (cfg.lease_duration, cfg.renew_deadline, cfg.retry_period) == (15.0, 10.0, 2.0)
        assert cfg.release_on_cancel is True
        assert cfg.request_timeout == 5.0
        assert cfg.lease_duration_seconds == 15

    def test_identity_is_hostname_and_uuid(self) -> None:
        a, b = default_identity(), default_identity()
        assert a != b
        assert re.fullmatch(r".+_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", a)
        assert LeaderElectionConfig(lock_namespace="ns").identity != LeaderElectionConfig("ns").identity

    def test_request_timeout_has_a_floor_and_duration_rounds_up(self) -> None:
        cfg = config("a")
        assert cfg.request_timeout == 1.0
        assert config("a", lease_duration=2.5, renew_deadline=2.0).lease_duration_seconds == 3

    @pytest.mark.parametrize(
        ("overrides", "message"),
        [
            ({"lease_duration": 10.0, "renew_deadline": 10.0}, "lease duration"),
            ({"lease_duration": 5.0, "renew_deadline": 8.0}, "lease duration"),
            ({"renew_deadline": 2.4, "retry_period": 2.0}, "renew deadline"),
            ({"renew_deadline": 2.0, "retry_period": 2.0}, "renew deadline"),
            ({"retry_period": 0.0}, "retry_period must be greater than zero"),
            ({"renew_deadline": -1.0}, "renew_deadline must be greater than zero"),
            ({"lease_duration": 0.0}, "lease_duration must be greater than zero"),
            ({"lock_namespace": ""}, "lock_namespace must not be empty"),
            ({"identity": ""}, "identity must not be empty"),
        ],
    )
    def test_invalid_settings_raise_config_error(self, overrides: dict[str, Any], message: str) -> None:
        values: dict[str, Any] = {"lock_namespace": "ns", **overrides}
        with pytest.raises(ConfigError, match=message):
            LeaderElectionConfig(**values)
        assert issubclass(ConfigError, ValueError)

    def test_boundary_just_above_jitter_is_accepted(self) -> None:
        LeaderElectionConfig(lock_namespace="ns", lease_duration=3.0, renew_deadline=2.41, retry_period=2.0)


class TestAcquire:
    @pytest.mark.asyncio
    async def test_creates_missing_lease_with_our_identity(self) -> None:
        api = FakeLeaseApi()
        a, changes = elector(api, "a")
        assert not leading(a)
        with anyio.fail_after(2):
            await a.acquire()
        assert a.is_leader
        assert changes.events == [(True, True)]
        assert api.calls == ["get", "create"]
        lease = api.store.lease()
        assert lease["apiVersion"] == "coordination.k8s.io/v1"
        assert lease["kind"] == "Lease"
        assert lease["metadata"]["name"] == NAME
        spec = lease["spec"]
        assert spec["holderIdentity"] == "a"
        assert spec["leaseDurationSeconds"] == 1
        assert isinstance(spec["leaseDurationSeconds"], int)
        assert spec["leaseTransitions"] == 0
        assert MICRO_TIME.match(spec["acquireTime"])
        assert spec["acquireTime"] == spec["renewTime"]
        assert LeaderElectionRecord.from_lease(lease).holder_identity == "a"

    @pytest.mark.asyncio
    async def test_second_candidate_cannot_acquire_while_lease_is_renewed(self) -> None:
        store = LeaseStore()
        a, _ = elector(FakeLeaseApi(store), "a")
        b_api = FakeLeaseApi(store)
        b, b_changes = elector(b_api, "b")
        await a.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.renew_loop)
            with anyio.move_on_after(LEASE * 1.8) as scope:
                await b.acquire()
            assert scope.cancelled_caught, "b acquired a lease that was being renewed"
            assert a.is_leader
            tg.cancel_scope.cancel()
        assert not b.is_leader
        assert b_changes.events == []
        assert b_api.calls.count("get") >= 5  # b kept polling
        assert "replace" not in b_api.calls
        assert store.spec()["holderIdentity"] == "a"

    @pytest.mark.asyncio
    async def test_takes_over_only_after_a_full_lease_duration_unchanged(self) -> None:
        store = LeaseStore()
        a, _ = elector(FakeLeaseApi(store), "a")
        b, _ = elector(FakeLeaseApi(store), "b")
        await a.acquire()  # and never renews: a crashed leader
        acquired_at = store.spec()["acquireTime"]
        started = anyio.current_time()
        with anyio.fail_after(LEASE + RETRY * 2.2 + 1.0):
            await b.acquire()
        elapsed = anyio.current_time() - started
        # b's first observation happened after `started`, so this is a lower bound on the wait.
        assert elapsed >= LEASE
        assert elapsed < LEASE + RETRY * (1 + 1.2) + SLACK
        spec = store.spec()
        assert spec["holderIdentity"] == "b"
        assert spec["leaseTransitions"] == 1
        assert spec["acquireTime"] != acquired_at
        assert spec["acquireTime"] == spec["renewTime"]
        assert not a.is_leader  # fenced by time: a's renew deadline passed long ago

    @pytest.mark.asyncio
    async def test_expiry_is_judged_from_local_observation_not_timestamps(self) -> None:
        now = [100.0]
        store = LeaseStore()
        store.create(NS, {
            "metadata": {"name": NAME},
            "spec": {
                "holderIdentity": "a",
                "leaseDurationSeconds": 1,
                "leaseTransitions": 4,
                # Written long ago by a clock far behind ours: must not make the lease look expired.
                "acquireTime": "2000-01-01T00:00:00.000000Z",
                "renewTime": "2000-01-01T00:00:00.000000Z",
            },
        })
        b_api = FakeLeaseApi(store)
        b, _ = elector(b_api, "b", clock=lambda: now[0])

        async def attempts(n: int) -> None:
            # The n-th GET has been issued and b is parked in its retry sleep again (not mid-attempt),
            # so the next clock change is seen only by the next attempt.
            await wait_for(lambda: b_api.calls.count("get") == n)
            await anyio.wait_all_tasks_blocked()

        async with anyio.create_task_group() as tg:
            tg.start_soon(b.acquire)
            await attempts(1)
            now[0] = 100.99  # just short of observation + 1 s
            await attempts(2)
            assert not b.is_leader
            store.force_spec(renewTime="2000-01-01T00:00:01.000000Z")  # the holder renewed
            now[0] = 101.5
            await attempts(3)
            assert not b.is_leader  # the change restarted the expiry clock at 101.5
            now[0] = 102.5  # 101.5 + 1: expired
            await wait_for(lambda: b.is_leader)
            tg.cancel_scope.cancel()
        spec = store.spec()
        assert spec["holderIdentity"] == "b"
        assert spec["leaseTransitions"] == 5

    @pytest.mark.asyncio
    async def test_released_lease_is_taken_at_once(self) -> None:
        store = LeaseStore()
        a, _ = elector(FakeLeaseApi(store), "a")
        b, _ = elector(FakeLeaseApi(store), "b")
        await a.acquire()
        await a.release()
        started = anyio.current_time()
        with anyio.fail_after(RETRY):  # the first attempt must succeed
            await b.acquire()
        assert anyio.current_time() - started < RETRY
        spec = store.spec()
        assert spec["holderIdentity"] == "b"
        assert spec["leaseTransitions"] == 1
        assert spec["leaseDurationSeconds"] == 1

    @pytest.mark.asyncio
    async def test_conflicting_write_during_takeover_fails_the_attempt(self) -> None:
        store = LeaseStore()
        released = {"holderIdentity": "", "leaseDurationSeconds": 1}
        store.create(NS, {"metadata": {"name": NAME}, "spec": released})
        b_api = FakeLeaseApi(store)
        b, b_changes = elector(b_api, "b")
        # c writes between b's GET and b's PUT.
        store.before_replace = lambda: store.force_spec(holderIdentity="c", leaseTransitions=1)
        with anyio.move_on_after(RETRY * 3):
            await b.acquire()
        assert not b.is_leader
        assert b_changes.events == []
        assert b_api.calls[:2] == ["get", "replace"]
        assert store.spec()["holderIdentity"] == "c"

    @pytest.mark.asyncio
    async def test_racing_creates_produce_one_leader(self) -> None:
        store = LeaseStore()
        apis = [FakeLeaseApi(store) for _ in range(2)]
        for api in apis:
            api.latency = 0.01
        a, _ = elector(apis[0], "a")
        b, _ = elector(apis[1], "b")
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.acquire)
            tg.start_soon(b.acquire)
            await wait_for(lambda: a.is_leader or b.is_leader)
            with anyio.move_on_after(RETRY * 3):  # well inside the renew deadline: nobody renews
                while True:
                    assert a.is_leader != b.is_leader
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
        assert store.spec()["holderIdentity"] in {"a", "b"}
        assert store.spec()["leaseTransitions"] == 0


class TestRenew:
    @pytest.mark.asyncio
    async def test_renew_bumps_renew_time_and_keeps_term(self) -> None:
        api = FakeLeaseApi()
        a, _ = elector(api, "a")
        await a.acquire()
        before = api.store.spec()
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.renew_loop)
            await wait_for(lambda: api.store.spec()["renewTime"] != before["renewTime"])
            await wait_for(lambda: api.calls.count("replace") >= 3)
            assert a.is_leader
            tg.cancel_scope.cancel()
        after = api.store.spec()
        assert after["holderIdentity"] == "a"
        assert after["acquireTime"] == before["acquireTime"]
        assert after["leaseTransitions"] == before["leaseTransitions"] == 0
        assert after["renewTime"] > before["renewTime"]
        assert "get" not in api.calls[2:]  # renewals use the fast path

    @pytest.mark.asyncio
    async def test_renew_loop_requires_leadership(self) -> None:
        a, _ = elector(FakeLeaseApi(), "a")
        with pytest.raises(RuntimeError, match="acquire"):
            await a.renew_loop()

    @pytest.mark.asyncio
    @pytest.mark.parametrize("mode", ["error", "hang"])
    async def test_failing_renew_loses_leadership_within_deadline(self, mode: str) -> None:
        clock = FakeClock()
        api = FakeLeaseApi()
        a, changes = elector(api, "a", clock=clock)
        await a.acquire()
        broke_at: list[float] = []

        async def renew_until_broken() -> LeadershipLost:
            async with anyio.create_task_group() as tg:
                tg.start_soon(break_api)
                lost = await expect_lost(a.renew_loop)
                tg.cancel_scope.cancel()
            return lost

        async def break_api() -> None:
            while api.calls.count("replace") < 2:  # some successful renewals first
                await clock.sleep(STEP)
            broke_at.append(clock.now())
            if mode == "error":
                api.fail = ServerError(500, "InternalError", "etcd unavailable")
            else:
                api.hang = True

        lost = await on_fake_clock(clock, renew_until_broken, step=STEP)
        elapsed = clock.now() - broke_at[0]
        assert lost.reason == "renew_deadline_exceeded"
        assert RENEW - RETRY - STEP <= elapsed <= RENEW + STEP
        assert not a.is_leader
        # on_change(False) ran before the exception, and is_leader was already False inside it.
        assert changes.events == [(True, True), (False, False)]

    @pytest.mark.asyncio
    async def test_hung_request_is_cut_at_the_deadline_not_the_request_timeout(self) -> None:
        clock = FakeClock()
        api = FakeLeaseApi()
        a, _ = elector(api, "a", lease_duration=5.0, renew_deadline=0.3, retry_period=0.1, clock=clock)
        assert a.config.request_timeout == 1.0 > a.config.renew_deadline
        await a.acquire()
        api.hang = True
        started = clock.now()
        lost = await on_fake_clock(clock, lambda: expect_lost(a.renew_loop), step=STEP)
        assert lost.reason == "renew_deadline_exceeded"
        assert clock.now() - started <= 0.3 + STEP

    @pytest.mark.asyncio
    async def test_is_leader_is_fenced_by_time_even_without_renew_loop(self) -> None:
        now = [10.0]
        a, changes = elector(FakeLeaseApi(), "a", clock=lambda: now[0])
        await a.acquire()
        assert a.is_leader
        now[0] = 10.0 + RENEW - 0.01
        assert leading(a)
        now[0] = 10.0 + RENEW
        assert not leading(a)
        assert changes.events == [(True, True)]  # no callback until the loop notices
        with anyio.fail_after(1.0):
            lost = await expect_lost(a.renew_loop)
        assert lost.reason == "renew_deadline_exceeded"
        assert changes.events == [(True, True), (False, False)]

    @pytest.mark.asyncio
    async def test_someone_else_writing_the_lease_ends_leadership(self) -> None:
        clock = FakeClock()
        api = FakeLeaseApi()
        a, changes = elector(api, "a", clock=clock)
        await a.acquire()
        api.store.force_spec(holderIdentity="intruder", leaseTransitions=1)
        started = clock.now()
        lost = await on_fake_clock(clock, lambda: expect_lost(a.renew_loop), step=STEP)
        assert lost.reason == "held_by_other"
        assert clock.now() - started <= RETRY + STEP  # the first renew, not the deadline
        assert not a.is_leader
        assert changes.events[-1] == (False, False)
        assert api.calls[-2:] == ["replace", "get"]  # 409 on the fast path, then the slow path read
        assert api.store.spec()["holderIdentity"] == "intruder"  # never clobbered

    @pytest.mark.asyncio
    async def test_unrelated_conflict_is_recovered_by_the_slow_path(self) -> None:
        api = FakeLeaseApi()
        a, _ = elector(api, "a")
        await a.acquire()
        api.store.force_spec()  # same holder, new resourceVersion (e.g. a label edit)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.renew_loop)
            await wait_for(lambda: api.calls.count("get") == 2 and api.calls[-1] == "replace")
            await wait_for(lambda: api.calls.count("replace") >= 4)
            assert a.is_leader
            tg.cancel_scope.cancel()
        assert api.store.spec()["holderIdentity"] == "a"
        assert api.store.spec()["leaseTransitions"] == 0

    @pytest.mark.asyncio
    async def test_health_check_fails_for_a_wedged_leader(self) -> None:
        now = [0.0]
        a, _ = elector(FakeLeaseApi(), "a", clock=lambda: now[0])
        assert a.healthy(max_tolerable_expired=0.5)
        await a.acquire()
        now[0] = LEASE + 0.5
        assert a.healthy(max_tolerable_expired=0.5)
        now[0] = LEASE + 0.51
        assert not a.healthy(max_tolerable_expired=0.5)
        assert a.healthy()  # default tolerance: 20 s

    @pytest.mark.asyncio
    async def test_standby_is_always_healthy(self) -> None:
        now = [0.0]
        store = LeaseStore()
        a, _ = elector(FakeLeaseApi(store), "a")
        await a.acquire()
        b_api = FakeLeaseApi(store)
        b, _ = elector(b_api, "b", clock=lambda: now[0])
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.acquire)
            await wait_for(lambda: "get" in b_api.calls)  # b has read a's lease
            tg.cancel_scope.cancel()
        assert not b.is_leader
        now[0] = 1000.0
        assert b.healthy(max_tolerable_expired=0.0)


class TestRelease:
    @pytest.mark.asyncio
    async def test_release_clears_holder_and_shortens_lease(self) -> None:
        api = FakeLeaseApi()
        a, changes = elector(api, "a")
        await a.acquire()
        api.store.force_spec(leaseTransitions=3)  # keep the count, whatever it is
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.renew_loop)
            await wait_for(lambda: api.calls.count("get") >= 2 and api.calls[-1] == "replace")
            tg.cancel_scope.cancel()
        await a.release()
        spec = api.store.spec()
        assert spec["holderIdentity"] == ""
        assert spec["leaseDurationSeconds"] == 1
        assert spec["leaseTransitions"] == 3
        assert MICRO_TIME.match(spec["acquireTime"])
        assert spec["acquireTime"] == spec["renewTime"]
        assert not a.is_leader
        assert changes.events == [(True, True), (False, False)]
        assert a.healthy(max_tolerable_expired=0.0)

    @pytest.mark.asyncio
    async def test_release_without_holding_writes_nothing(self) -> None:
        store = LeaseStore()
        a, _ = elector(FakeLeaseApi(store), "a")
        b_api = FakeLeaseApi(store)
        b, b_changes = elector(b_api, "b")
        await b.release()  # never observed anything
        await a.acquire()
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.acquire)
            await wait_for(lambda: "get" in b_api.calls)  # b has read a's lease
            tg.cancel_scope.cancel()
        assert "get" in b_api.calls
        calls = len(b_api.calls)
        await b.release()
        assert len(b_api.calls) == calls
        assert store.spec()["holderIdentity"] == "a"
        assert b_changes.events == []

    @pytest.mark.asyncio
    async def test_release_does_not_clobber_a_new_holder(self) -> None:
        api = FakeLeaseApi()
        a, _ = elector(api, "a")
        await a.acquire()
        api.store.force_spec(holderIdentity="b", leaseTransitions=1)
        await a.release()
        assert api.calls[-2:] == ["replace", "get"]
        assert api.store.spec()["holderIdentity"] == "b"
        assert not a.is_leader

    @pytest.mark.asyncio
    async def test_release_retries_once_after_a_stale_resource_version(self) -> None:
        api = FakeLeaseApi()
        a, _ = elector(api, "a")
        await a.acquire()
        api.store.force_spec()  # still ours, but our cached resourceVersion is stale
        await a.release()
        assert api.calls[-3:] == ["replace", "get", "replace"]
        assert api.store.spec()["holderIdentity"] == ""

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        "failure",
        [
            NotFound(404, "NotFound", "gone"),
            TransportError("connection refused"),
            ServerError(503, "ServiceUnavailable", ""),
        ],
    )
    async def test_release_swallows_errors(self, failure: KubeError) -> None:
        api = FakeLeaseApi()
        a, _ = elector(api, "a")
        await a.acquire()
        api.fail = failure
        await a.release()
        assert not a.is_leader

    @pytest.mark.asyncio
    async def test_release_is_bounded_and_shielded(self) -> None:
        clock = FakeClock()
        api = FakeLeaseApi()
        a, _ = elector(api, "a", clock=clock)
        await a.acquire()
        api.hang = True
        started = clock.now()

        async def release_while_cancelled() -> None:
            with anyio.CancelScope() as outer:
                outer.cancel()  # release is called during cancellation, as in a finally block
                await a.release()

        await on_fake_clock(clock, release_while_cancelled, step=STEP)
        assert RENEW - STEP <= clock.now() - started <= RENEW + STEP
        assert not a.is_leader
        assert api.calls[-1] == "replace"  # it did try (and the hung request was cut off)


class TestRun:
    @pytest.mark.asyncio
    async def test_run_releases_after_work_finishes(self) -> None:
        api = FakeLeaseApi()
        a, changes = elector(api, "a")
        seen: list[bool] = []

        async def work() -> None:
            seen.append(a.is_leader)
            await wait_for(lambda: api.calls.count("replace") >= 2)
            seen.append(a.is_leader)

        await a.run(work)
        assert seen == [True, True]
        assert api.store.spec()["holderIdentity"] == ""
        assert changes.events == [(True, True), (False, False)]

    @pytest.mark.asyncio
    async def test_lost_lease_cancels_work_before_release(self) -> None:
        api = FakeLeaseApi()
        a, _ = elector(api, "a")
        order: list[str] = []

        async def work() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                order.append(f"work_cancelled leader={a.is_leader}")

        async def break_api() -> None:
            await wait_for(lambda: a.is_leader)
            api.fail = ServerError(500, "InternalError", "")

        with pytest.raises(ExceptionGroup) as excinfo:  # noqa: PT012
            async with anyio.create_task_group() as tg:
                tg.start_soon(break_api)
                await a.run(work)
        assert excinfo.group_contains(LeadershipLost)
        assert order == ["work_cancelled leader=False"]

    @pytest.mark.asyncio
    async def test_logs_lifecycle_events(self) -> None:
        with capture_logs() as logs:
            api = FakeLeaseApi()
            a, _ = elector(api, "a")
            await a.acquire()
            api.fail = ServerError(500, "InternalError", "")
            with anyio.fail_after(RENEW + 1.0):
                await expect_lost(a.renew_loop)
            api.fail = None
            await a.release()
        events = [e["event"] for e in logs if e["event"].startswith("lease_")]
        assert events[0] == "lease_acquired"
        assert "lease_renew_failed" in events
        assert events[-2:] == ["lease_lost", "lease_released"]
        for entry in logs:
            assert entry["lease"] == f"{NS}/{NAME}"
            assert entry["identity"] == "a"


class TestRace:
    @pytest.mark.asyncio
    async def test_never_two_leaders_under_partitions_and_handovers(self) -> None:
        rng = random.Random(1234)
        store = LeaseStore()
        apis = {name: FakeLeaseApi(store) for name in ("a", "b")}
        for api in apis.values():
            api.latency = 0.01
        leaders: set[str] = set()
        overlaps: list[set[str]] = []

        def tracker(name: str) -> Callable[[bool], None]:
            def on_change(leading: bool) -> None:
                if leading:
                    if leaders:
                        overlaps.append({*leaders, name})
                    leaders.add(name)
                else:
                    leaders.discard(name)
            return on_change

        electors = {
            name: LeaderElector(config(name), api, on_change=tracker(name)) for name, api in apis.items()
        }
        terms: list[str] = []
        losses: list[str] = []
        samples = 0

        async def campaign(name: str) -> None:
            e = electors[name]
            while True:
                await e.acquire()
                terms.append(name)
                try:
                    with anyio.move_on_after(rng.uniform(0.5, 2.5)):
                        await e.renew_loop()
                except LeadershipLost:
                    losses.append(name)
                    continue
                await e.release()
                await anyio.sleep(rng.uniform(0.0, 0.3))  # pacing, not synchronisation

        async def chaos() -> None:
            while True:
                await anyio.sleep(rng.uniform(0.3, 0.9))
                # Mostly cut off the current leader: that is the dangerous case.
                current = [n for n, e in electors.items() if e.is_leader]
                api = apis[current[0] if current and rng.random() < 0.8 else rng.choice(["a", "b"])]
                if rng.random() < 0.5:
                    api.hang = True
                else:
                    api.fail = TransportError("partitioned")
                await anyio.sleep(rng.uniform(0.6, 1.4))
                api.hang, api.fail = False, None

        async with anyio.create_task_group() as tg:
            for name in electors:
                tg.start_soon(campaign, name)
            tg.start_soon(chaos)
            with anyio.move_on_after(7.0):
                while True:
                    current = [n for n, e in electors.items() if e.is_leader]
                    assert len(current) <= 1, f"two leaders: {current}"
                    samples += 1
                    await anyio.sleep(0.002)
            tg.cancel_scope.cancel()

        assert overlaps == []
        assert samples > 500
        assert len(terms) >= 4
        assert set(terms) == {"a", "b"}  # handovers happened both ways
        assert losses  # and at least one leader was cut off by a partition


class TestKubeLeaseApi:
    @pytest.mark.asyncio
    async def test_requests(self) -> None:
        sent: list[tuple[str, str, Any, float | None]] = []

        class Client:
            async def request(
                self, method: str, path: str, *, body: Any = None, timeout: float | None = None
            ) -> JsonObj:
                sent.append((method, path, body, timeout))
                return {"ok": True}

        api = KubeLeaseApi(Client(), timeout=config("a").request_timeout)
        body: JsonObj = {"metadata": {"name": NAME, "resourceVersion": "7"}}
        assert await api.get(NS, NAME) == {"ok": True}
        await api.create(NS, body)
        await api.replace(NS, NAME, body)
        base = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
        assert sent == [
            ("GET", f"{base}/{NAME}", None, 1.0),
            ("POST", base, body, 1.0),
            ("PUT", f"{base}/{NAME}", body, 1.0),
        ]

    def test_micro_time_format(self) -> None:
        assert MICRO_TIME.match(micro_time())
