"""Prometheus metrics, named like controller-runtime's so existing dashboards and alerts work unchanged.

Everything lives on one :class:`Metrics` object bound to a registry: production passes
``prometheus_client.REGISTRY``, tests a fresh ``CollectorRegistry``. Every label value that is known up
front is initialised at construction (controller-runtime's ``initMetrics``) so that ``rate()`` and
absence alerts see a series from the first scrape. Label values are always drawn from small fixed sets
(controller name, queue name, resource plural, result, verb, code, host, lease name): never an object
name, so cardinality does not grow with the cluster.

The work queue and the informers receive narrow adapters (:class:`QueueMetricsAdapter`,
:class:`InformerMetricsAdapter`) with children already bound, so they never import prometheus_client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from .tasksmetric import AsyncioTasksCollector

__all__ = [
    "CONVERGENCE_BUCKETS",
    "EVENT_TYPES",
    "INFORMER_RESOURCES",
    "RECONCILE_RESULTS",
    "RECONCILE_TIME_BUCKETS",
    "RELIST_REASONS",
    "REST_DURATION_BUCKETS",
    "WATCH_ERROR_KINDS",
    "WORKQUEUE_BUCKETS",
    "InformerMetricsAdapter",
    "Metrics",
    "QueueMetricsAdapter",
]

DEFAULT_CONTROLLER: Final = "moduleservice"

RECONCILE_RESULTS: Final = ("success", "error", "requeue", "requeue_after")
# controller-runtime pkg/internal/controller/metrics/metrics.go, verbatim.
RECONCILE_TIME_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 15.0, 20.0, 25.0, 30.0,
    40.0, 50.0, 60.0,
)
# ExponentialBuckets(10e-9, 10, 12), written out so the `le` labels print exactly like Go's (1e-08 ...).
WORKQUEUE_BUCKETS: Final = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
# client-go rest_client_request_duration_seconds.
REST_DURATION_BUCKETS: Final = (0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
# Watch event -> Service converged: milliseconds when idle, minutes under backoff or a lost watch.
CONVERGENCE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)

INFORMER_RESOURCES: Final = ("moduledeployments", "services", "pods")
RELIST_REASONS: Final = ("initial", "gone", "error", "stall")
WATCH_ERROR_KINDS: Final = ("stall", "transport", "api")
EVENT_TYPES: Final = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK")
# Anything outside the fixed sets is folded into one value rather than minting new series.
_OTHER: Final = "other"


def _bounded(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else _OTHER


class QueueMetricsAdapter:
    """Implements controller/workqueue.py's ``QueueMetrics`` protocol for one named queue."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        labels = {"name": name, "controller": metrics.controller}
        self._depth = metrics.workqueue_depth.labels(**labels)
        self._adds = metrics.workqueue_adds.labels(**labels)
        self._queue_duration = metrics.workqueue_queue_duration.labels(**labels)
        self._work_duration = metrics.workqueue_work_duration.labels(**labels)
        self._unfinished = metrics.workqueue_unfinished_work.labels(**labels)
        self._longest = metrics.workqueue_longest_running.labels(**labels)
        self._retries = metrics.workqueue_retries.labels(**labels)

    def add(self) -> None:
        self._adds.inc()

    def depth(self, value: int) -> None:
        self._depth.set(value)

    def queue_latency(self, seconds: float) -> None:
        self._queue_duration.observe(seconds)

    def work_duration(self, seconds: float) -> None:
        self._work_duration.observe(seconds)

    def retry(self) -> None:
        self._retries.inc()

    def unfinished(self, unfinished_seconds: float, longest_seconds: float) -> None:
        self._unfinished.set(unfinished_seconds)
        self._longest.set(longest_seconds)


class InformerMetricsAdapter:
    """Metrics of one informer; ``resource`` is the plural (``pods``), never an object name."""

    def __init__(self, metrics: Metrics, resource: str, clock: Callable[[], float]) -> None:
        self._m = metrics
        self._resource = resource
        self._clock = clock
        self._list = metrics.informer_list.labels(resource=resource)
        self._watch_starts = metrics.informer_watch_starts.labels(resource=resource)
        self._gone = metrics.informer_watch_gone.labels(resource=resource)
        self._last_event = metrics.informer_last_event.labels(resource=resource)
        self._objects = metrics.informer_objects.labels(resource=resource)
        self._synced = metrics.informer_synced.labels(resource=resource)
        for reason in RELIST_REASONS:
            metrics.informer_relists.labels(resource=resource, reason=reason)
        for kind in WATCH_ERROR_KINDS:
            metrics.informer_watch_errors.labels(resource=resource, kind=kind)
        self._events = {t: metrics.informer_events.labels(resource=resource, type=t) for t in EVENT_TYPES}
        # Start the staleness clock at creation: "no event since start" is as stale as it gets, and a 0
        # here would make `time() - x` alert on every fresh process.
        self._last_event.set(clock())

    def list(self) -> None:
        self._list.inc()

    def watch_start(self) -> None:
        self._watch_starts.inc()

    def relist(self, reason: str) -> None:
        reason = _bounded(reason, RELIST_REASONS)
        self._m.informer_relists.labels(resource=self._resource, reason=reason).inc()

    def gone(self) -> None:
        self._gone.inc()

    def watch_error(self, kind: str) -> None:
        self._m.informer_watch_errors.labels(
            resource=self._resource, kind=_bounded(kind, WATCH_ERROR_KINDS)
        ).inc()

    def event(self, type: str) -> None:
        child = self._events.get(type)
        if child is None:  # an unknown watch event type is a protocol surprise, not a new series
            return
        child.inc()
        self._last_event.set(self._clock())

    def objects(self, n: int) -> None:
        self._objects.set(n)

    def synced(self, b: bool) -> None:
        self._synced.set(1 if b else 0)


