"""Lifecycle: one anyio task group owns every task (controller-runtime's Manager order).

HTTP probes and metrics (every replica) -> informers (every replica: warm standby), started one by one
and awaited until synced within ``cache_sync_timeout`` -> leader election -> N workers (leader only).
SIGTERM/SIGINT: stop handing out keys, let in-flight reconciles finish (bounded), release the Lease,
then cancel everything; exit 0. A lost lease or a dead task fails the whole group: the process exits
non-zero and the Deployment restarts it, never a half-alive replica.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from prometheus_client import CollectorRegistry

from .config import Config
from .moduleservice.crdschema import not_served_reason, status_pruned_reason
from .moduleservice.mapping import (
    ServiceKey,
    md_keys,
    md_module,
    md_service_change,
    pod_in_scope,
    pod_keys,
    pod_modules,
    pod_relevant_change,
    service_in_scope,
    service_key,
)
from .moduleservice.metrics import DomainMetrics
from .moduleservice.reconcile import (
    MD_MODULE_INDEX,
    POD_MODULE_INDEX,
    NotLeader,
    Reconciler,
    Requeue,
    RequeueAfter,
)
from .moduleservice.transforms import slim_md, slim_pod, slim_service
from .runtime.events import EventRecorder
from .runtime.http import HealthChecks, KubeAuthorizer, MetricsServer, ProbeServer
from .runtime.informer import EventHandler, Informer, Store
from .runtime.kube.client import JsonObj, KubeClient
from .runtime.kube.errors import Forbidden, KubeError, TooManyRequests
from .runtime.kube.resources import CRDS, PODS, SERVICES, Resource
from .runtime.leaderelection import KubeLeaseApi, LeaderElectionConfig, LeaderElector
from .runtime.metrics import Metrics
from .runtime.workqueue import ShutDown, WorkQueue

__all__ = ["CONTROLLER_NAME", "STATUS_QUEUE_NAME", "Manager"]

log = structlog.get_logger(__name__)
CONTROLLER_NAME = "moduleservice"
STATUS_QUEUE_NAME = "moduleservice-status"
_UNFINISHED_PERIOD = 0.5  # client-go's defaultUnfinishedWorkUpdatePeriod
# Status and Events wait while the Service lane is busy: until it has been idle this long (a burst is
# over), or until they have waited _LOW_PRIORITY_MAX_WAIT (sustained churn must not starve them).
_SERVICE_LANE_QUIET = 0.25
_LOW_PRIORITY_MAX_WAIT = 10.0


class _Enqueue:
    """Maps object changes to Service keys and adds them; remembers when each key first became dirty
    so the end-to-end convergence histogram can measure watch-to-converged latency."""

    def __init__(
        self,
        queue: WorkQueue[ServiceKey],
        seen: dict[ServiceKey, float] | None,
        keys: Callable[[JsonObj | None, JsonObj | None], Iterable[ServiceKey]],
        relevant: Callable[[JsonObj, JsonObj], bool] | None = None,
    ) -> None:
        self._queue = queue
        self._seen = seen
        self._keys = keys
        self._relevant = relevant

    def _add(self, keys: Iterable[ServiceKey]) -> None:
        now = time.perf_counter()
        for key in keys:
            if self._seen is not None:
                self._seen.setdefault(key, now)
            self._queue.add(key)

    def on_add(self, obj: JsonObj) -> None:
        self._add(self._keys(None, obj))

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        if self._relevant is None or self._relevant(old, new):
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


class Manager:
    def __init__(self, config: Config, client: KubeClient, *, registry: CollectorRegistry,
                 metrics: Metrics | None = None, handle_signals: bool = True) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self._stop_requested = anyio.Event()
        self.client = client
        self.registry = registry
        self.metrics = metrics or Metrics(registry, controller=CONTROLLER_NAME)
        client.on_request = lambda verb, code, secs: self.metrics.observe_request(verb, code, secs, client.host)
        self.identity = f"{socket.gethostname()}_{uuid.uuid4()}"
        self.profile = profile = config.api
        self.domain_metrics = DomainMetrics(registry, profile)
        prefix = profile.label_prefix
        self.queue: WorkQueue[ServiceKey] = WorkQueue(metrics=self.metrics.queue_metrics(CONTROLLER_NAME))
        # Second, lower-priority lane for status.moduleService: fed after every successful Service
        # reconcile, drained only when the Service lane has no backlog (see _status_worker).
        self.status_queue: WorkQueue[ServiceKey] = WorkQueue(
            metrics=self.metrics.queue_metrics(STATUS_QUEUE_NAME))
        self._seen: dict[ServiceKey, float] = {}
        self.mds = Store({MD_MODULE_INDEX: lambda md: [f"{_ns(md)}/{md_module(md)}"]})
        self.services = Store()
        self.pods = Store({POD_MODULE_INDEX: lambda p: [f"{_ns(p)}/{m}" for m, _ in pod_modules(p, prefix)]})
        self.events = EventRecorder(client, instance=self.identity, idle=self._yield_to_services)
        self.elector: LeaderElector | None = None
        if config.leader_elect:
            self.elector = LeaderElector(
                LeaderElectionConfig(
                    lock_namespace=config.leader_elect_namespace, lock_name=config.leader_elect_name,
                    identity=self.identity, lease_duration=config.lease_duration,
                    renew_deadline=config.renew_deadline, retry_period=config.retry_period,
                ),
                # A lane of its own: the renewal must never wait behind writes, LISTs or Events.
                KubeLeaseApi(client.dedicated(max_connections=2), timeout=max(config.renew_deadline / 2, 1.0)),
                on_change=lambda leading: self.metrics.set_leader(config.leader_elect_name, leading),
            )
            self.metrics.init_leader(config.leader_elect_name)
        self.reconciler = Reconciler(
            client, mds=self.mds, services=self.services, pods=self.pods, profile=profile,
            events=self.events,
            write_allowed=self._write_allowed,
            adopt=config.adopt_unowned_services,
            on_status_pruned=self.domain_metrics.set_status_pruned,
        )
        # A status-only update of a ModuleDeployment (mostly our own status write coming back) goes to the
        # status lane: through the Service lane it would cost a reconcile and restart the quiet period
        # that status itself waits for (_yield_to_services).
        enqueue_md = _Route(_Enqueue(self.queue, self._seen, md_keys), _Enqueue(self.status_queue, None, md_keys),
                            md_service_change)
        enqueue_svc = _Enqueue(self.queue, self._seen, lambda o, n: {k for x in (o, n) if x is not None
                                                                   if (k := service_key(x)) is not None})
        # Pods count only in status (ready replicas), never in the Service: their changes go straight
        # to the status lane, so a relist of thousands of Pods costs no Service reconcile.
        enqueue_pod = _Enqueue(self.status_queue, None, lambda o, n: pod_keys(o, n, prefix),
                               lambda o, n: pod_relevant_change(o, n, prefix))
        # ModuleDeployments are served only while their CRD is (see _serve_mds): the CRD may be missing at
        # start, deleted and re-created. Each incarnation gets fresh informers over the same store, whose
        # first list reconciles the store with what exists now.
        self._md_handler = enqueue_md
        self.md_informers: list[Informer] = []
        self.crds = Store()
        self.crd_informer = Informer(
            client, CRDS, store=self.crds, handlers=[_Changed(self._crd_changed)],
            field_selector=f"metadata.name={profile.crd_name}",
            # One object that rarely changes: only bookmarks (about once a minute) show it alive. Like
            # /healthz, the informer metrics (and the WatchSilent alert) leave this auxiliary watch out:
            # moduleservice_crd_served says what matters.
            idle_timeout=max(config.watch_idle_timeout, 70.0),
        )
        self.crd_problem: str | None = "has not been looked up yet"
        self._crd_seen = False
        self._md_serving = False
        self._pods_synced = False  # only the status lane needs Pods (ready counts)
        self._state_changed = anyio.Event()
        self.core_informers: list[Informer] = [self.crd_informer]
        # Only Pods with a module label and Services named like ours are cached: memory follows the
        # modules, not the cluster (issue 10). Selectors cannot express either rule, so it is client-side.
        # The Service cache also tells the reconciler when it has caught up with a write, and what a deleted
        # Service's addresses were.
        self.core_informers.extend(self._informers(
            SERVICES, self.services, [self.reconciler.service_events, enqueue_svc], slim_service, service_in_scope,
            on_replaced=self._services_relisted))
        self.core_informers.extend(self._informers(
            PODS, self.pods, [enqueue_pod], slim_pod, lambda p: pod_in_scope(p, prefix)))
        self.healthz = HealthChecks()
        self.readyz = HealthChecks()
        self.healthz.add("ping", lambda: None)
        self.readyz.add("crd", lambda: None if self.crd_problem is None else self._crd_message())
        for inf in self.core_informers:
            suffix = f"{inf.resource.plural}-{inf.namespace or 'all'}"
            if inf is not self.crd_informer:
                # A stuck CRD watch only delays noticing a CRD change; it is no reason for a restart.
                self.healthz.add(f"informer-{suffix}", _wedged_check(inf))
            self.readyz.add(f"synced-{suffix}", self._core_check(inf, _synced_check(inf)))
        md_scopes: list[str | None] = list(config.namespaces) or [None]
        for ns in md_scopes:
            suffix = f"{profile.resource.plural}-{ns or 'all'}"
            self.healthz.add(f"informer-{suffix}", self._md_wedged_check(ns))
            self.readyz.add(f"synced-{suffix}", self._md_synced_check(ns))
        if self.elector is not None:
            elector = self.elector
            self.healthz.add("leader-election",
                             lambda: None if elector.healthy() else "holds the lease but stopped renewing it")
        self._stopping = anyio.Event()
        self._workers_running = False

    def _services_relisted(self) -> None:
        now = time.perf_counter()
        for key in self.reconciler.services_relisted():
            self._seen.setdefault(key, now)
            self.queue.add(key)

    def _write_allowed(self) -> bool:
        # The fence: every write checks leadership first, so a replica that has judged its lease lost
        # stops writing at once, before the task group has finished cancelling.
        return self.elector is None or self.elector.is_leader

    def _informers(self, resource: Resource, store: Store, handlers: list[EventHandler],
                   transform: Callable[[JsonObj], JsonObj],
                   keep: Callable[[JsonObj], bool] | None, *,
                   on_replaced: Callable[[], None] | None = None) -> list[Informer]:
        scopes: list[str | None] = list(self.config.namespaces) or [None]
        return [
            Informer(self.client, resource, store=store, namespace=ns, handlers=handlers, transform=transform,
                     metrics=self.metrics.informer_metrics(resource.plural),
                     idle_timeout=self.config.watch_idle_timeout, keep=keep,
                     stream_lists=self.config.streaming_lists, compact_lists=True,  # slim_* return JSON
                     on_replaced=on_replaced)
            for ns in scopes
        ]

    @property
    def informers(self) -> list[Informer]:
        """Every informer running now (the ModuleDeployment ones only while their CRD is served)."""
        return [*self.core_informers, *self.md_informers]

    @property
    def serving(self) -> bool:
        """Caches synced, ModuleDeployments included: reconciles may run."""
        return self._md_serving and all(inf.has_synced for inf in self.informers)

    def _crd_message(self) -> str:
        return (f"CustomResourceDefinition {self.profile.crd_name} {self.crd_problem}: "
                f"ModuleDeployments ({self.profile.api_version}) are not served until it is")

    def _notify(self) -> None:
        self._state_changed.set()
        self._state_changed = anyio.Event()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._state_changed.wait()

    def _crd_changed(self) -> None:
        """Called on every change of our CRD (or its removal); logs one line per change of state."""
        crd = self.crds.get(self.profile.crd_name)
        problem = not_served_reason(crd, self.profile.version)
        if crd is not None and problem is None:
            was_pruned = self.reconciler.status_pruned is not None
            self.reconciler.set_status_pruned(status_pruned_reason(crd, self.profile.version))
            if was_pruned and self.reconciler.status_pruned is None:
                for key in {k for md in self.mds.values() for k in md_keys(None, md)}:
                    self.status_queue.add(key)  # the CRD can store it now: write every status once
        if problem == self.crd_problem:
            return
        # Log when serving starts or stops, not on every step in between (created -> names accepted ->
        # established): one line per change a user cares about.
        flipped = (problem is None) != (self.crd_problem is None) or not self._crd_seen
        self._crd_seen = True
        self.crd_problem = problem
        self.domain_metrics.set_crd_served(problem is None)
        if flipped and problem is None:
            log.info("crd_served", crd=self.profile.crd_name, api_version=self.profile.api_version)
        elif flipped:
            log.warning("crd_not_served", crd=self.profile.crd_name, reason=problem, message=self._crd_message())
        self._notify()

    async def _check_crd_access(self) -> None:
        """Without read access to CRDs (RBAC from before profiles), serve as if the CRD were there: the
        ModuleDeployment informer then retries on its own backoff, and pruned status is still found from
        PATCH responses. Said once, with what to grant."""
        try:
            await self.client.request("GET", CRDS.path(), params={
                "fieldSelector": f"metadata.name={self.profile.crd_name}", "limit": 1})
        except Forbidden:
            # Expected in namespaced mode (a Role cannot grant a cluster-scoped read): one line, no alarm.
            self.core_informers.remove(self.crd_informer)
            self._crd_seen = True
            self.crd_problem = None
            self.domain_metrics.set_crd_served(True)
            log.info("crd_not_followed", crd=self.profile.crd_name,
                     message="no read access to CustomResourceDefinitions: assuming the CRD is installed; grant "
                             f"get, list and watch on customresourcedefinitions/{self.profile.crd_name} to "
                             "follow it")
        except KubeError:
            pass  # the informer retries and reports it

    async def _serve_mds(self) -> None:
        """Runs the ModuleDeployment informers exactly while the CRD is served: no error storm and no
        crash loop while it is missing, and a fresh list as soon as it (re)appears."""
        while True:
            await self._wait_for(lambda: self.crd_problem is None)
            self.md_informers = self._informers(self.profile.resource, self.mds, [self._md_handler], slim_md, None)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._start_md_informers, self.md_informers)
                await self._wait_for(lambda: self.crd_problem is not None)
                tg.cancel_scope.cancel()
            self._md_serving = False
            self.md_informers = []
            self._notify()

    async def _start_md_informers(self, informers: list[Informer]) -> None:
        async with anyio.create_task_group() as tg:
            for inf in informers:
                await tg.start(inf.run)
            self._md_serving = True
            log.info("moduledeployments_synced", objects=len(self.mds), api_version=self.profile.api_version)
            self._notify()

    def _core_check(self, inf: Informer, check: Callable[[], str | None]) -> Callable[[], str | None]:
        # The CRD informer does not run without read access to CRDs (_check_crd_access).
        return lambda: check() if inf in self.core_informers else None

    def _md_wedged_check(self, ns: str | None) -> Callable[[], str | None]:
        def check() -> str | None:
            inf = next((i for i in self.md_informers if i.namespace == ns), None)
            return None if inf is None else _wedged_check(inf)()
        return check

    def _md_synced_check(self, ns: str | None) -> Callable[[], str | None]:
        def check() -> str | None:
            if self.crd_problem is not None:
                return self._crd_message()
            inf = next((i for i in self.md_informers if i.namespace == ns), None)
            return None if inf is not None and inf.has_synced else "informer has not synced"
        return check

    # ------------------------------------------------------------------ run
    async def run(self) -> None:
        cfg = self.config
        async with anyio.create_task_group() as tg:
            if self.handle_signals:
                tg.start_soon(self._signals)
            tg.start_soon(self._shutdown_on_request, tg)
            probes = ProbeServer(cfg.health_probe_bind_address, self.healthz, self.readyz)
            await tg.start(probes.run)
            metrics_server = MetricsServer(
                cfg.metrics_bind_address, self.registry, secure=cfg.metrics_secure,
                cert_dir=cfg.metrics_cert_dir,
                authorizer=KubeAuthorizer(self.client) if cfg.metrics_secure else None,
            )
            await tg.start(metrics_server.run)
            await tg.start(self.events.run)
            await tg.start(self.queue.run)
            await tg.start(self.status_queue.run)
            tg.start_soon(self._unfinished_loop)
            started = time.perf_counter()
            deadline = anyio.current_time() + cfg.cache_sync_timeout
            with anyio.fail_after(cfg.cache_sync_timeout):
                await self._check_crd_access()
                if self.crd_informer in self.core_informers:
                    await tg.start(self.crd_informer.run)
                    self._crd_changed()  # the first list found it or not: say which, once
            # Every list at once (the API server encodes one while we decode another), and the
            # ModuleDeployments' too: start-up costs the longest list, not their sum. The Service lane
            # needs ModuleDeployments and Services; only the status lane waits for Pods as well.
            tg.start_soon(self._serve_mds)
            tg.start_soon(self._sync_pods, tg, deadline, started)
            with anyio.fail_at(deadline):
                await _start_all(tg, [inf for inf in self.core_informers if inf.resource is SERVICES])
            self.metrics.max_concurrent(cfg.workers)
            if self.elector is not None:
                await self.elector.run(self._work)
            else:
                await self._work()
            tg.cancel_scope.cancel()

    async def _sync_pods(self, tg: TaskGroup, deadline: float, started: float) -> None:
        with anyio.fail_at(deadline):
            await _start_all(tg, [inf for inf in self.core_informers if inf.resource is PODS])
        self._pods_synced = True
        self._notify()
        log.info("caches_synced", seconds=round(time.perf_counter() - started, 3),
                 moduledeployments=len(self.mds), services=len(self.services), pods=len(self.pods))

    def request_stop(self) -> None:
        """Graceful stop, as on SIGTERM (tests and embedding use this)."""
        self._stop_requested.set()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("shutdown_requested", signal=signal.Signals(signum).name)
                self.request_stop()

    async def _shutdown_on_request(self, tg: TaskGroup) -> None:
        await self._stop_requested.wait()
        self._stopping.set()
        self._notify()
        self.queue.shutdown()
        self.status_queue.shutdown()
        if not self._workers_running or (self.elector is not None and not self.elector.is_leader):
            # No workers (standby, or still syncing): nothing in flight to wait for.
            tg.cancel_scope.cancel()
            return
        # Workers finish their current key and return; run() then releases the Lease and cancels the
        # group. Past the timeout, cancel anyway (every write we make is safe to repeat).
        await anyio.sleep(self.config.shutdown_timeout)
        log.warning("shutdown_timeout", seconds=self.config.shutdown_timeout)
        tg.cancel_scope.cancel()

    async def _work(self) -> None:
        log.info("workers_starting", workers=self.config.workers)
        # Changes seen while a standby could not be acted on: convergence time starts now, or a
        # failover would show up as minutes of "latency" that no reconcile spent.
        now = time.perf_counter()
        self._seen.update({key: max(seen, now) for key, seen in self._seen.items()})  # in place: shared
        self._workers_running = True
        async with anyio.create_task_group() as workers:
            for i in range(self.config.workers):
                workers.start_soon(self._worker, i)
            for i in range(max(1, self.config.workers // 2)):
                workers.start_soon(self._status_worker, i)
        log.info("workers_stopped")

    async def _unfinished_loop(self) -> None:
        while True:
            self.queue.update_unfinished()
            self.status_queue.update_unfinished()
            await anyio.sleep(_UNFINISHED_PERIOD)

    async def _worker(self, n: int) -> None:
        while not self._stopping.is_set():
            await self._wait_for(lambda: self._md_serving or self._stopping.is_set())
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            if self._stopping.is_set():
                self.queue.done(key)
                return
            if not self._md_serving:
                # The CRD went away meanwhile: an empty ModuleDeployment cache must not delete Services.
                self.queue.add(key)
                self.queue.done(key)
                continue
            try:
                await self._process(key)
            finally:
                self.queue.done(key)

    async def _status_worker(self, n: int) -> None:
        while not self._stopping.is_set():
            await self._wait_for(lambda: (self._md_serving and self._pods_synced) or self._stopping.is_set())
            try:
                key = await self.status_queue.get()
            except ShutDown:
                return
            try:
                since = self.status_queue.handed_out_added_at(key)
                await self._yield_to_services(time.monotonic() if since is None else since)
                if not self._stopping.is_set() and self._md_serving:
                    await self._process_status(key)
            finally:
                self.status_queue.done(key)

    async def _yield_to_services(self, since: float) -> None:
        """Services first: status and Events are informational. Returns once the Service lane has been
        idle for _SERVICE_LANE_QUIET (so a burst's API capacity goes to Services, and the status of a
        burst is written after it), or once the work has waited _LOW_PRIORITY_MAX_WAIT since ``since``
        (a monotonic time), so sustained churn delays status by that much at most, never starves it."""
        while not self._stopping.is_set():
            idle = self.queue.idle_for()
            waited = time.monotonic() - since
            if idle >= _SERVICE_LANE_QUIET or waited >= _LOW_PRIORITY_MAX_WAIT:
                return
            await anyio.sleep(min(_SERVICE_LANE_QUIET - idle, _LOW_PRIORITY_MAX_WAIT - waited))

    async def _process_status(self, key: ServiceKey) -> None:
        started = time.perf_counter()
        try:
            report = await self.reconciler.reconcile_status(key)
        except (KubeError, NotLeader) as exc:
            if isinstance(exc, TooManyRequests) and exc.retry_after:
                # Honour the server's Retry-After as the Service lane does; the 5 ms exponential
                # backoff would retry a throttled status write ~10 times in the first 5 s.
                self.status_queue.add_after(key, exc.retry_after)
            else:
                self.status_queue.add_rate_limited(key)
            log.warning("status_reconciled", key=str(key), result="error", error=str(exc),
                        retries=self.status_queue.num_requeues(key))
            return
        self.status_queue.forget(key)
        if report.actions:
            log.info("status_reconciled", key=str(key), result="success", actions=report.actions,
                     duration_ms=round((time.perf_counter() - started) * 1000, 2))

    async def _process(self, key: ServiceKey) -> None:
        seen_at = self._seen.pop(key, None)
        started = time.perf_counter()
        self.metrics.worker_active(1)
        result = "success"
        error: str | None = None
        actions: list[str] = []
        delay: float | None = None
        try:
            report = await self.reconciler.reconcile(key)
            actions = report.actions
        except RequeueAfter as exc:
            result, error, delay = "requeue_after", str(exc), exc.delay
        except Requeue as exc:
            result, error = "requeue", str(exc)
        except NotLeader as exc:
            result, error = "error", str(exc)
        except TooManyRequests as exc:
            result, error, delay = "error", str(exc), exc.retry_after
        except KubeError as exc:
            result, error = "error", str(exc)
        finally:
            self.metrics.worker_active(-1)
        duration = time.perf_counter() - started
        self.metrics.reconcile_result(result, duration)
        if result == "success":
            self.queue.forget(key)
            self.status_queue.add(key)
            if seen_at is not None:
                self.metrics.convergence(time.perf_counter() - seen_at)
        else:
            if seen_at is not None:
                self._seen[key] = min(seen_at, self._seen.get(key, seen_at))
            if result == "requeue_after":
                self.queue.forget(key)  # a deliberate wait, not a failure (controller-runtime's RequeueAfter)
            elif self.reconciler.take_status_due(key):
                self.status_queue.add(key)  # a new failure goes on the Ready condition
            if delay:
                self.queue.add_after(key, delay)
            else:
                self.queue.add_rate_limited(key)
        fields: dict[str, Any] = {"key": str(key), "result": result, "duration_ms": round(duration * 1000, 2),
                                  "actions": actions}
        if error is not None:
            fields["error"] = error
            fields["retries"] = self.queue.num_requeues(key)
        if result in ("requeue", "requeue_after"):
            log.debug("reconciled", **fields)  # 409 / cache lag / a fight's backoff: expected, not an error
        elif result == "error":
            log.warning("reconciled", **fields)
        else:
            log.info("reconciled", **fields)


def _wedged_check(inf: Informer) -> Callable[[], str | None]:
    # Liveness follows controller-runtime: the process is not wedged. An API outage or a silent watch must
    # not fail it (a restart cannot help, and a restarted process that finds the API down exits 1); the
    # informer relists after two silent watches and backs off on errors, and each attempt is a turn.
    limit = 2 * inf.step_limit

    def check() -> str | None:
        wedged = inf.wedged_for()
        if wedged > limit:
            return f"informer loop has not turned for {wedged:.0f}s (last error: {inf.last_error})"
        return None
    return check


class _Changed:
    """An informer handler that only says "something changed"."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn

    def on_add(self, obj: JsonObj) -> None:
        self._fn()

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        self._fn()

    def on_delete(self, obj: JsonObj) -> None:
        self._fn()


async def _start_all(tg: TaskGroup, informers: Iterable[Informer]) -> None:
    """Starts the informers in ``tg`` together; returns once every one has synced."""
    async with anyio.create_task_group() as starting:
        for inf in informers:
            starting.start_soon(tg.start, inf.run)


def _synced_check(inf: Informer) -> Callable[[], str | None]:
    return lambda: None if inf.has_synced else "informer has not synced"


def _ns(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")

