"""Rate-limited, delaying work queue with client-go semantics on one anyio event loop.

Contract (mirrors client-go ``util/workqueue`` queue.go, delaying_queue.go, rate_limiting_queue.go):

* Fair: ready items are handed out in the order they were (first) added.
* Stingy: an item added several times before it is processed is processed once (``dirty`` set).
* Multiple producers and consumers: ``add`` is synchronous; any number of tasks may ``await get()``.
  An item is never handed to two consumers at once: an item re-added while in ``processing`` is
  parked in ``dirty`` and queued again by ``done``, so re-adds collapse into a single rerun.
* Shutdown: ``shutdown()`` stops accepting adds (delayed items still waiting are dropped); ``get``
  keeps returning queued items and raises :class:`ShutDown` once the queue is empty.
  ``shutdown_with_drain()`` additionally waits until every in-flight item is ``done``.

Delayed items (``add_after``/``add_rate_limited``) only become ready while :meth:`WorkQueue.run` is
running: the owner starts it in its task group (``await tg.start(queue.run)``); it returns on shutdown.
No threads and no locks: every method must be called from the event loop that runs ``run``.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel

from .clock import SYSTEM_CLOCK, Clock

__all__ = [
    "BucketRateLimiter",
    "ItemExponentialFailureRateLimiter",
    "MaxOfRateLimiter",
    "NoopQueueMetrics",
    "QueueMetrics",
    "QueueStatistics",
    "RateLimiter",
    "ShutDown",
    "WorkQueue",
]

T = TypeVar("T", bound=Hashable)
T_contra = TypeVar("T_contra", bound=Hashable, contravariant=True)


class ShutDown(Exception):  # named after client-go's shutdown flag returned by Get
    """Raised by :meth:`WorkQueue.get` once the queue is shut down and empty."""


class QueueMetrics(Protocol):
    def add(self) -> None: ...  # a non-deduplicated add (workqueue_adds_total)
    def depth(self, value: int) -> None: ...  # current depth (workqueue_depth)
    def queue_latency(self, seconds: float) -> None: ...  # first add (or becoming ready) -> get
    def work_duration(self, seconds: float) -> None: ...  # get -> done
    def retry(self) -> None: ...  # add_after with delay > 0 (workqueue_retries_total)
    def unfinished(self, unfinished_seconds: float, longest_seconds: float) -> None: ...


class NoopQueueMetrics:
    def add(self) -> None: pass
    def depth(self, value: int) -> None: pass
    def queue_latency(self, seconds: float) -> None: pass
    def work_duration(self, seconds: float) -> None: pass
    def retry(self) -> None: pass
    def unfinished(self, unfinished_seconds: float, longest_seconds: float) -> None: pass


class RateLimiter(Protocol[T_contra]):
    def when(self, item: T_contra) -> float: ...  # delay in seconds; counts a failure
    def forget(self, item: T_contra) -> None: ...
    def num_requeues(self, item: T_contra) -> int: ...


class ItemExponentialFailureRateLimiter(Generic[T]):
    """``base * 2**failures`` per item, capped (client-go ItemExponentialFailureRateLimiter)."""

    def __init__(self, base: float = 0.005, cap: float = 1000.0) -> None:
        self.base, self.cap = base, cap
        self._failures: dict[T, int] = {}

    def when(self, item: T) -> float:
        exp = self._failures.get(item, 0)
        self._failures[item] = exp + 1
        try:
            delay = math.ldexp(self.base, exp)
        except OverflowError:  # client-go returns maxDelay when the float overflows int64
            return self.cap
        return min(delay, self.cap)

    def forget(self, item: T) -> None:
        self._failures.pop(item, None)

    def num_requeues(self, item: T) -> int:
        return self._failures.get(item, 0)


class BucketRateLimiter(Generic[T]):
    """Global token bucket (client-go BucketRateLimiter over x/time/rate); never forgets."""

    def __init__(self, qps: float = 10.0, burst: int = 100, *, clock: Clock | None = None) -> None:
        self.qps, self.burst = qps, burst
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._tokens = float(burst)
        self._last: float | None = None

    def when(self, item: T) -> float:
        now = self._clock.now()
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
        self._last = now
        self._tokens -= 1.0  # a reservation: tokens may go negative, like rate.Limiter.Reserve
        return max(0.0, -self._tokens / self.qps)

    def forget(self, item: T) -> None:
        pass

    def num_requeues(self, item: T) -> int:
        return 0


class MaxOfRateLimiter(Generic[T]):
    """Worst delay of several limiters (client-go MaxOfRateLimiter)."""

    def __init__(self, *limiters: RateLimiter[T]) -> None:
        self.limiters = limiters

    def when(self, item: T) -> float:
        return max(limiter.when(item) for limiter in self.limiters)

    def forget(self, item: T) -> None:
        for limiter in self.limiters:
            limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return max(limiter.num_requeues(item) for limiter in self.limiters)


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    depth: int  # added and not yet handed out (the workqueue_depth gauge)
    ready: int  # queued right now, == len(queue)
    waiting: int  # delayed items not yet ready
    processing: int
    adds: int  # non-deduplicated adds
    retries: int  # add_after calls with delay > 0


class WorkQueue(Generic[T]):
    """See the module docstring for the contract."""

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        metrics: QueueMetrics | None = None,
        rate_limiter: RateLimiter[T] | None = None,
    ) -> None:
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._metrics: QueueMetrics = metrics or NoopQueueMetrics()
        # controller-runtime >= 0.23 default: per-item exponential only, no global 10 qps bucket.
        self._limiter: RateLimiter[T] = rate_limiter or ItemExponentialFailureRateLimiter[T]()
        self._queue: deque[T] = deque()
        self._dirty: set[T] = set()
        self._processing: dict[T, float] = {}  # item -> get() time
        self._added_at: dict[T, float] = {}  # item -> first add (or becoming ready) time
        self._handed_added_at: dict[T, float] = {}  # item being processed -> when it was first added
        self._last_busy = -math.inf  # the last add or done: the start of the current idle spell
        self._waiting: dict[T, tuple[float, int]] = {}  # item -> (ready_at, seq) of its live heap entry
        self._heap: list[tuple[float, int, T]] = []  # seq breaks ties, so T need not be orderable
        self._seq = 0
        self._getters: deque[anyio.Event] = deque()
        self._run_wakeup = anyio.Event()
        self._drained = anyio.Event()
        self._shutting_down = False
        self._adds = 0
        self._retries = 0

    # -- queue.go -------------------------------------------------------------------------------

    def add(self, item: T) -> None:
        if self._shutting_down or item in self._dirty:
            return  # dedup: no metric, like client-go
        self._dirty.add(item)
        self._adds += 1
        self._last_busy = self._clock.now()
        self._added_at.setdefault(item, self._last_busy)
        self._metrics.add()
        self._metrics.depth(len(self._dirty))
        if item not in self._processing:  # otherwise done() queues it
            self._push(item)

    async def get(self) -> T:
        await anyio.lowlevel.checkpoint()  # honour cancellation and let other tasks run
        while not self._queue:
            if self._shutting_down:
                raise ShutDown
            waiter = anyio.Event()
            self._getters.append(waiter)
            try:
                await waiter.wait()
            except BaseException:
                if waiter.is_set():
                    self._signal_one()  # hand the wakeup we consumed to another getter
                else:
                    self._getters.remove(waiter)
                raise
        item = self._queue.popleft()
        now = self._clock.now()
        self._dirty.discard(item)
        self._processing[item] = now
        self._metrics.depth(len(self._dirty))
        added = self._added_at.pop(item, None)
        if added is not None:
            self._metrics.queue_latency(now - added)
            self._handed_added_at[item] = added
        return item

    def done(self, item: T) -> None:
        started = self._processing.pop(item, None)
        if started is None:
            return  # not handed out: ignoring it avoids pushing a dirty item twice
        self._handed_added_at.pop(item, None)
        self._last_busy = self._clock.now()
        self._metrics.work_duration(self._clock.now() - started)
        if item in self._dirty:  # re-added while processing: run it once more
            self._push(item)
        if not self._processing:
            self._drained.set()

    def shutdown(self) -> None:
        self._shutting_down = True
        while self._getters:  # every getter re-checks; those finding the queue empty raise ShutDown
            self._getters.popleft().set()
        self._run_wakeup.set()

    async def shutdown_with_drain(self) -> None:
        self.shutdown()
        while self._processing:
            if self._drained.is_set():
                self._drained = anyio.Event()
            await self._drained.wait()

    def __len__(self) -> int:
        return len(self._queue)

    def prioritize(self, first: Callable[[T], bool]) -> int:
        """Moves the ready items for which ``first`` holds to the front, each group in its order; returns
        how many moved. Not in client-go: lets an owner put the urgent part of a backlog first."""
        urgent = [item for item in self._queue if first(item)]
        if urgent and len(urgent) < len(self._queue):
            rest = [item for item in self._queue if not first(item)]
            self._queue = deque(urgent + rest)
        return len(urgent)

    def handed_out_added_at(self, item: T) -> float | None:
        """For an item now being processed: clock time it was first added (or became ready)."""
        return self._handed_added_at.get(item)

    def idle_for(self) -> float:
        """Seconds since the queue last had an item ready or in processing (0 while it has). Not in
        client-go: lets a lower-priority lane stay out of this one's bursts, not just its backlog."""
        if self._queue or self._processing:
            return 0.0
        return self._clock.now() - self._last_busy

    # -- delaying_queue.go / rate_limiting_queue.go ---------------------------------------------

    def add_after(self, item: T, delay: float) -> None:
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(item)
            return
        # controller-runtime's priority queue counts only delayed adds (client-go counts all).
        self._retries += 1
        self._metrics.retry()
        ready_at = self._clock.now() + delay
        current = self._waiting.get(item)
        if current is not None and current[0] <= ready_at:
            return  # the earlier ready time wins
        self._seq += 1
        self._waiting[item] = (ready_at, self._seq)
        heapq.heappush(self._heap, (ready_at, self._seq, item))
        if self._heap[0][1] == self._seq:  # new earliest deadline: make run() re-arm its timer
            self._run_wakeup.set()

    def add_rate_limited(self, item: T) -> None:
        self.add_after(item, self._limiter.when(item))

    def forget(self, item: T) -> None:
        self._limiter.forget(item)

    def num_requeues(self, item: T) -> int:
        return self._limiter.num_requeues(item)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Move delayed items into the queue as they become ready; returns on shutdown."""
        task_status.started()
        while not self._shutting_down:
            self._run_wakeup = wakeup = anyio.Event()
            self._release_ready()
            async with anyio.create_task_group() as tg:
                if self._heap:
                    tg.start_soon(self._wake_at, self._heap[0][0], wakeup)
                await wakeup.wait()
                tg.cancel_scope.cancel()
        self._heap.clear()  # client-go drops waiting items on shutdown
        self._waiting.clear()

    # -- metrics --------------------------------------------------------------------------------

    def update_unfinished(self) -> None:
        """Report the summed and the longest age of in-flight items (owner calls it every 0.5 s)."""
        now = self._clock.now()
        ages = [now - started for started in self._processing.values()]
        self._metrics.unfinished(sum(ages), max(ages, default=0.0))

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(
            depth=len(self._dirty),
            ready=len(self._queue),
            waiting=len(self._waiting),
            processing=len(self._processing),
            adds=self._adds,
            retries=self._retries,
        )

    # -- internals ------------------------------------------------------------------------------

    def _push(self, item: T) -> None:
        self._queue.append(item)
        self._signal_one()

    def _signal_one(self) -> None:
        if self._getters:
            self._getters.popleft().set()

    def _release_ready(self) -> None:
        now = self._clock.now()
        while self._heap and self._heap[0][0] <= now:
            ready_at, seq, item = heapq.heappop(self._heap)
            if self._waiting.get(item) == (ready_at, seq):  # else superseded by an earlier entry
                del self._waiting[item]
                self.add(item)

    async def _wake_at(self, deadline: float, wakeup: anyio.Event) -> None:
        await self._clock.sleep_until(deadline)
        wakeup.set()
