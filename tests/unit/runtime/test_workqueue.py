"""Unit tests for controller.runtime.workqueue: client-go workqueue semantics on a fake clock, no real sleeps."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
import pytest

from controller.runtime.clock import FakeClock
from controller.runtime.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    ShutDown,
    WorkQueue,
)

__all__: list[str] = []

DEADLINE = 5.0  # real-time guard only; progress is driven by the fake clock and anyio primitives


class RecordingMetrics:
    def __init__(self) -> None:
        self.adds = 0
        self.retries = 0
        self.depths: list[int] = []
        self.latencies: list[float] = []
        self.durations: list[float] = []
        self.unfinished_reports: list[tuple[float, float]] = []

    def add(self) -> None:
        self.adds += 1

    def depth(self, value: int) -> None:
        self.depths.append(value)

    def queue_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)

    def work_duration(self, seconds: float) -> None:
        self.durations.append(seconds)

    def retry(self) -> None:
        self.retries += 1

    def unfinished(self, unfinished_seconds: float, longest_seconds: float) -> None:
        self.unfinished_reports.append((unfinished_seconds, longest_seconds))


async def settle() -> None:
    """Let every other task run until it blocks (e.g. after advancing the fake clock)."""
    await anyio.wait_all_tasks_blocked()


@asynccontextmanager
async def running(queue: WorkQueue[str]) -> AsyncIterator[None]:
    """Run the queue's delay loop like an owner would, shutting the queue down on exit."""
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            await tg.start(queue.run)
            try:
                yield
            finally:
                queue.shutdown()


