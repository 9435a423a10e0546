"""The generic controller: its result policy, its readiness gate and what it says about itself, on a fake
clock (delays pass when the test advances it, never in real time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from prometheus_client import CollectorRegistry

from controller.runtime.clock import FakeClock
from controller.runtime.controller import Controller, Done, Notifier
from controller.runtime.kube.errors import ServerError, TooManyRequests
from controller.runtime.metrics import Metrics
from controller.runtime.result import Result, TerminalError

pytestmark = pytest.mark.asyncio

DEADLINE = 5.0  # real-time guard only


class Script:
    """A reconcile function that answers each call for a key from a list, and records the calls."""

    def __init__(self, *answers: Result | BaseException) -> None:
        self.answers = list(answers)
        self.calls: list[str] = []
        self.called = anyio.Event()

    async def __call__(self, key: str) -> Result:
        self.calls.append(key)
        self.called.set()
        self.called = anyio.Event()
        answer = self.answers.pop(0) if self.answers else Result()
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def wait_calls(self, n: int) -> None:
        while len(self.calls) < n:
            await self.called.wait()


@asynccontextmanager
async def running(controller: Controller[str]) -> AsyncIterator[None]:
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            await tg.start(controller.run)
            yield
            controller.stop()


def value(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0


def quiet(c: Controller[str]) -> bool:
    """``c.quiescent``, read anew (mypy would narrow the property across the awaits in between)."""
    return c.quiescent


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


class TestResultPolicy:
    async def test_each_outcome(self) -> None:
        clock = FakeClock()
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        script = Script(Result(requeue_after=5.0), Result(requeue=True), ServerError(500, "InternalError", "x"),
                        TerminalError("cannot be fixed"))
        done: list[Done[str]] = []
        c: Controller[str] = Controller("c", script, clock=clock, on_done=done.append, metrics=metrics)
        async with running(c):
            c.add("k")
            await script.wait_calls(1)
            await settle()
            assert not quiet(c)  # waiting for its delay
            clock.advance(4.9)
            await settle()
            assert script.calls == ["k"], "a requeue_after is not retried early"
            clock.advance(0.1)
            await script.wait_calls(2)  # requeue: the rate limit's first step (5 ms)
            clock.advance(0.005)
            await script.wait_calls(3)  # an error: rate limited, the second step (10 ms)
            clock.advance(0.01)
            await script.wait_calls(4)  # terminal: not retried
            await settle()
            clock.advance(1000.0)
            await settle()
            assert script.calls == ["k"] * 4
            assert quiet(c)
        assert [d.label for d in done] == ["requeue_after", "requeue", "error", "error"]
        assert value(registry, "controller_runtime_reconcile_total", controller="moduleservice",
                     result="requeue_after") == 1
        assert value(registry, "controller_runtime_reconcile_errors_total", controller="moduleservice") == 2
        assert value(registry, "controller_runtime_terminal_reconcile_errors_total", controller="moduleservice") == 1
        assert value(registry, "controller_runtime_reconcile_panics_total", controller="moduleservice") == 0

    async def test_a_bug_is_a_panic_not_a_crash(self) -> None:
        clock = FakeClock()
        registry = CollectorRegistry()
        script = Script(KeyError("a bug"))
        c: Controller[str] = Controller("c", script, clock=clock, metrics=Metrics(registry))
        async with running(c):
            c.add("k")
            await script.wait_calls(1)
            clock.advance(0.005)
            await script.wait_calls(2)  # retried like any failure
        assert value(registry, "controller_runtime_reconcile_panics_total", controller="moduleservice") == 1

    async def test_retry_after_is_honoured(self) -> None:
        clock = FakeClock()
        script = Script(TooManyRequests(429, "TooManyRequests", "slow down", retry_after=3))
        c: Controller[str] = Controller("c", script, clock=clock)
        async with running(c):
            c.add("k")
            await script.wait_calls(1)
            clock.advance(2.9)
            await settle()
            assert len(script.calls) == 1, "retried before the server's Retry-After"
            clock.advance(0.1)
            await script.wait_calls(2)


class TestReadiness:
    async def test_no_key_is_handed_out_while_not_ready(self) -> None:
        clock = FakeClock()
        notifier = Notifier()
        ready = [False]
        script = Script()
        c: Controller[str] = Controller("c", script, clock=clock, notifier=notifier, ready=lambda: ready[0])
        async with running(c):
            c.add("k")
            await settle()
            assert script.calls == []
            assert not quiet(c)
            ready[0] = True
            notifier.notify()
            await script.wait_calls(1)

    async def test_a_key_held_when_the_gate_closes_is_kept_not_dropped(self) -> None:
        # The status lane holds a key while the Service lane is busy; meanwhile the ModuleDeployment CRD
        # goes away. The key must come back once it is served again, not be forgotten.
        clock = FakeClock()
        notifier = Notifier()
        ready = [True]
        release = anyio.Event()
        held = anyio.Event()

        async def admit(key: str, since: float) -> None:
            held.set()
            await release.wait()

        script = Script()
        c: Controller[str] = Controller("c", script, clock=clock, notifier=notifier, ready=lambda: ready[0],
                                        admit=admit)
        async with running(c):
            c.add("k")
            await held.wait()
            ready[0] = False
            release.set()
            await settle()
            assert script.calls == []
            assert not quiet(c), "the key was dropped"
            ready[0] = True
            notifier.notify()
            await script.wait_calls(1)


class TestMetrics:
    async def test_unfinished_work_gauges_move_while_a_reconcile_runs(self) -> None:
        clock = FakeClock()
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        release = anyio.Event()
        started = anyio.Event()

        async def slow(key: str) -> Result:
            started.set()
            await release.wait()
            return Result()

        c: Controller[str] = Controller("c", slow, clock=clock, queue_metrics=metrics.queue_metrics("lane"))
        labels = {"name": "lane", "controller": "moduleservice"}
        async with running(c):
            c.add("k")
            await started.wait()
            clock.advance(1.0)  # the gauges are updated every 0.5 s of the controller's clock
            await settle()
            assert value(registry, "workqueue_unfinished_work_seconds", **labels) >= 0.5
            assert value(registry, "workqueue_longest_running_processor_seconds", **labels) >= 0.5
            release.set()
            await settle()
            clock.advance(0.5)
            await settle()
            assert value(registry, "workqueue_longest_running_processor_seconds", **labels) == 0
