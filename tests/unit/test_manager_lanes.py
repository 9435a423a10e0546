"""The Manager's metrics for its two lanes, without an API server: the keys used here name a module no
ModuleDeployment has and no Service exists for, so a reconcile reads the empty caches and writes nothing.

- the status lane's unfinished-work and longest-running gauges move while a status reconcile runs;
- the convergence histogram starts counting when this replica can act (leadership), not when a
  standby first saw the change.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from prometheus_client import CollectorRegistry

import controller.manager as manager_module
from controller.config import Config
from controller.manager import STATUS_QUEUE_NAME, Manager
from controller.moduleservice.mapping import ServiceKey
from controller.runtime.kube.client import KubeClient
from controller.runtime.kube.config import Configuration
from controller.runtime.metrics import Metrics
from tests.harness import wait_for

pytestmark = pytest.mark.asyncio

KEY = ServiceKey("ns", "nobody-service")


@asynccontextmanager
async def manager() -> AsyncIterator[Manager]:
    config = Config(namespaces=("ns",), workers=1, metrics_bind_address="0", health_probe_bind_address="0")
    # Port 9 (discard) on loopback: nothing here may send a request, and none is sent.
    async with KubeClient(Configuration(host="http://127.0.0.1:9")) as client:
        registry = CollectorRegistry()
        yield Manager(config, client, registry=registry, metrics=Metrics(registry), handle_signals=False)


def sample(m: Manager, metric: str, **labels: str) -> float:
    value = m.registry.get_sample_value(metric, labels)
    return 0.0 if value is None else value


async def test_status_lane_unfinished_gauges_move() -> None:
    async with manager() as m, anyio.create_task_group() as tg:
        m.status_queue.add(KEY)
        assert await m.status_queue.get() == KEY  # a status reconcile is now in progress
        tg.start_soon(m._unfinished_loop)

        async def moved() -> bool:
            return (sample(m, "workqueue_unfinished_work_seconds", name=STATUS_QUEUE_NAME,
                           controller="moduleservice") > 0
                    and sample(m, "workqueue_longest_running_processor_seconds", name=STATUS_QUEUE_NAME,
                               controller="moduleservice") > 0)
        await wait_for(moved, timeout=10, what="the status lane's unfinished-work gauges to move")
        m.status_queue.done(KEY)

        async def back_to_zero() -> bool:
            return sample(m, "workqueue_longest_running_processor_seconds", name=STATUS_QUEUE_NAME,
                          controller="moduleservice") == 0
        await wait_for(back_to_zero, timeout=10, what="the gauge to fall back once the work is done")
        tg.cancel_scope.cancel()


async def test_convergence_excludes_time_as_a_standby() -> None:
    standby = 100.0
    async with manager() as m, anyio.create_task_group() as tg:
        # A change seen 100 s ago by this replica while it was a standby; it becomes the leader now.
        m._seen[KEY] = time.perf_counter() - standby
        m._md_serving = True  # as _serve_mds sets it once the ModuleDeployment CRD is served and listed
        m.queue.add(KEY)
        tg.start_soon(m._work)

        async def observed() -> bool:
            return sample(m, "moduleservice_convergence_seconds_count", controller="moduleservice") >= 1
        await wait_for(observed, timeout=10, what="the key's convergence to be observed")
        took = sample(m, "moduleservice_convergence_seconds_sum", controller="moduleservice")
        assert took < standby / 2, f"convergence counted {took:.1f}s, including the time as a standby"
        m.request_stop()
        m._stopping.set()
        m.queue.shutdown()
        m.status_queue.shutdown()
        tg.cancel_scope.cancel()


class TestServicesFirst:
    """Status and Events wait while the Service lane is busy: until it has been idle for a moment (the
    burst is over), or until they have waited the longest allowed (churn never starves them)."""

    async def test_returns_at_once_when_the_service_lane_is_idle(self) -> None:
        async with manager() as m:
            with anyio.fail_after(5):
                await m._yield_to_services(time.monotonic())

    async def test_waits_out_a_burst_then_returns_when_it_ends(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(manager_module, "_SERVICE_LANE_QUIET", 0.2)
        async with manager() as m, anyio.create_task_group() as tg:
            burst_over = anyio.Event()

            async def burst() -> None:
                for i in range(40):  # a key every 10 ms for 0.4 s: never idle for 0.2 s
                    m.queue.add(ServiceKey("ns", f"m{i}-service"))
                    await m.queue.get()
                    m.queue.done(ServiceKey("ns", f"m{i}-service"))
                    await anyio.sleep(0.01)
                burst_over.set()

            tg.start_soon(burst)
            while m.queue.idle_for() > 0.2:  # until the burst has begun
                await anyio.sleep(0.001)
            with anyio.fail_after(10):
                await m._yield_to_services(time.monotonic())
            assert burst_over.is_set(), "status must not go out in the middle of a burst"
            assert m.queue.idle_for() >= 0.2

    async def test_sustained_churn_delays_but_never_starves(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(manager_module, "_SERVICE_LANE_QUIET", 0.2)
        monkeypatch.setattr(manager_module, "_LOW_PRIORITY_MAX_WAIT", 0.5)
        async with manager() as m, anyio.create_task_group() as tg:
            churning = anyio.Event()

            async def churn() -> None:
                while True:
                    m.queue.add(KEY)
                    await m.queue.get()
                    m.queue.done(KEY)
                    churning.set()
                    await anyio.sleep(0.01)

            tg.start_soon(churn)
            await churning.wait()
            since = time.monotonic()
            with anyio.fail_after(10):
                await m._yield_to_services(since)
            assert time.monotonic() - since >= 0.5
            assert m.queue.idle_for() < 0.2, "returned for its age, not because the churn paused"
            tg.cancel_scope.cancel()