class TestWorkQueue:
    @pytest.mark.asyncio
    async def test_dedup(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        for item in ("a", "b", "a", "a", "b"):
            q.add(item)
        assert len(q) == 2
        with anyio.fail_after(DEADLINE):
            assert [await q.get(), await q.get()] == ["a", "b"]  # fair: FIFO
        assert q.statistics().adds == 2

    @pytest.mark.asyncio
    async def test_idle_for_counts_from_the_last_add_or_done(self) -> None:
        clock = FakeClock(100.0)
        q: WorkQueue[str] = WorkQueue(clock=clock)
        assert q.idle_for() == float("inf")  # never busy
        q.add("a")
        clock.advance(5)
        assert q.idle_for() == 0.0  # an item is ready
        assert await q.get() == "a"
        assert q.handed_out_added_at("a") == 100.0
        clock.advance(5)
        assert q.idle_for() == 0.0  # an item is in processing
        q.done("a")
        assert q.handed_out_added_at("a") is None
        clock.advance(0.25)
        assert q.idle_for() == 0.25
        q.add("b")  # a burst goes on: idle again only after it
        assert await q.get() == "b"
        q.done("b")
        clock.advance(0.1)
        assert q.idle_for() == pytest.approx(0.1)

    @pytest.mark.asyncio
    async def test_handed_out_added_at_is_the_first_add_not_a_readd(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        q.add("a")
        clock.advance(1)
        q.add("a")  # deduplicated: still added at 0
        assert await q.get() == "a"
        clock.advance(1)
        q.add("a")  # re-added while processing: a new item, added at 2
        assert q.handed_out_added_at("a") == 0.0
        q.done("a")
        assert await q.get() == "a"
        assert q.handed_out_added_at("a") == 2.0

    @pytest.mark.asyncio
    async def test_key_never_processed_by_two_workers(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        got: list[str] = []

        async def second_worker() -> None:
            got.append(await q.get())

        q.add("a")
        with anyio.fail_after(DEADLINE):
            assert await q.get() == "a"
            q.add("a")  # re-added while processing: parked, not queued
            assert len(q) == 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(second_worker)
                await settle()
                assert got == []
                q.done("a")
        assert got == ["a"]

    @pytest.mark.asyncio
    async def test_add_during_processing_reruns_exactly_once_after_done(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        q.add("a")
        with anyio.fail_after(DEADLINE):
            item = await q.get()
            for _ in range(3):
                q.add(item)
            assert q.statistics().depth == 1
            q.done(item)
            assert len(q) == 1
            assert await q.get() == "a"
            q.done("a")
        assert len(q) == 0
        assert q.statistics().processing == 0

    @pytest.mark.asyncio
    async def test_done_of_unknown_item_is_ignored(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        q.add("a")
        q.done("a")  # never handed out: must not queue "a" a second time
        assert len(q) == 1

    @pytest.mark.asyncio
    async def test_add_after_becomes_ready_only_after_advancing_clock(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        async with running(q):
            q.add_after("a", 1.0)
            await settle()
            assert (len(q), q.statistics().waiting) == (0, 1)
            clock.advance(0.999)
            await settle()
            assert len(q) == 0
            clock.advance(0.001)
            await settle()
            assert (len(q), q.statistics().waiting) == (1, 0)
            assert await q.get() == "a"

    @pytest.mark.asyncio
    async def test_add_after_earlier_item_rearms_timer(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        async with running(q):
            q.add_after("late", 10.0)
            await settle()  # run() now sleeps until t=10
            q.add_after("early", 2.0)
            clock.advance(2.0)
            await settle()
            assert len(q) == 1
            assert await q.get() == "early"
            clock.advance(8.0)
            await settle()
            assert await q.get() == "late"

    @pytest.mark.asyncio
    async def test_add_after_keeps_earliest_ready_time(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        async with running(q):
            q.add_after("a", 10.0)
            q.add_after("a", 5.0)
            q.add_after("a", 20.0)
            assert q.statistics().waiting == 1
            clock.advance(5.0)
            await settle()
            assert len(q) == 1
            assert await q.get() == "a"
            q.done("a")
            clock.advance(20.0)  # the superseded 10 s / 20 s entries must not fire again
            await settle()
            assert len(q) == 0
        assert q.statistics().adds == 1

    @pytest.mark.asyncio
    async def test_add_after_added_before_run_starts_is_released(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        q.add_after("a", 1.0)
        clock.advance(1.0)
        async with running(q):
            await settle()
            assert len(q) == 1

    @pytest.mark.asyncio
    async def test_add_after_non_positive_delay_adds_now_without_retry(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        q.add_after("a", 0.0)
        q.add_after("b", -1.0)
        assert len(q) == 2
        assert q.statistics().retries == 0

    @pytest.mark.asyncio
    async def test_add_rate_limited_uses_limiter_and_forget_resets(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        async with running(q):
            for expected in (1, 2, 3):
                q.add_rate_limited("a")
                assert q.num_requeues("a") == expected
            await settle()
            clock.advance(0.005)  # first failure's delay; the later, longer ones are superseded
            await settle()
            assert len(q) == 1
            q.forget("a")
            assert q.num_requeues("a") == 0

    @pytest.mark.asyncio
    async def test_shutdown_drains_queued_items_then_raises(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        q.add("a")
        q.add("b")
        q.shutdown()
        q.add("c")  # ignored after shutdown
        q.add_after("d", 0.0)
        with anyio.fail_after(DEADLINE):
            assert await q.get() == "a"
            assert await q.get() == "b"
            with pytest.raises(ShutDown):
                await q.get()

    @pytest.mark.asyncio
    async def test_shutdown_wakes_all_blocked_getters(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        raised: list[int] = []

        async def getter(n: int) -> None:
            with pytest.raises(ShutDown):
                await q.get()
            raised.append(n)

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                for n in range(3):
                    tg.start_soon(getter, n)
                await settle()
                q.shutdown()
        assert sorted(raised) == [0, 1, 2]

    @pytest.mark.asyncio
    async def test_shutdown_drops_waiting_items_and_stops_run(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        async with running(q):
            q.add_after("a", 1.0)
        assert q.statistics().waiting == 0
        clock.advance(2.0)
        assert len(q) == 0

    @pytest.mark.asyncio
    async def test_shutdown_with_drain_waits_for_in_flight_done(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        q.add("a")
        q.add("b")
        drained = anyio.Event()

        async def drain() -> None:
            await q.shutdown_with_drain()
            drained.set()

        with anyio.fail_after(DEADLINE):
            a, b = await q.get(), await q.get()
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain)
                await settle()
                assert not drained.is_set()
                q.done(a)
                await settle()
                assert not drained.is_set()
                q.done(b)
        assert drained.is_set()

    @pytest.mark.asyncio
    async def test_cancelled_getter_passes_its_wakeup_on(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        got: list[str] = []

        async def getter(scope: anyio.CancelScope) -> None:
            with scope:
                got.append(await q.get())

        first, second = anyio.CancelScope(), anyio.CancelScope()
        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(getter, first)
                await settle()
                tg.start_soon(getter, second)
                await settle()
                q.add("a")  # signals the first getter ...
                first.cancel()  # ... which is cancelled before it runs: the item must not be stranded
                await settle()
                assert got == ["a"]
                assert len(q) == 0
                second.cancel()

    @pytest.mark.asyncio
    async def test_metrics_hook_counts(self) -> None:
        clock = FakeClock()
        metrics = RecordingMetrics()
        q: WorkQueue[str] = WorkQueue(clock=clock, metrics=metrics)
        async with running(q):
            q.add("a")
            q.add("a")  # dedup: no add metric
            q.add("b")
            assert metrics.adds == 2
            assert metrics.depths == [1, 2]
            clock.advance(3.0)
            assert await q.get() == "a"
            assert metrics.depths[-1] == 1
            assert metrics.latencies == [3.0]
            clock.advance(2.0)
            q.done("a")
            assert metrics.durations == [2.0]
            q.add_after("c", 0.0)  # delay <= 0: an add, not a retry
            q.add_after("c", 1.0)
            q.add_rate_limited("d")
            assert metrics.retries == 2
            assert q.statistics().retries == 2
            assert metrics.adds == 3
            clock.advance(1.0)  # "d" becomes ready -> an add; "c" is still queued -> deduplicated
            await settle()
            assert metrics.adds == 4
            clock.advance(1.0)
            assert [await q.get(), await q.get(), await q.get()] == ["b", "c", "d"]
            # Latency counts from the first add ("c", at 5) or from becoming ready ("d", at 6).
            assert sorted(metrics.latencies[-2:]) == [1.0, 2.0]

    @pytest.mark.asyncio
    async def test_update_unfinished_reports_sum_and_longest_age(self) -> None:
        clock = FakeClock()
        metrics = RecordingMetrics()
        q: WorkQueue[str] = WorkQueue(clock=clock, metrics=metrics)
        q.update_unfinished()
        assert metrics.unfinished_reports == [(0.0, 0.0)]
        with anyio.fail_after(DEADLINE):
            q.add("a")
            await q.get()
            clock.advance(3.0)
            q.add("b")
            await q.get()
            clock.advance(1.0)
            q.update_unfinished()
            assert metrics.unfinished_reports[-1] == (5.0, 4.0)
            q.done("a")
            q.update_unfinished()
            assert metrics.unfinished_reports[-1] == (1.0, 1.0)

    @pytest.mark.asyncio
    async def test_statistics(self) -> None:
        q: WorkQueue[str] = WorkQueue(clock=FakeClock())
        q.add("a")
        q.add("b")
        q.add_after("c", 5.0)
        with anyio.fail_after(DEADLINE):
            await q.get()
        stats = q.statistics()
        assert (stats.depth, stats.ready, stats.waiting, stats.processing) == (1, 1, 1, 1)
        assert (stats.adds, stats.retries) == (2, 1)

    @pytest.mark.asyncio
    async def test_stress_no_concurrent_processing_and_no_lost_add(self) -> None:
        clock = FakeClock()
        q: WorkQueue[str] = WorkQueue(clock=clock)
        keys = [f"k{i}" for i in range(6)]
        versions = dict.fromkeys(keys, 0)  # bumped before every add
        processed: dict[str, int] = {}  # version current at the last get of each key
        in_flight: set[str] = set()
        max_in_flight = 0

        async def producer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(200):
                key = rng.choice(keys)
                versions[key] += 1
                if rng.random() < 0.1:
                    q.add_rate_limited(key)
                else:
                    q.add(key)
                for _ in range(rng.randint(0, 2)):
                    await anyio.lowlevel.checkpoint()

        async def ticker() -> None:
            for _ in range(500):
                clock.advance(0.003)
                await anyio.lowlevel.checkpoint()

        async def worker(seed: int) -> None:
            nonlocal max_in_flight
            rng = random.Random(seed)
            while True:
                try:
                    key = await q.get()
                except ShutDown:
                    return
                assert key not in in_flight, f"{key} processed by two workers"
                in_flight.add(key)
                max_in_flight = max(max_in_flight, len(in_flight))
                processed[key] = versions[key]
                for _ in range(rng.randint(0, 3)):
                    await anyio.lowlevel.checkpoint()
                in_flight.discard(key)
                if rng.random() < 0.5:
                    q.forget(key)
                q.done(key)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                await tg.start(q.run)
                for n in range(6):
                    tg.start_soon(worker, n)
                async with anyio.create_task_group() as producers:
                    producers.start_soon(ticker)
                    for n in range(20):
                        producers.start_soon(producer, 1000 + n)
                clock.advance(1001.0)  # beyond the limiter cap: every delayed add is now due
                await settle()
                assert q.statistics().waiting == 0
                await q.shutdown_with_drain()

        assert processed == versions
        assert max_in_flight > 1
        assert q.statistics().processing == 0
        assert len(q) == 0


class TestRateLimiters:
    def test_item_exponential_sequence_cap_and_forget(self) -> None:
        limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter()
        delays = [limiter.when("a") for _ in range(20)]
        assert delays[:4] == pytest.approx([0.005, 0.010, 0.020, 0.040])
        assert delays[10] == pytest.approx(5.12)
        assert delays[18] == 1000.0  # 0.005 * 2**18 = 1310.72 s -> capped
        assert limiter.num_requeues("a") == 20
        assert limiter.when("b") == pytest.approx(0.005)  # per item
        limiter.forget("a")
        assert limiter.num_requeues("a") == 0
        assert limiter.when("a") == pytest.approx(0.005)

    def test_item_exponential_overflow_is_capped(self) -> None:
        limiter: ItemExponentialFailureRateLimiter[str] = ItemExponentialFailureRateLimiter()
        for _ in range(1100):  # 2.0**1024 overflows a float
            delay = limiter.when("a")
        assert delay == 1000.0

    def test_bucket_allows_burst_then_paces(self) -> None:
        clock = FakeClock()
        bucket: BucketRateLimiter[str] = BucketRateLimiter(qps=10.0, burst=2, clock=clock)
        assert [bucket.when("x") for _ in range(4)] == pytest.approx([0.0, 0.0, 0.1, 0.2])
        clock.advance(1.0)
        assert bucket.when("x") == 0.0

    def test_max_of_takes_worst_delay(self) -> None:
        clock = FakeClock()
        limiter: MaxOfRateLimiter[str] = MaxOfRateLimiter(
            ItemExponentialFailureRateLimiter(), BucketRateLimiter(qps=10.0, burst=1, clock=clock)
        )
        assert limiter.when("a") == pytest.approx(0.005)
        assert limiter.when("a") == pytest.approx(0.1)
        assert limiter.num_requeues("a") == 2
        limiter.forget("a")
        assert limiter.num_requeues("a") == 0


@pytest.mark.asyncio
async def test_prioritize_moves_the_urgent_items_first_keeping_each_groups_order() -> None:
    q: WorkQueue[int] = WorkQueue()
    for i in range(10):
        q.add(i)
    assert q.prioritize(lambda i: i % 3 == 0) == 4
    assert q.prioritize(lambda i: i > 100) == 0
    assert [await q.get() for _ in range(10)] == [0, 3, 6, 9, 1, 2, 4, 5, 7, 8]