class Metrics:
    """All metrics of docs/contracts.md, registered on ``registry``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        controller: str = DEFAULT_CONTROLLER,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.controller = controller
        self._clock = clock
        r = registry

        # --- controller-runtime reconcile metrics ---------------------------------------------------
        self.reconcile_total = Counter(
            "controller_runtime_reconcile_total",
            "Total number of reconciliations per controller",
            ["controller", "result"], registry=r,
        )
        self.reconcile_errors = Counter(
            "controller_runtime_reconcile_errors_total",
            "Total number of reconciliation errors per controller", ["controller"], registry=r,
        )
        self.terminal_reconcile_errors = Counter(
            "controller_runtime_terminal_reconcile_errors_total",
            "Total number of terminal reconciliation errors per controller", ["controller"], registry=r,
        )
        self.reconcile_panics = Counter(
            "controller_runtime_reconcile_panics_total",
            "Total number of reconciliation panics per controller", ["controller"], registry=r,
        )
        self.reconcile_time = Histogram(
            "controller_runtime_reconcile_time_seconds",
            "Length of time per reconciliation per controller",
            ["controller"], buckets=RECONCILE_TIME_BUCKETS, registry=r,
        )
        self.active_workers = Gauge(
            "controller_runtime_active_workers",
            "Number of currently used workers per controller", ["controller"], registry=r,
        )
        self.max_concurrent_reconciles = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller", ["controller"], registry=r,
        )

        # --- workqueue (controller-runtime labels, without the priority-queue label) ----------------
        wq = ["name", "controller"]
        self.workqueue_depth = Gauge("workqueue_depth", "Current depth of workqueue", wq, registry=r)
        self.workqueue_adds = Counter(
            "workqueue_adds_total", "Total number of adds handled by workqueue", wq, registry=r
        )
        self.workqueue_queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            wq, buckets=WORKQUEUE_BUCKETS, registry=r,
        )
        self.workqueue_work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            wq, buckets=WORKQUEUE_BUCKETS, registry=r,
        )
        self.workqueue_unfinished_work = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been observed by "
            "work_duration. Large values indicate stuck threads.",
            wq, registry=r,
        )
        self.workqueue_longest_running = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running.",
            wq, registry=r,
        )
        self.workqueue_retries = Counter(
            "workqueue_retries_total",
            "Total number of items added to the workqueue with a non-zero delay "
            "(rate-limited requeues, RequeueAfter or AddAfter).",
            wq, registry=r,
        )

        # --- REST client ----------------------------------------------------------------------------
        self.rest_requests = Counter(
            "rest_client_requests_total",
            "Number of HTTP requests, partitioned by status code, method, and host.",
            ["code", "method", "host"], registry=r,
        )
        self.rest_duration = Histogram(
            "rest_client_request_duration_seconds",
            "Request latency in seconds. Broken down by verb, and host.",
            ["verb", "host"], buckets=REST_DURATION_BUCKETS, registry=r,
        )

        # --- leader election --------------------------------------------------------------------------
        self.leader_status = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, "
            "1 indicates master. 'name' is the string used to identify the lease.",
            ["name"], registry=r,
        )

        # --- informers (what controller-runtime lacks) ----------------------------------------------
        res = ["resource"]
        self.informer_list = Counter(
            "informer_list_total", "Full LISTs started by the informer.", res, registry=r
        )
        self.informer_watch_starts = Counter(
            "informer_watch_starts_total", "WATCH streams opened by the informer.", res, registry=r
        )
        self.informer_relists = Counter(
            "informer_relists_total", "LISTs by cause (initial, gone = 410, error, stall = two silent watches).",
            ["resource", "reason"], registry=r,
        )
        self.informer_watch_gone = Counter(
            "informer_watch_gone_total", "Watches that ended with 410 Gone (resourceVersion too old).",
            res, registry=r,
        )
        self.informer_watch_errors = Counter(
            "informer_watch_errors_total",
            "Watches that ended with an error, by kind (stall, transport, api).",
            ["resource", "kind"], registry=r,
        )
        self.informer_events = Counter(
            "informer_events_total", "Watch events received, by type.", ["resource", "type"], registry=r
        )
        self.informer_last_event = Gauge(
            "informer_last_event_timestamp_seconds",
            "Unix time of the last watch event or bookmark; use time() - x for staleness.", res, registry=r,
        )
        self.informer_objects = Gauge(
            "informer_objects", "Objects currently in the informer's store.", res, registry=r
        )
        self.informer_synced = Gauge(
            "informer_synced", "1 once the informer has completed its first full list.", res, registry=r
        )

        # --- end to end -------------------------------------------------------------------------------
        self.convergence_seconds = Histogram(
            "moduleservice_convergence_seconds",
            "Time from a change seen on a watch to its Service converged.",
            ["controller"], buckets=CONVERGENCE_BUCKETS, registry=r,
        )
        self.quiescent = Gauge(
            "controller_quiescent",
            "1 when the controller has nothing left to do: caches synced, nothing queued, in progress or "
            "waiting for a delay in any work queue, and no Event waiting to be sent.", registry=r,
        )
        r.register(AsyncioTasksCollector())
        if r is not REGISTRY:
            # The default registry already carries these; a custom one needs them for the same
            # process_* names (the Kubebuilder resources dashboard reads them).
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

        self._init_series()
        self._queues: dict[str, QueueMetricsAdapter] = {}
        self._informers: dict[str, InformerMetricsAdapter] = {}
        self.queue_metrics(controller)  # controller-runtime names the queue after the controller
        for resource in INFORMER_RESOURCES:
            self.informer_metrics(resource)

    def _init_series(self) -> None:
        c = self.controller
        # Children bound once: ``labels()`` on every reconcile and request costs more than the update.
        self._reconcile_children = {result: self.reconcile_total.labels(controller=c, result=result)
                                    for result in RECONCILE_RESULTS}
        self._reconcile_errors = self.reconcile_errors.labels(controller=c)
        self._reconcile_time = self.reconcile_time.labels(controller=c)
        self._active_workers = self.active_workers.labels(controller=c)
        self._convergence = self.convergence_seconds.labels(controller=c)
        self._requests: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self.terminal_reconcile_errors.labels(controller=c)
        self.reconcile_panics.labels(controller=c)
        self.max_concurrent_reconciles.labels(controller=c)

    # --- adapters ---------------------------------------------------------------------------------------
    def queue_metrics(self, name: str) -> QueueMetricsAdapter:
        adapter = self._queues.get(name)
        if adapter is None:
            adapter = self._queues[name] = QueueMetricsAdapter(self, name)
        return adapter

    def informer_metrics(self, resource: str) -> InformerMetricsAdapter:
        adapter = self._informers.get(resource)
        if adapter is None:
            adapter = self._informers[resource] = InformerMetricsAdapter(self, resource, self._clock)
        return adapter

    # --- reconcile worker ---------------------------------------------------------------------------
    def reconcile_result(self, result: str, seconds: float) -> None:
        """One finished reconcile: result is one of RECONCILE_RESULTS; time is observed for all."""
        child = self._reconcile_children.get(result)
        if child is None:
            raise ValueError(f"unknown reconcile result {result!r}")
        child.inc()
        if result == "error":
            self._reconcile_errors.inc()
        self._reconcile_time.observe(seconds)

    def terminal_error(self) -> None:
        """A non-retried error; report it with ``reconcile_result("error", ...)`` as well."""
        self.terminal_reconcile_errors.labels(controller=self.controller).inc()

    def panic(self) -> None:
        """An unexpected exception escaped reconcile; report it as an error result as well."""
        self.reconcile_panics.labels(controller=self.controller).inc()

    def worker_active(self, delta: int) -> None:
        self._active_workers.inc(delta)

    def max_concurrent(self, n: int) -> None:
        self.max_concurrent_reconciles.labels(controller=self.controller).set(n)

    def convergence(self, seconds: float) -> None:
        self._convergence.observe(seconds)

    # --- REST ---------------------------------------------------------------------------------------------
    def observe_request(self, verb: str, code: str, seconds: float, host: str) -> None:
        """One API request. ``code`` is the HTTP status or ``"<error>"``; WATCH counts as a request but
        stays out of the latency histogram (a watch lives for minutes by design)."""
        if (children := self._requests.get((verb, code, host))) is None:
            upper = verb.upper()
            children = self._requests[(verb, code, host)] = (
                self.rest_requests.labels(code=code, method=upper, host=host),
                None if upper == "WATCH" else self.rest_duration.labels(verb=upper, host=host))
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)

    # --- leader election ----------------------------------------------------------------------------------
    def init_leader(self, name: str) -> None:
        self.leader_status.labels(name=name).set(0)

    def set_leader(self, name: str, leading: bool) -> None:
        self.leader_status.labels(name=name).set(1 if leading else 0)
