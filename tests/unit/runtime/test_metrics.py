"""Metric names, labels and initial series are a contract with dashboards."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.runtime.metrics import (
    EVENT_TYPES,
    INFORMER_RESOURCES,
    RECONCILE_RESULTS,
    RECONCILE_TIME_BUCKETS,
    RELIST_REASONS,
    WATCH_ERROR_KINDS,
    WORKQUEUE_BUCKETS,
    Metrics,
)

__all__: list[str] = []

C = "moduleservice"
WQ = {"name": C, "controller": C}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: FakeClock) -> Metrics:
    return Metrics(registry, clock=clock)


def value(registry: CollectorRegistry, metric: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(metric, labels)


def test_controller_runtime_series_initialised(registry: CollectorRegistry, metrics: Metrics) -> None:
    for result in RECONCILE_RESULTS:
        assert value(registry, "controller_runtime_reconcile_total", controller=C, result=result) == 0
    for name in (
        "controller_runtime_reconcile_errors_total",
        "controller_runtime_terminal_reconcile_errors_total",
        "controller_runtime_reconcile_panics_total",
        "controller_runtime_active_workers",
        "controller_runtime_max_concurrent_reconciles",
        "controller_runtime_reconcile_time_seconds_count",
        "moduleservice_convergence_seconds_count",
    ):
        assert value(registry, name, controller=C) == 0, name


def test_workqueue_series_initialised(registry: CollectorRegistry, metrics: Metrics) -> None:
    for name in (
        "workqueue_depth",
        "workqueue_adds_total",
        "workqueue_queue_duration_seconds_count",
        "workqueue_work_duration_seconds_count",
        "workqueue_unfinished_work_seconds",
        "workqueue_longest_running_processor_seconds",
        "workqueue_retries_total",
    ):
        assert value(registry, name, **WQ) == 0, name


def test_informer_leader_and_runtime_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    for r in INFORMER_RESOURCES:
        for name in ("informer_list_total", "informer_watch_starts_total", "informer_watch_gone_total",
                     "informer_objects", "informer_synced"):
            assert value(registry, name, resource=r) == 0, (name, r)
        for reason in RELIST_REASONS:
            assert value(registry, "informer_relists_total", resource=r, reason=reason) == 0
        for kind in WATCH_ERROR_KINDS:
            assert value(registry, "informer_watch_errors_total", resource=r, kind=kind) == 0
        for t in EVENT_TYPES:
            assert value(registry, "informer_events_total", resource=r, type=t) == 0
        assert value(registry, "informer_last_event_timestamp_seconds", resource=r) == 1000.0

    assert value(registry, "leader_election_master_status", name="lease") is None
    metrics.init_leader("lease")
    assert value(registry, "leader_election_master_status", name="lease") == 0

    assert value(registry, "moduleservice_asyncio_tasks") == 0  # no loop running here
    assert value(registry, "process_cpu_seconds_total") is not None
    assert value(registry, "process_resident_memory_bytes") is not None


def test_buckets_match_controller_runtime(registry: CollectorRegistry, metrics: Metrics) -> None:
    assert value(registry, "controller_runtime_reconcile_time_seconds_bucket", controller=C, le="60.0") == 0
    assert len(RECONCILE_TIME_BUCKETS) == 40
    assert WORKQUEUE_BUCKETS[0] == 1e-8
    assert WORKQUEUE_BUCKETS[-1] == 1000.0
    assert len(WORKQUEUE_BUCKETS) == 12
    assert value(registry, "workqueue_queue_duration_seconds_bucket", le="1e-08", **WQ) == 0
    assert value(registry, "workqueue_work_duration_seconds_bucket", le="1000.0", **WQ) == 0


def test_reconcile_helpers(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.reconcile_result("success", 0.02)
    metrics.reconcile_result("error", 0.3)
    metrics.reconcile_result("requeue_after", 0.01)
    metrics.terminal_error()
    metrics.panic()
    metrics.max_concurrent(4)
    metrics.worker_active(1)
    metrics.worker_active(1)
    metrics.worker_active(-1)
    metrics.convergence(0.2)

    assert value(registry, "controller_runtime_reconcile_total", controller=C, result="success") == 1
    assert value(registry, "controller_runtime_reconcile_total", controller=C, result="error") == 1
    assert value(registry, "controller_runtime_reconcile_total", controller=C, result="requeue") == 0
    assert value(registry, "controller_runtime_reconcile_errors_total", controller=C) == 1
    assert value(registry, "controller_runtime_terminal_reconcile_errors_total", controller=C) == 1
    assert value(registry, "controller_runtime_reconcile_panics_total", controller=C) == 1
    assert value(registry, "controller_runtime_reconcile_time_seconds_count", controller=C) == 3
    assert value(registry, "controller_runtime_reconcile_time_seconds_bucket", controller=C, le="0.025") == 2
    assert value(registry, "controller_runtime_max_concurrent_reconciles", controller=C) == 4
    assert value(registry, "controller_runtime_active_workers", controller=C) == 1
    assert value(registry, "moduleservice_convergence_seconds_bucket", controller=C, le="0.25") == 1
    with pytest.raises(ValueError, match="unknown reconcile result"):
        metrics.reconcile_result("maybe", 1.0)


def test_queue_adapter(registry: CollectorRegistry, metrics: Metrics) -> None:
    q = metrics.queue_metrics(C)
    assert metrics.queue_metrics(C) is q
    q.add()
    q.add()
    q.depth(2)
    q.queue_latency(0.5)
    q.work_duration(2e-6)
    q.retry()
    q.unfinished(3.5, 2.0)
    assert value(registry, "workqueue_adds_total", **WQ) == 2
    assert value(registry, "workqueue_depth", **WQ) == 2
    assert value(registry, "workqueue_queue_duration_seconds_bucket", le="1.0", **WQ) == 1
    assert value(registry, "workqueue_queue_duration_seconds_bucket", le="0.1", **WQ) == 0
    assert value(registry, "workqueue_work_duration_seconds_bucket", le="1e-05", **WQ) == 1
    assert value(registry, "workqueue_retries_total", **WQ) == 1
    assert value(registry, "workqueue_unfinished_work_seconds", **WQ) == 3.5
    assert value(registry, "workqueue_longest_running_processor_seconds", **WQ) == 2.0

    other = metrics.queue_metrics("other")
    other.add()
    assert value(registry, "workqueue_adds_total", name="other", controller=C) == 1
    assert value(registry, "workqueue_adds_total", **WQ) == 2


def test_informer_adapter(registry: CollectorRegistry, metrics: Metrics, clock: FakeClock) -> None:
    inf = metrics.informer_metrics("pods")
    inf.list()
    inf.relist("initial")
    inf.watch_start()
    clock.now = 2000.0
    inf.event("ADDED")
    inf.event("MODIFIED")
    clock.now = 2500.0
    inf.event("BOOKMARK")
    inf.event("ERROR")  # unknown type: ignored, no new series
    inf.gone()
    inf.relist("gone")
    inf.relist("surprise")
    inf.watch_error("stall")
    inf.watch_error("weird")
    inf.objects(7)
    inf.synced(True)

    def pods(name: str, **labels: str) -> float | None:
        return value(registry, name, resource="pods", **labels)

    assert pods("informer_list_total") == 1
    assert pods("informer_watch_starts_total") == 1
    assert pods("informer_events_total", type="ADDED") == 1
    assert pods("informer_events_total", type="MODIFIED") == 1
    assert pods("informer_events_total", type="BOOKMARK") == 1
    assert pods("informer_events_total", type="ERROR") is None
    assert pods("informer_last_event_timestamp_seconds") == 2500.0
    assert pods("informer_watch_gone_total") == 1
    assert pods("informer_relists_total", reason="initial") == 1
    assert pods("informer_relists_total", reason="gone") == 1
    assert pods("informer_relists_total", reason="other") == 1
    assert pods("informer_watch_errors_total", kind="stall") == 1
    assert pods("informer_watch_errors_total", kind="other") == 1
    assert pods("informer_objects") == 7
    assert pods("informer_synced") == 1
    # other resources untouched
    assert value(registry, "informer_list_total", resource="services") == 0
    assert value(registry, "informer_last_event_timestamp_seconds", resource="services") == 1000.0
    inf.synced(False)
    assert pods("informer_synced") == 0


def test_rest_and_leader(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.observe_request("GET", "200", 0.03, "api:6443")
    metrics.observe_request("watch", "200", 300.0, "api:6443")
    metrics.observe_request("PATCH", "<error>", 0.2, "api:6443")
    assert value(registry, "rest_client_requests_total", code="200", method="GET", host="api:6443") == 1
    assert value(registry, "rest_client_requests_total", code="200", method="WATCH", host="api:6443") == 1
    assert value(registry, "rest_client_requests_total", code="<error>", method="PATCH", host="api:6443") == 1
    assert value(registry, "rest_client_request_duration_seconds_count", verb="GET", host="api:6443") == 1
    assert value(registry, "rest_client_request_duration_seconds_bucket", verb="GET", host="api:6443",
                 le="0.1") == 1
    assert value(registry, "rest_client_request_duration_seconds_count", verb="WATCH",
                 host="api:6443") is None

    metrics.init_leader("module-service-controller")
    metrics.set_leader("module-service-controller", True)
    assert value(registry, "leader_election_master_status", name="module-service-controller") == 1
    metrics.set_leader("module-service-controller", False)
    assert value(registry, "leader_election_master_status", name="module-service-controller") == 0


def test_no_object_name_labels(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.reconcile_result("success", 0.1)
    metrics.observe_request("GET", "200", 0.1, "h")
    metrics.init_leader("lease")
    allowed = {"controller", "result", "name", "code", "method", "host", "verb", "resource", "reason",
               "type", "kind", "le"}
    for family in registry.collect():
        if family.name.startswith(("process_", "python_")):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (family.name, sample.labels)
            for forbidden in ("namespace", "service", "pod", "object", "key", "module"):
                assert forbidden not in sample.labels


def test_exposition_names(registry: CollectorRegistry, metrics: Metrics) -> None:
    text = generate_latest(registry).decode()
    for name in (
        "controller_runtime_reconcile_total", "controller_runtime_reconcile_errors_total",
        "controller_runtime_terminal_reconcile_errors_total", "controller_runtime_reconcile_panics_total",
        "controller_runtime_reconcile_time_seconds_bucket", "controller_runtime_active_workers",
        "controller_runtime_max_concurrent_reconciles", "workqueue_depth", "workqueue_adds_total",
        "workqueue_queue_duration_seconds_bucket", "workqueue_work_duration_seconds_bucket",
        "workqueue_unfinished_work_seconds", "workqueue_longest_running_processor_seconds",
        "workqueue_retries_total", "informer_list_total", "informer_watch_starts_total",
        "informer_relists_total", "informer_watch_gone_total", "informer_watch_errors_total",
        "informer_events_total", "informer_last_event_timestamp_seconds", "informer_objects",
        "informer_synced", "moduleservice_convergence_seconds_bucket", "moduleservice_asyncio_tasks",
        "process_cpu_seconds_total", "process_resident_memory_bytes",
    ):
        assert f"\n{name}" in text, name


@pytest.mark.asyncio
async def test_asyncio_tasks_counted_on_running_loop() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    gate = asyncio.Event()
    extra = [asyncio.create_task(gate.wait()) for _ in range(3)]
    try:
        count = value(registry, "moduleservice_asyncio_tasks")
        assert count is not None
        assert count >= 4  # this test's task plus the three waiters
    finally:
        gate.set()
        await asyncio.gather(*extra)
