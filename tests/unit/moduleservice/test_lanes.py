"""The two lanes, without an API server, on a fake clock: the keys used here name a module no
ModuleDeployment has and no Service exists for, so a reconcile reads the empty caches and writes nothing.

- Services first: status and Events wait while the Service lane is busy, until it has been idle for a
  moment (the burst is over), or until they have waited the longest allowed (churn never starves them);
- a Service reconcile feeds the status lane;
- the convergence histogram starts counting when this replica can act (leadership), not when a standby
  first saw the change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import anyio
import pytest
from prometheus_client import CollectorRegistry

from controller.moduleservice.lanes import Lanes
from controller.moduleservice.mapping import ServiceKey, md_module, pod_modules
from controller.moduleservice.profiles import PROFILES
from controller.moduleservice.reconcile import MD_MODULE_INDEX, POD_MODULE_INDEX, Reconciler
from controller.moduleservice.statuswriter import StatusWriter
from controller.runtime.clock import FakeClock
from controller.runtime.controller import Notifier
from controller.runtime.events import EventRecorder
from controller.runtime.kube.client import KubeClient
from controller.runtime.metrics import Metrics
from controller.runtime.store import Store

pytestmark = pytest.mark.asyncio

KEY = ServiceKey("ns", "nobody-service")
PREFIX = PROFILES["seed"].label_prefix
QUIET = 0.25
MAX_WAIT = 10.0
DEADLINE = 5.0  # real-time guard only


def make_lanes(clock: FakeClock, registry: CollectorRegistry) -> Lanes:
    metrics = Metrics(registry)
    mds = Store({MD_MODULE_INDEX: lambda o: [f"ns/{md_module(o)}"]})
    pods = Store({POD_MODULE_INDEX: lambda p: [f"ns/{m}" for m, _ in pod_modules(p, PREFIX)]})
    # No request is ever sent: the caches are empty, so there is nothing to write.
    reconciler = Reconciler(cast(KubeClient, None), mds=mds, services=Store(), pods=pods, profile=PROFILES["seed"],
                            events=EventRecorder(None, clock=clock), clock=clock)
    return Lanes(reconciler, StatusWriter(reconciler), label_prefix=PREFIX, workers=1, notifier=Notifier(),
                 services_ready=lambda: True, status_ready=lambda: True, metrics=metrics,
                 queue_metrics=metrics.queue_metrics, convergence=metrics.convergence, clock=clock,
                 quiet=QUIET, max_wait=MAX_WAIT)


@asynccontextmanager
async def leading(lanes: Lanes) -> AsyncIterator[None]:
    with anyio.fail_after(DEADLINE):
        async with anyio.create_task_group() as tg:
            await tg.start(lanes.run)
            yield
            lanes.stop()


def sample(registry: CollectorRegistry, metric: str, **labels: str) -> float:
    return registry.get_sample_value(metric, labels) or 0.0


async def settle() -> None:
    await anyio.wait_all_tasks_blocked()


class TestServicesFirst:
    async def test_returns_at_once_when_the_service_lane_is_idle(self) -> None:
        clock = FakeClock(100.0)
        lanes = make_lanes(clock, CollectorRegistry())
        with anyio.fail_after(DEADLINE):
            await lanes.wait_for_services(clock.now())
        assert clock.now() == 100.0

    async def test_waits_out_a_burst_then_returns_when_it_ends(self) -> None:
        clock = FakeClock(100.0)
        lanes = make_lanes(clock, CollectorRegistry())
        queue = lanes.services.queue
        returned: list[float] = []

        async def status_work() -> None:
            await lanes.wait_for_services(clock.now())
            returned.append(clock.now())

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                queue.add(KEY)  # the burst begins: a key every 0.1 s for 2 s
                tg.start_soon(status_work)
                for i in range(20):
                    item = await queue.get()
                    queue.done(item)
                    clock.advance(0.1)
                    await settle()
                    assert returned == [], f"status went out in the middle of the burst ({i})"
                    queue.add(ServiceKey("ns", f"m{i}-service"))
                await queue.get()
                queue.done(ServiceKey("ns", "m19-service"))
                burst_over = clock.now()
                while not returned:
                    clock.advance(0.05)
                    await settle()
        assert burst_over + QUIET <= returned[0] <= burst_over + QUIET + 0.05

    async def test_sustained_churn_delays_but_never_starves(self) -> None:
        clock = FakeClock(100.0)
        lanes = make_lanes(clock, CollectorRegistry())
        queue = lanes.services.queue
        since = clock.now()
        returned: list[float] = []

        async def status_work() -> None:
            await lanes.wait_for_services(since)
            returned.append(clock.now())

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(status_work)
                while not returned:  # a key every 0.1 s, for ever: never idle for QUIET
                    queue.add(KEY)
                    item = await queue.get()
                    queue.done(item)
                    clock.advance(0.1)
                    await settle()
        assert MAX_WAIT <= returned[0] - since <= MAX_WAIT + 0.1


class TestBetweenTheLanes:
    async def test_a_service_reconcile_feeds_the_status_lane_and_converges(self) -> None:
        clock = FakeClock(100.0)
        registry = CollectorRegistry()
        lanes = make_lanes(clock, registry)
        async with leading(lanes):
            lanes.service_handler.on_add({"metadata": {"namespace": "ns", "name": KEY.name}})
            await settle()
            clock.advance(QUIET)  # the status lane waits for the Service lane to be quiet
            await settle()
            assert lanes.quiescent
        assert sample(registry, "controller_runtime_reconcile_total", controller="moduleservice",
                      result="success") == 1
        assert sample(registry, "workqueue_adds_total", name="moduleservice-status", controller="moduleservice") == 1
        assert sample(registry, "moduleservice_convergence_seconds_count", controller="moduleservice") == 1

    async def test_convergence_excludes_time_as_a_standby(self) -> None:
        clock = FakeClock(100.0)
        registry = CollectorRegistry()
        lanes = make_lanes(clock, registry)
        # A change seen by this replica while it is a standby; it becomes the leader 100 s later.
        lanes.service_handler.on_add({"metadata": {"namespace": "ns", "name": KEY.name}})
        clock.advance(100.0)
        async with leading(lanes):
            await settle()
        assert sample(registry, "moduleservice_convergence_seconds_count", controller="moduleservice") == 1
        took = sample(registry, "moduleservice_convergence_seconds_sum", controller="moduleservice")
        assert took < 1.0, f"convergence counted {took:.1f}s, including the time as a standby"
