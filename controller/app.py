"""The composition root: the framework's pieces wired for module Services, from one Config.

What to watch and how objects map to keys (the lanes' handlers), how a key is reconciled (the
Reconciler and the StatusWriter), and the CRD gate come from :mod:`controller.moduleservice`; the
manager, the controllers, the informers, leader election, health checks and HTTP servers from
:mod:`controller.runtime`. Nothing here decides anything: it only connects them.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable

import structlog
from prometheus_client import CollectorRegistry

from .config import Config
from .moduleservice.crdgate import CrdGate
from .moduleservice.lanes import Lanes
from .moduleservice.mapping import md_keys, md_module, pod_in_scope, pod_modules, service_in_scope
from .moduleservice.metrics import DomainMetrics
from .moduleservice.reconcile import MD_MODULE_INDEX, POD_MODULE_INDEX, Reconciler
from .moduleservice.statuswriter import StatusWriter
from .moduleservice.transforms import intern_md, intern_pod, intern_service, slim_md, slim_pod_for, slim_service
from .runtime.authz import KubeAuthorizer
from .runtime.clock import SYSTEM_CLOCK, Clock
from .runtime.events import EventRecorder
from .runtime.health import HealthChecks
from .runtime.http import MetricsServer, ProbeServer
from .runtime.informer import Informer
from .runtime.kube.client import JsonObj, KubeClient
from .runtime.kube.resources import PODS, SERVICES, Resource
from .runtime.leaderelection import LeaderElector
from .runtime.leaselock import KubeLeaseApi, LeaderElectionConfig
from .runtime.manager import Manager
from .runtime.metrics import Metrics
from .runtime.store import EventHandler, Store

__all__ = ["App"]

log = structlog.get_logger(__name__)


class App:
    """Everything one controller process runs; :meth:`run` until SIGTERM or :meth:`request_stop`."""

    def __init__(self, config: Config, client: KubeClient, *, registry: CollectorRegistry,
                 metrics: Metrics | None = None, handle_signals: bool = True, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.client = client
        self.registry = registry
        self.clock = clock
        self.metrics = metrics or Metrics(registry)
        client.on_request = lambda verb, code, secs: self.metrics.observe_request(verb, code, secs, client.host)
        self.identity = f"{socket.gethostname()}_{uuid.uuid4()}"
        self.profile = profile = config.api
        self.domain_metrics = DomainMetrics(registry, profile)
        prefix = profile.label_prefix

        self.manager = manager = Manager(
            elector=self._elector(), clock=clock, cache_sync_timeout=config.cache_sync_timeout,
            shutdown_timeout=config.shutdown_timeout, handle_signals=handle_signals)
        self.mds = Store({MD_MODULE_INDEX: lambda md: [f"{_ns(md)}/{md_module(md)}"]})
        self.services = Store()
        self.pods = Store({POD_MODULE_INDEX: lambda p: [f"{_ns(p)}/{m}" for m, _ in pod_modules(p, prefix)]})
        # Events wait for the Service lane too (see Lanes): the recorder asks the lanes before each send.
        self.events = EventRecorder(client, instance=self.identity, clock=clock,
                                    idle=lambda since: self.lanes.wait_for_services(since))  # noqa: PLW0108 (made below)
        self.reconciler = Reconciler(
            client, mds=self.mds, services=self.services, pods=self.pods, profile=profile, events=self.events,
            write_allowed=manager.write_allowed, adopt=config.adopt_unowned_services, clock=clock)
        self.status_writer = StatusWriter(self.reconciler, on_status_pruned=self.domain_metrics.set_status_pruned)
        self.crd_gate = CrdGate(
            client, profile, notifier=manager.notifier, idle_timeout=config.watch_idle_timeout,
            make_informers=lambda: self._informers(profile.resource, self.mds, [self.lanes.md_handler], slim_md, None,
                                                   intern=intern_md),
            on_status_pruned=self.status_writer.set_status_pruned, on_served=self.domain_metrics.set_crd_served,
            on_schema_writable=self._refresh_status)
        self.lanes = Lanes(
            self.reconciler, self.status_writer, label_prefix=prefix, workers=config.workers,
            notifier=manager.notifier, services_ready=lambda: self.crd_gate.serving,
            status_ready=lambda: self.crd_gate.serving and self.pods_synced,
            metrics=self.metrics, queue_metrics=self.metrics.queue_metrics,
            convergence=self.metrics.convergence, clock=clock)
        # Only Pods with a module label and Services named like ours are cached: memory follows the modules,
        # not the cluster. Selectors cannot express either rule, so it is client-side. The Service cache also
        # tells the reconciler when it has caught up with a write, and a deleted Service's addresses.
        self.service_informers = self._informers(
            SERVICES, self.services, [self.reconciler.service_events, self.lanes.service_handler], slim_service,
            service_in_scope, intern=intern_service,
            on_replaced=lambda: self.lanes.requeue(self.reconciler.services_relisted()))
        self.pod_informers = self._informers(PODS, self.pods, [self.lanes.pod_handler], slim_pod_for(prefix),
                                             lambda p: pod_in_scope(p, prefix), intern=intern_pod)

        manager.add_server(ProbeServer(config.health_probe_bind_address, manager.healthz, manager.readyz))
        manager.add_server(MetricsServer(
            config.metrics_bind_address, registry, secure=config.metrics_secure, cert_dir=config.metrics_cert_dir,
            authorizer=KubeAuthorizer(client) if config.metrics_secure else None))
        manager.add(self.events)
        manager.add_cache(self.crd_gate)
        for inf in self.service_informers:
            manager.add_cache(inf)
        # Only the status lane needs Pods (ready counts): the Service lane does not wait for their list.
        for inf in self.pod_informers:
            manager.add_cache(inf, wait=False)
        manager.add_leader_elected(self.lanes)
        manager.add_quiescence(lambda: self.lanes.quiescent)
        manager.add_quiescence(lambda: self.events.pending == 0)
        manager.on_synced = lambda: {"moduledeployments": len(self.mds), "services": len(self.services),
                                     "pods": len(self.pods)}
        self.metrics.quiescent.set_function(lambda: 1.0 if self.quiescent else 0.0)
        self._add_checks(manager.healthz, manager.readyz)

    # ------------------------------------------------------------------ state
    @property
    def informers(self) -> list[Informer]:
        """Every informer running now (the ModuleDeployment ones only while their CRD is served)."""
        crd = [self.crd_gate.crd_informer] if self.crd_gate.crd_informer is not None else []
        return [*crd, *self.service_informers, *self.pod_informers, *self.crd_gate.md_informers]

    @property
    def pods_synced(self) -> bool:
        return all(inf.has_synced for inf in self.pod_informers)

    @property
    def serving(self) -> bool:
        """Caches synced, ModuleDeployments included: reconciles may run."""
        return self.crd_gate.serving and all(inf.has_synced for inf in self.informers)

    @property
    def quiescent(self) -> bool:
        """Nothing left to do: caches synced, nothing queued, in progress or waiting for a delay in either
        lane, no Event waiting to be sent (exported as ``controller_quiescent``)."""
        return self.serving and self.manager.quiescent

    @property
    def healthz(self) -> HealthChecks:
        return self.manager.healthz

    @property
    def readyz(self) -> HealthChecks:
        return self.manager.readyz

    async def run(self) -> None:
        await self.manager.run()

    def request_stop(self) -> None:
        self.manager.request_stop()

    # ------------------------------------------------------------------ wiring
    def _elector(self) -> LeaderElector | None:
        cfg = self.config
        if not cfg.leader_elect:
            return None
        self.metrics.init_leader(cfg.leader_elect_name)
        return LeaderElector(
            LeaderElectionConfig(
                lock_namespace=cfg.leader_elect_namespace, lock_name=cfg.leader_elect_name, identity=self.identity,
                lease_duration=cfg.lease_duration, renew_deadline=cfg.renew_deadline, retry_period=cfg.retry_period),
            # A lane of its own: the renewal must never wait behind writes, LISTs or Events.
            KubeLeaseApi(self.client.dedicated(max_connections=2), timeout=max(cfg.renew_deadline / 2, 1.0)),
            clock=self.clock, on_change=lambda leading: self.metrics.set_leader(cfg.leader_elect_name, leading))

    def _informers(self, resource: Resource, store: Store, handlers: list[EventHandler],
                   transform: Callable[[JsonObj], JsonObj], keep: Callable[[JsonObj], bool] | None, *,
                   intern: Callable[[JsonObj], None] | None = None,
                   on_replaced: Callable[[], None] | None = None) -> list[Informer]:
        scopes: list[str | None] = list(self.config.namespaces) or [None]
        return [
            Informer(self.client, resource, store=store, namespace=ns, handlers=handlers, transform=transform,
                     metrics=self.metrics.informer_metrics(resource.plural), clock=self.clock,
                     idle_timeout=self.config.watch_idle_timeout, keep=keep,
                     stream_lists=self.config.streaming_lists, compact_lists=True,  # slim_* return JSON
                     intern=intern, on_replaced=on_replaced)
            for ns in scopes
        ]

    def _refresh_status(self) -> None:
        """The CRD can store status.moduleService now: write every status once."""
        self.lanes.refresh_status({k for md in self.mds.values() for k in md_keys(None, md)})

    def _add_checks(self, healthz: HealthChecks, readyz: HealthChecks) -> None:
        for inf in [*self.service_informers, *self.pod_informers]:
            suffix = f"{inf.resource.plural}-{inf.namespace or 'all'}"
            healthz.add(f"informer-{suffix}", _wedged_check(inf))
            readyz.add(f"synced-{suffix}", _synced_check(inf))
        self.crd_gate.add_checks(healthz, readyz, list(self.config.namespaces) or [None], _wedged_check)


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


def _synced_check(inf: Informer) -> Callable[[], str | None]:
    return lambda: None if inf.has_synced else "informer has not synced"


def _ns(obj: JsonObj) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "")
