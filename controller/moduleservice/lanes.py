"""Two lanes of work, Services first: what each object change enqueues, and in which lane.

- The **Service lane** reconciles a key's Service. ModuleDeployment changes that can change a Service
  (spec, generation, deletion, a new incarnation) and every Service change go here.
- The **status lane** writes ``status.moduleService`` (or the Events that stand for it). It is fed after
  every Service reconcile, by status-only ModuleDeployment updates (mostly our own status writes coming
  back: through the Service lane they would cost a reconcile and restart the quiet period below) and by
  Pod changes (Pods count only in status, never in the Service: a relist of thousands of Pods costs no
  Service reconcile).
- Status and Events wait while the Service lane is busy: until it has been idle for ``quiet`` (a burst is
  over), or until they have waited ``max_wait`` (sustained churn delays them, never starves them).

The convergence histogram measures from the first time a key was seen dirty on a watch to its Service
converged; time spent as a standby does not count (it starts when this replica can act).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import anyio
import structlog
from anyio.abc import TaskStatus

from ..runtime.clock import SYSTEM_CLOCK, Clock
from ..runtime.controller import Controller, Done, Notifier, ReconcileMetrics
from ..runtime.kube.client import JsonObj
from ..runtime.store import EventHandler
from ..runtime.workqueue import QueueMetrics
from .mapping import ServiceKey, md_keys, md_service_change, pod_keys, pod_relevant_change, service_key
from .reconcile import Reconciler
from .statuswriter import StatusWriter

__all__ = ["LOW_PRIORITY_MAX_WAIT", "SERVICE_LANE_QUIET", "Lanes"]

log = structlog.get_logger(__name__)

SERVICE_LANE_QUIET = 0.25
LOW_PRIORITY_MAX_WAIT = 10.0


class Lanes:
    def __init__(self, reconciler: Reconciler, status: StatusWriter, *, label_prefix: str, workers: int,
                 notifier: Notifier, services_ready: Callable[[], bool], status_ready: Callable[[], bool],
                 metrics: ReconcileMetrics, queue_metrics: Callable[[str], QueueMetrics],
                 convergence: Callable[[float], None], clock: Clock = SYSTEM_CLOCK,
                 quiet: float = SERVICE_LANE_QUIET, max_wait: float = LOW_PRIORITY_MAX_WAIT,
                 service_lane: str = "moduleservice", status_lane: str = "moduleservice-status") -> None:
        self._reconciler = reconciler
        self._clock = clock
        self._convergence = convergence
        self.quiet = quiet
        self.max_wait = max_wait
        self._stopped = anyio.Event()
        self._seen: dict[ServiceKey, float] = {}  # key -> when a watch first showed it dirty
        self._services_ready = services_ready
        self._was_ready = False
        # A reconcile that found nothing to do is logged at debug: at start-up every key is one.
        self.services: Controller[ServiceKey] = Controller(
            service_lane, reconciler.reconcile, workers=workers, clock=clock, notifier=notifier,
            ready=self._services_ready_now, on_done=self._service_done, metrics=metrics,
            queue_metrics=queue_metrics(service_lane), log_idle=False)
        # As many workers as the Service lane: the status lane waits for it anyway, and after a restart
        # every key's status is looked at (and the stale ones written) by this lane.
        self.status: Controller[ServiceKey] = Controller(
            status_lane, status.reconcile, workers=workers, clock=clock, notifier=notifier,
            ready=status_ready, admit=self._yield_to_services, queue_metrics=queue_metrics(status_lane),
            log_event="status_reconciled", log_idle=False)
        # Our own Service write coming back needs no reconcile (the reconciler tells; it hears each Service
        # event first).
        services = _Enqueue(self.services, self._seen, clock, _svc_keys, skip=reconciler.service_events.take_echo)
        # A status-only update reaches the status lane only if it can change what that lane writes (mostly
        # it is our own status write coming back).
        status_only = _Enqueue(self.status, None, clock, md_keys, status.status_update_matters)
        self.md_handler: EventHandler = _Route(_Enqueue(self.services, self._seen, clock, md_keys), status_only,
                                               md_service_change)
        self.service_handler: EventHandler = services
        self.pod_handler: EventHandler = _Enqueue(self.status, None, clock, lambda o, n: pod_keys(o, n, label_prefix),
                                                  lambda o, n: pod_relevant_change(o, n, label_prefix))

    @property
    def quiescent(self) -> bool:
        return self.services.quiescent and self.status.quiescent

    def requeue(self, keys: Iterable[ServiceKey]) -> None:
        """Reconcile these Services again (the cache relisted and may have folded their changes)."""
        now = self._clock.now()
        for key in keys:
            self._seen.setdefault(key, now)
            self.services.add(key)

    def refresh_status(self, keys: Iterable[ServiceKey]) -> None:
        for key in keys:
            self.status.add(key)

    # ------------------------------------------------------------------ run (leader only)
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Changes seen while a standby could not be acted on: convergence time starts now, or a failover
        # would show up as minutes of "latency" that no reconcile spent.
        now = self._clock.now()
        for key, seen in self._seen.items():
            self._seen[key] = max(seen, now)
        log.info("workers_starting", workers=self.services.workers)
        async with anyio.create_task_group() as tg:
            await tg.start(self.services.run)
            await tg.start(self.status.run)
            task_status.started()
        log.info("workers_stopped")

    def stop(self) -> None:
        self._stopped.set()
        self.services.stop()
        self.status.stop()

    def _services_ready_now(self) -> bool:
        """The Service lane's gate. Each time it opens (start-up, the CRD back), the keys whose Service is
        missing go first: a ModuleDeployment created while the process was down (or while its CRD was
        away) should not wait behind thousands of keys that only need a look."""
        ready = self._services_ready()
        if ready and not self._was_ready:
            moved = self.services.queue.prioritize(lambda key: self._reconciler.service_view(key) is None)
            log.debug("missing_services_first", keys=moved, queued=len(self.services.queue))
        self._was_ready = ready
        return ready

    # ------------------------------------------------------------------ between the lanes
    def _service_done(self, done: Done[ServiceKey]) -> None:
        key = done.key
        if done.label == "success":
            self.status.add(key)
            seen = self._seen.pop(key, None)
            if seen is not None:
                self._convergence(self._clock.now() - seen)
        elif done.label == "error" and self._reconciler.take_status_due(key):
            self.status.add(key)  # a new failure goes on the Ready condition

    async def _yield_to_services(self, key: ServiceKey, since: float) -> None:
        """Returns once the Service lane has been idle for ``quiet`` (so a burst's API capacity goes to
        Services, and the status of a burst is written after it), or once the work has waited ``max_wait``
        since ``since``, so sustained churn delays status by that much at most, never starves it."""
        await self.wait_for_services(since)

    async def wait_for_services(self, since: float) -> None:
        while not self._stopped.is_set():
            idle = self.services.queue.idle_for()
            waited = self._clock.now() - since
            if idle >= self.quiet or waited >= self.max_wait:
                return
            async with self._clock.move_on_after(min(self.quiet - idle, self.max_wait - waited)):
                await self._stopped.wait()  # a stop ends the wait at once


def _svc_keys(old: JsonObj | None, new: JsonObj | None) -> set[ServiceKey]:
    return {k for x in (old, new) if x is not None if (k := service_key(x)) is not None}


class _Enqueue:
    """Maps object changes to Service keys and adds them; remembers when each key first became dirty."""

    def __init__(self, controller: Controller[ServiceKey], seen: dict[ServiceKey, float] | None, clock: Clock,
                 keys: Callable[[JsonObj | None, JsonObj | None], Iterable[ServiceKey]],
                 relevant: Callable[[JsonObj, JsonObj], bool] | None = None, *,
                 skip: Callable[[JsonObj], bool] | None = None) -> None:
        """``relevant(old, new)``: whether an update matters; ``skip(obj)``: an added or updated object
        that needs no work."""
        self._controller = controller
        self._seen = seen
        self._clock = clock
        self._keys = keys
        self._relevant = relevant
        self._skip = skip

    def _add(self, keys: Iterable[ServiceKey]) -> None:
        now = self._clock.now()
        for key in keys:
            if self._seen is not None:
                self._seen.setdefault(key, now)
            self._controller.add(key)

    def on_add(self, obj: JsonObj) -> None:
        if self._skip is None or not self._skip(obj):
            self._add(self._keys(None, obj))

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        if (self._skip is None or not self._skip(new)) and (self._relevant is None or self._relevant(old, new)):
            self._add(self._keys(old, new))

    def on_delete(self, obj: JsonObj) -> None:
        self._add(self._keys(obj, None))


class _Route:
    """Sends an update to ``first`` when ``relevant`` says it matters there, else to ``other``."""

    def __init__(self, first: EventHandler, other: EventHandler,
                 relevant: Callable[[JsonObj, JsonObj], bool]) -> None:
        self._first, self._other, self._relevant = first, other, relevant

    def on_add(self, obj: JsonObj) -> None:
        self._first.on_add(obj)

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        (self._first if self._relevant(old, new) else self._other).on_update(old, new)

    def on_delete(self, obj: JsonObj) -> None:
        self._first.on_delete(obj)
