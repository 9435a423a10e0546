"""The manager: runs groups of runnables in order, stops them in reverse (controller-runtime's Manager).

Start, in one anyio task group:

1. **servers** (probes, metrics): each has started when it listens;
2. **others** (senders, loops that every replica runs): each has started when it says so;
3. **caches** (informers): started together; those added with ``wait=True`` must sync within
   ``cache_sync_timeout`` before anything below starts, the rest within the same deadline while the
   process goes on (a cache that never syncs fails the process, and the Deployment restarts it);
4. **leader election** (when configured), then the **leader-elected** runnables (controllers) in a task
   group of their own; a standby keeps its caches warm and waits for the Lease.

Stop (SIGTERM, SIGINT or :meth:`request_stop`): the leader-elected runnables are asked to stop (a
controller hands out no more keys and finishes the ones in progress), bounded by ``shutdown_timeout``;
then the Lease is released and everything else is cancelled. A lost Lease or a runnable that fails
fails the whole group: the process exits non-zero and is restarted, never half alive.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from .clock import SYSTEM_CLOCK, Clock
from .controller import Notifier
from .health import HealthChecks
from .leaderelection import LeaderElector

__all__ = ["Manager", "Runnable", "Stoppable"]

log = structlog.get_logger(__name__)


class Runnable(Protocol):
    async def run(self, *, task_status: TaskStatus[None] = ...) -> None: ...


class Stoppable(Protocol):
    def stop(self) -> None: ...


@dataclass(slots=True)
class _Cache:
    runnable: Runnable
    wait: bool
    synced: bool = False


class Manager:
    def __init__(self, *, elector: LeaderElector | None = None, clock: Clock = SYSTEM_CLOCK,
                 cache_sync_timeout: float = 120.0, shutdown_timeout: float = 25.0,
                 handle_signals: bool = True) -> None:
        self.elector = elector
        self.clock = clock
        self.cache_sync_timeout = cache_sync_timeout
        self.shutdown_timeout = shutdown_timeout
        self.handle_signals = handle_signals
        self.healthz = HealthChecks()
        self.readyz = HealthChecks()
        self.healthz.add("ping", lambda: None)
        if elector is not None:
            self.healthz.add("leader-election",
                             lambda: None if elector.healthy() else "holds the lease but stopped renewing it")
        # One channel for "some state changed" (a cache synced, a CRD appeared, a stop was asked for).
        self.notifier = Notifier()
        self._servers: list[Runnable] = []
        self._others: list[Runnable] = []
        self._caches: list[_Cache] = []
        self._leader_elected: list[Runnable] = []
        self._quiescence: list[Callable[[], bool]] = []
        self._stop_requested = anyio.Event()
        self._stopping = False
        self._leading_started = False
        self._started = clock.now()
        # Extra fields for the caches_synced log line (object counts, say).
        self.on_synced: Callable[[], dict[str, object]] = dict

    # ------------------------------------------------------------------ wiring
    def add_server(self, runnable: Runnable) -> None:
        self._servers.append(runnable)

    def add(self, runnable: Runnable) -> None:
        self._others.append(runnable)

    def add_cache(self, runnable: Runnable, *, wait: bool = True) -> None:
        self._caches.append(_Cache(runnable, wait))

    def add_leader_elected(self, runnable: Runnable) -> None:
        self._leader_elected.append(runnable)

    def add_quiescence(self, check: Callable[[], bool]) -> None:
        """A source of work that may still be pending (a controller's queue, a buffer of Events)."""
        self._quiescence.append(check)

    # ------------------------------------------------------------------ state
    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def quiescent(self) -> bool:
        """Nothing left to do: every cache synced, and nothing queued, in progress, waiting for a delay or
        buffered in any source added with :meth:`add_quiescence`."""
        return all(c.synced for c in self._caches) and all(check() for check in self._quiescence)

    def write_allowed(self) -> bool:
        """The fence every write checks: a replica that has judged its Lease lost stops writing at once,
        before its task group has finished cancelling."""
        return self.elector is None or self.elector.is_leader

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        self._started = self.clock.now()
        async with anyio.create_task_group() as tg:
            if self.handle_signals:
                tg.start_soon(self._signals)
            tg.start_soon(self._shutdown_on_request, tg)
            for server in self._servers:
                await tg.start(server.run)
            for other in self._others:
                await tg.start(other.run)
            await self._start_caches(tg)
            if not self._stopping:
                if self.elector is not None:
                    await self.elector.run(self._lead)
                else:
                    await self._lead()
            tg.cancel_scope.cancel()

    async def _start_caches(self, tg: TaskGroup) -> None:
        deadline = self.clock.now() + self.cache_sync_timeout
        waited = [c for c in self._caches if c.wait]
        for cache in self._caches:
            if not cache.wait:
                tg.start_soon(self._start_cache, tg, cache, deadline)
        async with anyio.create_task_group() as starting:
            for cache in waited:
                starting.start_soon(self._start_cache, tg, cache, deadline)

    async def _start_cache(self, tg: TaskGroup, cache: _Cache, deadline: float) -> None:
        with anyio.fail_after(max(0.0, deadline - self.clock.now())):
            await tg.start(cache.runnable.run)
        cache.synced = True
        if all(c.synced for c in self._caches):
            log.info("caches_synced", seconds=round(self.clock.now() - self._started, 3), **self.on_synced())
        self.notifier.notify()

    async def _lead(self) -> None:
        self._leading_started = True
        async with anyio.create_task_group() as tg:
            for runnable in self._leader_elected:
                await tg.start(runnable.run)

    # ------------------------------------------------------------------ stop
    def request_stop(self) -> None:
        """Graceful stop, as on SIGTERM."""
        self._stop_requested.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutdown_requested", signal=signal.Signals(signum).name)
                self.request_stop()

    async def _shutdown_on_request(self, tg: TaskGroup) -> None:
        await self._stop_requested.wait()
        self._stopping = True
        self.notifier.notify()
        for runnable in self._leader_elected:
            stop: Callable[[], object] | None = getattr(runnable, "stop", None)
            if stop is not None:
                stop()
        if not self._leading_started or (self.elector is not None and not self.elector.is_leader):
            tg.cancel_scope.cancel()  # nothing in flight to wait for (a standby, or still syncing)
            return
        # The leader-elected runnables finish their work and return; run() then releases the Lease and
        # cancels the group. Past the timeout, cancel anyway (every write we make is safe to repeat).
        await self.clock.sleep(self.shutdown_timeout)
        log.warning("shutdown_timeout", seconds=self.shutdown_timeout)
        tg.cancel_scope.cancel()
