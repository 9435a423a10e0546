"""One clock for every duration, deadline and timeout in the process, and a fake one for tests.

Monotonic seconds. On asyncio, ``time.monotonic`` is the event loop's own clock, so deadlines computed
here and the loop's timers agree; it also works before the loop starts. Wall-clock time (timestamps
written into objects) is not a duration and is not taken from here.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol

import anyio
import anyio.lowlevel

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float: ...  # monotonic seconds
    async def sleep_until(self, deadline: float) -> None: ...
    async def sleep(self, seconds: float) -> None: ...
    def move_on_after(self, seconds: float, *, shield: bool = False) -> AbstractAsyncContextManager[anyio.CancelScope]:
        """Like ``anyio.move_on_after``, on this clock: ``async with clock.move_on_after(5) as scope``."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - time.monotonic()))

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)

    @asynccontextmanager
    async def move_on_after(self, seconds: float, *, shield: bool = False) -> AsyncIterator[anyio.CancelScope]:
        with anyio.move_on_after(seconds, shield=shield) as scope:
            yield scope


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """Advanced by hand; sleepers wake when :meth:`advance` passes their deadline."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._sleepers: set[tuple[float, anyio.Event]] = set()
        self._deadlines: list[tuple[float, anyio.CancelScope]] = []

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await anyio.lowlevel.checkpoint()  # like anyio.sleep_until, always a checkpoint
            return
        entry = (deadline, anyio.Event())
        self._sleepers.add(entry)
        try:
            await entry[1].wait()
        finally:
            self._sleepers.discard(entry)

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now + seconds)

    @asynccontextmanager
    async def move_on_after(self, seconds: float, *, shield: bool = False) -> AsyncIterator[anyio.CancelScope]:
        with anyio.CancelScope(shield=shield) as scope:
            entry = (self._now + seconds, scope)
            if seconds <= 0:
                scope.cancel()
            self._deadlines.append(entry)
            try:
                yield scope
            finally:
                self._deadlines.remove(entry)

    @property
    def sleepers(self) -> int:
        """Tasks asleep on this clock now (a test advances once they have all gone to sleep)."""
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        self._now += seconds
        for entry in [e for e in self._sleepers if e[0] <= self._now]:
            self._sleepers.discard(entry)
            entry[1].set()
        for deadline, scope in self._deadlines:
            if deadline <= self._now:
                scope.cancel()
