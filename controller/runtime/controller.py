"""A generic controller: a work queue of keys, workers that reconcile them, and the result policy.

controller-runtime's ``Controller``: the caller says how a key is reconciled; this decides what happens
next from what the reconcile returned.

- ``Result()``: done; the key's failure count is forgotten.
- ``Result(requeue_after=d)``: again in ``d`` seconds, not a failure (the count is forgotten).
- ``Result(requeue=True)``: again with the key's rate limit (cache lag, an optimistic-lock conflict).
- an exception: a failure, again with the rate limit, or after the error's ``retry_after`` when it has
  one (a 429's Retry-After). An unexpected exception (a bug) is a failure too, counted as a panic and
  logged with its traceback: one bad key must not take the process down.
- a :class:`TerminalError`: a failure no retry fixes; counted, logged, not retried.

Workers start when :meth:`run` starts (the manager runs it on the leader only) and take keys only while
``ready()`` holds; a key handed out while not ready goes back to the queue. One key is never reconciled
by two workers at once (the queue's guarantee). :attr:`quiescent` says whether anything is queued,
waiting for a delay or in progress.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import anyio
import structlog
from anyio.abc import TaskStatus

from .clock import SYSTEM_CLOCK, Clock
from .kube.errors import KubeError
from .leaderelection import NotLeader
from .result import Result, TerminalError
from .workqueue import QueueMetrics, RateLimiter, ShutDown, WorkQueue

__all__ = ["Controller", "Done", "Notifier", "ReconcileMetrics"]

K = TypeVar("K", bound=Hashable)
log = structlog.get_logger(__name__)
_UNFINISHED_PERIOD = 0.5  # client-go's defaultUnfinishedWorkUpdatePeriod


class ReconcileMetrics(Protocol):
    def reconcile_result(self, result: str, seconds: float) -> None: ...
    def terminal_error(self) -> None: ...
    def panic(self) -> None: ...
    def worker_active(self, delta: int) -> None: ...
    def max_concurrent(self, n: int) -> None: ...


class _NoMetrics:
    def reconcile_result(self, result: str, seconds: float) -> None: ...
    def terminal_error(self) -> None: ...
    def panic(self) -> None: ...
    def worker_active(self, delta: int) -> None: ...
    def max_concurrent(self, n: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Done(Generic[K]):
    """How one reconcile ended, for whoever watches the controller (the ``on_done`` hook)."""

    key: K
    result: Result | None  # None: it raised
    error: BaseException | None
    seconds: float

    @property
    def label(self) -> str:
        return "error" if self.result is None else self.result.label


class Notifier:
    """Wakes everyone waiting for some state to change (the manager's one notification channel)."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._event.wait()


class Controller(Generic[K]):
    def __init__(
        self,
        name: str,
        reconcile: Callable[[K], Awaitable[Result]],
        *,
        workers: int = 1,
        clock: Clock = SYSTEM_CLOCK,
        notifier: Notifier | None = None,
        ready: Callable[[], bool] = lambda: True,
        admit: Callable[[K, float], Awaitable[None]] | None = None,
        on_done: Callable[[Done[K]], None] | None = None,
        metrics: ReconcileMetrics | None = None,
        queue_metrics: QueueMetrics | None = None,
        rate_limiter: RateLimiter[K] | None = None,
        log_event: str = "reconciled",
        log_idle: bool = True,
    ) -> None:
        """``admit(key, since)`` may hold a key that is about to be reconciled (a lower-priority lane
        waiting for a higher one; ``since``: when the key was first queued); ``on_done`` hears how each
        reconcile ended."""
        self.name = name
        self._reconcile = reconcile
        self.workers = workers
        self._clock = clock
        self._notifier = notifier or Notifier()
        self._ready = ready
        self._admit = admit
        self._on_done = on_done
        self._metrics: ReconcileMetrics = metrics or _NoMetrics()
        self.queue: WorkQueue[K] = WorkQueue(clock=clock, metrics=queue_metrics, rate_limiter=rate_limiter)
        self._stopping = False
        self._log = log.bind(controller=name)
        self._log_event = log_event
        self._log_idle = log_idle  # log a reconcile that did nothing at info (else at debug)

    # ------------------------------------------------------------------ queue
    def add(self, key: K) -> None:
        self.queue.add(key)

    @property
    def quiescent(self) -> bool:
        """Nothing queued, waiting for a delay or being reconciled."""
        stats = self.queue.statistics()
        return stats.depth == 0 and stats.waiting == 0 and stats.processing == 0

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs the workers until :meth:`stop` (then returns once the keys in progress are done)."""
        self._metrics.max_concurrent(self.workers)
        self._log.info("controller_starting", workers=self.workers)
        async with anyio.create_task_group() as tg:
            await tg.start(self.queue.run)
            tg.start_soon(self._unfinished_loop)
            async with anyio.create_task_group() as workers:
                for _ in range(self.workers):
                    workers.start_soon(self._worker)
                task_status.started()
            tg.cancel_scope.cancel()
        self._log.info("controller_stopped")

    def stop(self) -> None:
        """Hand out no more keys; workers finish the key they hold and return."""
        self._stopping = True
        self.queue.shutdown()
        self._notifier.notify()

    async def _unfinished_loop(self) -> None:
        while True:
            self.queue.update_unfinished()
            await self._clock.sleep(_UNFINISHED_PERIOD)

    def stopping(self) -> bool:
        """Asked to stop (a method, not a property: it changes across every await)."""
        return self._stopping

    async def _worker(self) -> None:
        while not self.stopping():
            await self._notifier.wait_for(lambda: self._ready() or self.stopping())
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                if self.stopping():
                    return
                if not self._ready():
                    self.queue.add(key)  # not now (e.g. a cache went away meanwhile); done() re-queues it
                    continue
                if self._admit is not None:
                    since = self.queue.handed_out_added_at(key)
                    await self._admit(key, self._clock.now() if since is None else since)
                    if self.stopping() or not self._ready():
                        self.queue.add(key)
                        continue
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _process(self, key: K) -> None:
        started = self._clock.now()
        self._metrics.worker_active(1)
        result: Result | None = None
        error: BaseException | None = None
        try:
            result = await self._reconcile(key)
        except TerminalError as exc:
            error = exc
            self._metrics.terminal_error()
        except Exception as exc:  # a failure; KubeError and friends, or a bug (then also a "panic")
            error = exc
            if not _expected(exc):
                self._metrics.panic()
        finally:
            self._metrics.worker_active(-1)
        seconds = self._clock.now() - started
        done = Done(key, result, error, seconds)
        self._metrics.reconcile_result(done.label, seconds)
        self._apply(done)
        if self._on_done is not None:
            self._on_done(done)
        self._log_done(done)

    def _apply(self, done: Done[K]) -> None:
        key, result, error = done.key, done.result, done.error
        if result is not None:
            if result.requeue_after:
                self.queue.forget(key)  # a deliberate wait, not a failure
                self.queue.add_after(key, result.requeue_after)
            elif result.requeue:
                self.queue.add_rate_limited(key)
            else:
                self.queue.forget(key)
        elif isinstance(error, TerminalError):
            self.queue.forget(key)
        else:
            retry_after = getattr(error, "retry_after", None)
            if isinstance(retry_after, int | float) and retry_after > 0:
                self.queue.add_after(key, float(retry_after))  # the server said when (a 429)
            else:
                self.queue.add_rate_limited(key)

    def _log_done(self, done: Done[K]) -> None:
        fields: dict[str, object] = {"key": str(done.key), "result": done.label,
                                     "duration_ms": round(done.seconds * 1000, 2)}
        if done.result is not None:
            fields["actions"] = list(done.result.actions)
            if done.result.reason:
                fields["reason"] = done.result.reason
            if done.result.requeue or done.result.requeue_after or not (done.result.actions or self._log_idle):
                self._log.debug(self._log_event, **fields)  # cache lag, a 409, a backoff: expected
            else:
                self._log.info(self._log_event, **fields)
            return
        fields["error"] = str(done.error)
        fields["retries"] = self.queue.num_requeues(done.key)
        if isinstance(done.error, TerminalError) or _expected(done.error):
            self._log.warning(self._log_event, **fields)
        else:
            self._log.error(self._log_event, exc_info=done.error, **fields)


def _expected(exc: BaseException | None) -> bool:
    """Failures a reconcile is expected to meet (the API's answers, the leadership fence): not bugs."""
    return isinstance(exc, KubeError | NotLeader)
