"""The manager: groups of runnables started in order, the leader-elected ones stopped first and gracefully,
a cache that never syncs failing the process, and quiescence gathered from every source."""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from controller.runtime.clock import FakeClock
from controller.runtime.manager import Manager

pytestmark = pytest.mark.asyncio

DEADLINE = 5.0  # real-time guard only


class Recorded:
    """A runnable that records when it starts and ends, in one shared journal."""

    def __init__(self, name: str, journal: list[str], *, starts: anyio.Event | None = None) -> None:
        self.name = name
        self.journal = journal
        self.starts = starts  # started() only once this is set (a cache still syncing)
        self.stopped = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self.starts is not None:
            await self.starts.wait()
        self.journal.append(f"start {self.name}")
        task_status.started()
        try:
            await self.stopped.wait()  # a graceful stop ends it; otherwise it runs until cancelled
            self.journal.append(f"return {self.name}")
        finally:
            if not self.stopped.is_set():
                self.journal.append(f"cancel {self.name}")

    def stop(self) -> None:
        self.journal.append(f"stop {self.name}")
        self.stopped.set()


class Plain(Recorded):
    """Like Recorded but without stop(): only cancellation ends it."""

    stop = None  # type: ignore[assignment]


async def test_groups_start_in_order_and_the_leader_elected_stop_first() -> None:
    journal: list[str] = []
    synced = anyio.Event()
    m = Manager(clock=FakeClock(), handle_signals=False, shutdown_timeout=30)
    m.add_leader_elected(Recorded("controller", journal))
    m.add_cache(Recorded("cache", journal, starts=synced))
    m.add(Plain("recorder", journal))
    m.add_server(Plain("probes", journal))
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(m.run)
            await anyio.wait_all_tasks_blocked()
            assert journal == ["start probes", "start recorder"], "caches before anything leader-elected"
            synced.set()
            await anyio.wait_all_tasks_blocked()
            assert journal[-2:] == ["start cache", "start controller"]
            m.request_stop()
    assert journal[4:6] == ["stop controller", "return controller"], journal
    assert sorted(journal[6:]) == ["cancel cache", "cancel probes", "cancel recorder"], journal


async def test_a_cache_that_never_syncs_fails_the_process() -> None:
    m = Manager(handle_signals=False, cache_sync_timeout=0.05)
    m.add_cache(Plain("cache", [], starts=anyio.Event()))
    with anyio.fail_after(DEADLINE), pytest.raises(BaseExceptionGroup) as failed:
        await m.run()
    assert failed.group_contains(TimeoutError)


async def test_quiescent_only_when_every_source_says_so() -> None:
    busy = [True]
    m = Manager(handle_signals=False)
    m.add_quiescence(lambda: not busy[0])
    assert not m.quiescent
    busy[0] = False
    assert m.quiescent


async def test_a_stop_before_leading_cancels_at_once() -> None:
    journal: list[str] = []
    m = Manager(clock=FakeClock(), handle_signals=False, shutdown_timeout=1000)
    m.add_cache(Plain("cache", journal, starts=anyio.Event()))  # never syncs: never leads
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            tg.start_soon(m.run)
            await anyio.wait_all_tasks_blocked()
            m.request_stop()  # nothing in flight to wait for: no shutdown_timeout wait
    assert journal == []
