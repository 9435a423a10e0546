"""An emulator of Koupleless module-controller V1.0.0's ModuleDeployment reconciler, for tests: what it does
to ModuleDeployments and to ``<module>-service``, step by step in the order V1.0.0 does it.

Written from the source of tag V1.0.0 (commit fb48aef6); comments cite ``file:line`` of that tag. Short
names used below:

- MDC: internal/controller/moduledeployment_controller.go
- CREATE_H: internal/handler/service_create_handler.go
- DELETE_H: internal/handler/service_delete_handler.go
- EVENT: internal/event/event.go
- UTILS: internal/utils/controller_utils.go
- TYPES: api/v1alpha1/moduledeployment_types.go, MTYPES: api/v1alpha1/module_types.go
- FIN: internal/constants/finalizer/well_known_finalizers.go

What is faithful:

- Trigger: ``For(&ModuleDeployment{})`` with no predicates (MDC:545-549), so every watch event of a
  ModuleDeployment (status writes included, deletes too) reconciles it; nothing else does (no watch on
  Deployments or Services). One worker (controller-runtime's MaxConcurrentReconciles defaults to 1) and
  controller-runtime's default rate limiter (per item 5 ms doubling to 1000 s, and a 10 qps / 100 burst
  bucket) for errors and ``Requeue``; ``RequeueAfter`` re-adds after that delay.
- Reads come from a cache (the manager's client reads from informers): ModuleDeployments, Services and
  Deployments are informers here, so a reconcile can act on a Service the cache still shows after it is
  gone (a second DELETE answered 404) or miss one just created (a CREATE answered 409). Writes go to the
  API server; an Update carries the cached resourceVersion (a stale one is a 409 and a requeue).
- Writes are the object decoded into V1.0.0's Go types and encoded again (:func:`go_module_deployment`):
  fields its types lack are dropped (a status Update replaces the whole status; our status.moduleService
  is lost even where the CRD keeps it) and zero values without ``omitempty`` are written (an Update writes
  ``serviceStrategy.targetPort: 0`` into a ModuleDeployment that had none).
- Handler errors are discarded by the reconciler (MDC:95, MDC:107): a refused DELETE or CREATE is counted
  and logged ("handle event error", EVENT:46-48) and the reconcile goes on.

What is abstracted (these tests run no base Pods, no ModuleReplicaSet or Module controller):

- ModuleReplicaSets and Modules are not created. :class:`_ReplicaSet` stands in for the newest
  ModuleReplicaSet (MDC:311-371 createOrGetModuleReplicas, MDC:527-542 createNewReplicaSet), with its
  module and spec.replicas; no module is ever installed (no base Pods), so its status.replicas is 0.
- The batch release (MDC:393-485 updateModuleReplicaSet, MDC:219-243 handleInitModuleDeployment) is one
  batch: Executing scales the stand-in to spec.replicas at once (one status write), the next reconcile
  finds no delta and writes Completed (MDC:405-415). Paused and WaitingForConfirmation (MDC:176-193) are
  followed when found in a status someone else wrote.
- Deleting ModuleReplicaSets (MDC:246-283): the stand-in is gone as soon as it is deleted (the real one
  keeps a finalizer until the ModuleReplicaSet controller removes it); the reconcile still requeues after
  GetNextReconcileTime (UTILS:79-92, 10 s in the first ten minutes) before it removes the finalizer.
- Panics are never emulated; each is recorded in :attr:`ModuleControllerV1.would_panic` and the reconcile
  goes on as if the nil value were empty. V1.0.0 would exit (controller-runtime re-panics) and, restarted,
  panic again on the same object: a ModuleDeployment without metadata.labels (a nil map write in
  generateModuleReplicas, MDC:490-491, reached when the first ModuleReplicaSet is created), a nil
  ModuleReplicaSet (MDC:201, MDC:222), a nil releaseStatus while terminating (MDC:98).
- Not emulated: leader election, metrics, the 10 h resync, the symmetric-replicas status read beyond
  ``spec.replicas: -1`` (MDC:85-92), the other reconcilers (ModuleReplicaSet, Module, Pod).
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import structlog
from anyio.abc import TaskStatus

from controller.runtime.informer import Informer
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.errors import AlreadyExists, ApiError, KubeError, NotFound
from controller.runtime.kube.resources import SERVICES, Resource
from controller.runtime.store import EventHandler, Store, object_key
from controller.runtime.workqueue import (
    BucketRateLimiter,
    ItemExponentialFailureRateLimiter,
    MaxOfRateLimiter,
    ShutDown,
    WorkQueue,
)

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_LABEL_PREFIX",
    "DEFAULT_VERSION",
    "MODULE_EXISTED",
    "MODULE_REPLICASET_EXISTED",
    "V1_USER_AGENT",
    "ModuleControllerV1",
    "Outcome",
    "ServiceOp",
    "go_module_deployment",
    "run_module_controller_v1",
    "upstream_service",
]

log = structlog.get_logger(__name__)

DEFAULT_GROUP = "koupleless.io"  # api/v1alpha1/groupversion_info.go:29
DEFAULT_VERSION = "v1alpha1"
DEFAULT_LABEL_PREFIX = "module.koupleless.io/"  # internal/constants/label/well_known_labels.go:42
# FIN:6 and FIN:8; V1.0.0 writes these whatever API group it serves.
MODULE_REPLICASET_EXISTED = "koupleless.io/module-replicaset-existed"
MODULE_EXISTED = "koupleless.io/module-existed"

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
# client-go's default user agent for the binary V1.0.0's image runs (its Dockerfile:24 builds ``manager``). Its
# writes name no fieldManager, so the API server records the user agent's first word, "manager", in
# managedFields; a client with our own user agent would be taken for our controller there.
V1_USER_AGENT = "manager/v0.0.0 (linux/amd64) kubernetes/$Format"

# ReleaseProgress values (TYPES:45-52).
INIT, WAITING, EXECUTING, PAUSED = "Init", "WaitingForConfirmation", "Executing", "Paused"
COMPLETED, TERMINATING, TERMINATED = "Completed", "Terminating", "Terminated"

Outcome = Literal["ok", "not_found", "already_exists", "refused", "error"]


@dataclass(frozen=True, slots=True)
class ServiceOp:
    """One CREATE or DELETE of ``<module>-service`` sent to the API server."""

    at: float  # time.monotonic()
    op: Literal["create", "delete"]
    service: str
    module_deployment: str
    outcome: Outcome  # "refused": the API server answered another error (403, 422, ...); "error": no answer
    code: int | None = None
    message: str = ""


@dataclass
class _Result:
    requeue: bool = False
    requeue_after: float = 0.0


@dataclass
class _ReplicaSet:
    """Stands in for a ModuleDeployment's newest ModuleReplicaSet (see the module docstring)."""

    module: tuple[str, str]  # (name, version): a change makes a new one (MDC:352, MDC:551-553)
    url: str
    replicas: int  # spec.replicas


def upstream_service(namespace: str, module: str, strategy: Mapping[str, Any], label_prefix: str) -> JsonObj:
    """The Service ServiceCreateHandler creates (CREATE_H:39-58): no labels, no annotations, no owner
    references; selector ``{<prefix><module>: "true"}``; one port http/TCP; NodePort. Zero values are sent as
    Go sends them: a missing port is 0 (refused by the API server), a missing targetPort 0 (defaulted to
    the port by the API server)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"{module}-service", "namespace": namespace},
        "spec": {
            "selector": {f"{label_prefix}{module}": "true"},
            "ports": [{"name": "http", "protocol": "TCP", "port": _int(strategy.get("port")),
                       "targetPort": _int_or_string(strategy.get("targetPort"))}],
            "type": "NodePort",
        },
    }


class _Enqueue(EventHandler):
    def __init__(self, queue: WorkQueue[str]) -> None:
        self.queue = queue

    def on_add(self, obj: JsonObj) -> None:
        self.queue.add(object_key(obj))

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        self.queue.add(object_key(new))

    def on_delete(self, obj: JsonObj) -> None:
        self.queue.add(object_key(obj))


class ModuleControllerV1:
    """V1.0.0's ModuleDeploymentReconciler for one namespace. Run :meth:`run` in a task group (or use
    :func:`run_module_controller_v1`); read the counters while it runs. ``client`` should send
    :data:`V1_USER_AGENT` (``upstream_client`` does), so that managedFields name its writes as V1.0.0's.

    ``replicaset_requeue_after``: the delay before the finalizer ``module-replicaset-existed`` is removed
    once the ModuleReplicaSets are deleted; None is V1.0.0's (UTILS:79-92: 10 s in the first ten minutes
    of the deletion).
    """

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        *,
        group: str = DEFAULT_GROUP,
        version: str = DEFAULT_VERSION,
        label_prefix: str = DEFAULT_LABEL_PREFIX,
        finalizers: tuple[str, str] = (MODULE_REPLICASET_EXISTED, MODULE_EXISTED),
        replicaset_requeue_after: float | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.resource = Resource(group, version, "moduledeployments", "ModuleDeployment")
        self.label_prefix = label_prefix
        self.replicaset_finalizer, self.module_finalizer = finalizers
        self.replicaset_requeue_after = replicaset_requeue_after
        # controller-runtime v0.15's DefaultControllerRateLimiter.
        self.queue: WorkQueue[str] = WorkQueue(rate_limiter=MaxOfRateLimiter(
            ItemExponentialFailureRateLimiter[str](0.005, 1000.0), BucketRateLimiter[str](10.0, 100)))
        self.mds = Store()
        self.services = Store()
        self.deployments = Store()
        self.informers = [
            Informer(client, self.resource, store=self.mds, namespace=namespace, handlers=[_Enqueue(self.queue)]),
            Informer(client, SERVICES, store=self.services, namespace=namespace),
            Informer(client, DEPLOYMENTS, store=self.deployments, namespace=namespace),
        ]
        # By ModuleDeployment uid; None: it had one, deleted since.
        self._replica_sets: dict[str, _ReplicaSet | None] = {}
        self._stopped = anyio.Event()
        # What tests read.
        self.service_ops: list[ServiceOp] = []
        self.reconciles = 0
        self.reconciles_by_md: Counter[str] = Counter()
        self.create_events: Counter[str] = Counter()  # PublishModuleDeploymentCreateEvent calls, by MD
        self.delete_events: Counter[str] = Counter()  # PublishModuleDeploymentDeleteEvent calls, by MD
        self.reconcile_errors: list[tuple[float, str, str]] = []  # (monotonic, "ns/name", error): requeued
        self.discarded_errors: list[tuple[float, str, str]] = []  # handler errors the reconciler dropped
        self.would_panic: list[tuple[str, str]] = []  # (MD, where V1.0.0 would have panicked)

    # ------------------------------------------------------------------ counters
    def _count(self, op: str, *outcomes: str) -> int:
        return sum(1 for o in self.service_ops if o.op == op and (not outcomes or o.outcome in outcomes))

    @property
    def creates_attempted(self) -> int:
        return self._count("create")

    @property
    def creates_succeeded(self) -> int:
        return self._count("create", "ok")

    @property
    def creates_refused(self) -> int:
        return self._count("create", "refused")

    @property
    def deletes_attempted(self) -> int:
        return self._count("delete")

    @property
    def deletes_succeeded(self) -> int:
        return self._count("delete", "ok")

    @property
    def deletes_refused(self) -> int:
        """DELETEs the API server answered with an error other than 404 (e.g. 403 or 422 from an admission
        policy); a 404 (the cache still showed a Service already gone) is :attr:`deletes_not_found`."""
        return self._count("delete", "refused")

    @property
    def deletes_not_found(self) -> int:
        return self._count("delete", "not_found")

    def ops(self, service: str | None = None, op: str | None = None) -> list[ServiceOp]:
        return [o for o in self.service_ops if (service is None or o.service == service) and (op is None or o.op == op)]

    def cached_service(self, name: str) -> JsonObj | None:
        """The Service as this emulator's cache holds it (what its handlers decide on)."""
        return self.services.get(f"{self.namespace}/{name}")

    def cached_md(self, name: str) -> JsonObj | None:
        return self.mds.get(f"{self.namespace}/{name}")

    @property
    def synced(self) -> bool:
        return all(inf.has_synced for inf in self.informers)

    def idle(self) -> bool:
        """Nothing queued, waiting for a requeue, or being reconciled. A ModuleDeployment whose reconcile
        keeps failing (no base Deployment) is never idle: it is always waiting for its backoff."""
        stats = self.queue.statistics()
        return stats.depth == 0 and stats.waiting == 0 and stats.processing == 0

    # ------------------------------------------------------------------ running
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Syncs the caches, reports ``started``, then reconciles until :meth:`stop` (or cancelled)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.queue.run)
            for inf in self.informers:
                await tg.start(inf.run)
            task_status.started()
            try:
                await self._worker()
            finally:
                self._stopped.set()
                tg.cancel_scope.cancel()

    def stop(self) -> None:
        """Takes no new work; the reconcile in progress finishes, then :meth:`run` returns."""
        self.queue.shutdown()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            try:
                result = await self.reconcile(key)
            except KubeError as exc:
                # controller-runtime: "Reconciler error", AddRateLimited.
                self.reconcile_errors.append((time.monotonic(), key, str(exc)))
                log.info("v1_reconciler_error", key=key, error=str(exc))
                self.queue.add_rate_limited(key)
            else:
                if result.requeue_after > 0:
                    self.queue.forget(key)
                    self.queue.add_after(key, result.requeue_after)
                elif result.requeue:
                    self.queue.add_rate_limited(key)
                else:
                    self.queue.forget(key)
            finally:
                self.queue.done(key)

    # ------------------------------------------------------------------ Reconcile (MDC:69-217)
    async def reconcile(self, key: str) -> _Result:
        self.reconciles += 1
        name = key.split("/", 1)[1]
        self.reconciles_by_md[name] += 1
        # MDC:74-82: a cached Get; NotFound ends the reconcile. A deep copy, as the cache reader returns.
        cached = self.mds.get(key)
        if cached is None:
            return _Result()
        md = copy.deepcopy(cached)
        spec = _dict(md.setdefault("spec", {}))
        meta = _dict(md.setdefault("metadata", {}))

        # MDC:84-92: "symmetric" replicas follow the base Deployment's availableReplicas (in memory only,
        # written by whatever Update comes next).
        if _int(spec.get("replicas")) == -1:
            deployment = self._deployment(md)
            spec["replicas"] = _int(_dict(deployment.get("status")).get("availableReplicas"))

        deleting = bool(meta.get("deletionTimestamp"))
        if deleting:
            # MDC:95: the error PublishEvent returns is dropped.
            await self._publish("delete", md)
            if not self._has_finalizer(md, self.replicaset_finalizer) and not self._has_finalizer(
                    md, self.module_finalizer):
                # MDC:96-103. Reached only while another finalizer holds the object (removing the last
                # one deletes it, and the next reconcile finds NotFound).
                release = _release_status(md)
                if release is None:
                    self._would_panic(name, "MDC:98 nil releaseStatus of a terminating ModuleDeployment")
                    release = md.setdefault("status", {})["releaseStatus"] = {}
                if release.get("progress") != TERMINATED:
                    release["progress"] = TERMINATED
                    await self._update(md, status=True)
                return _Result()

        # MDC:106-108: every reconcile while generation is 1 (deletion bumps it, MDC never checks again).
        if _int(meta.get("generation")) == 1:
            await self._publish("create", md)  # MDC:107: error dropped

        # MDC:110-115
        release = _release_status(md)
        if (release is not None and _int(spec.get("confirmBatchNum")) < _int(release.get("currentBatch"))
                and release.get("progress") == PAUSED):
            return _Result()

        # MDC:117-124 and updateOwnerReference (MDC:286-309).
        base = _str(spec.get("baseDeploymentName"))
        if not any(_dict(ref).get("name") == base for ref in _list(meta.get("ownerReferences"))):  # UTILS:61-68
            deployment = self._deployment(md)  # MDC:287-291: an error is returned: requeue, no finalizers
            dmeta = _dict(deployment.get("metadata"))
            meta["ownerReferences"] = [*_list(meta.get("ownerReferences")), {
                "apiVersion": "apps/v1", "kind": "Deployment", "name": dmeta.get("name"),
                "uid": dmeta.get("uid"), "controller": True, "blockOwnerDeletion": True,
            }]
            self._add_finalizer(md, self.replicaset_finalizer)  # MDC:302
            self._add_finalizer(md, self.module_finalizer)  # MDC:303
            await self._update(md, status=False)  # MDC:304-307
            return _Result()

        # MDC:126-130
        rs, version_changed = self._create_or_get_replica_set(md)

        # MDC:132-138: a new release replaces the whole releaseStatus.
        if release is None or version_changed:
            release = {"currentBatch": 1, "progress": INIT, "lastTransitionTime": _now()}
            md.setdefault("status", {})["releaseStatus"] = release
        progress = release.get("progress")

        if progress == INIT:  # MDC:142-147
            self._handle_init(md, rs)
            await self._update(md, status=True)
        elif progress == EXECUTING:  # MDC:148-149
            return await self._update_replica_set(md, rs)
        elif progress == COMPLETED:  # MDC:150-174
            if deleting:
                release["progress"] = TERMINATING  # MDC:151-154
                await self._update(md, status=True)
                return _Result()
            assert rs is not None  # not deleting: created above, or an error was raised
            if _int(spec.get("replicas")) != rs.replicas:  # MDC:155-161
                release["progress"] = INIT
                md = await self._update(md, status=True)  # the Go object takes the response
                spec = _dict(md.setdefault("spec", {}))
            module = _dict(_dict(_dict(spec.get("template")).get("spec")).get("module"))
            if not version_changed and _str(module.get("url")) != rs.url:  # MDC:162-167
                rs.url = _str(module.get("url"))
            if _int(spec.get("confirmBatchNum")) > 0:  # MDC:169-174
                spec["confirmBatchNum"] = 0
                await self._update(md, status=False)
        elif progress == WAITING:  # MDC:176-182
            release["progress"] = PAUSED
            await self._update(md, status=True)
        elif progress == PAUSED:  # MDC:183-193
            due = _parse_time(release.get("nextReconcileTime"))
            if (due is None or due <= datetime.now(UTC)) and _int(spec.get("confirmBatchNum")) == _int(
                    release.get("currentBatch")):
                release["currentBatch"] = _int(release.get("currentBatch")) + 1
                release["progress"] = EXECUTING
                await self._update(md, status=True)
        elif progress == TERMINATING:  # MDC:194-212
            if self._has_finalizer(md, self.module_finalizer):
                if _int(spec.get("replicas")) != 0:  # MDC:197-200
                    spec["replicas"] = 0
                    await self._update(md, status=False)
                    return _Result()
                if rs is None:
                    self._would_panic(name, "MDC:201 nil ModuleReplicaSet of a terminating ModuleDeployment")
                # MDC:201-204: the stand-in's status.replicas is 0 (no module installed), so straight on.
                self._remove_finalizer(md, self.module_finalizer)  # MDC:205-206
                await self._update(md, status=False)
                return _Result()
            if self._has_finalizer(md, self.replicaset_finalizer):  # MDC:209-212
                return await self._handle_deleting(md)
        # TERMINATED (MDC:213-214) and anything else: done.
        return _Result()

    # ------------------------------------------------------------------ steps
    def _deployment(self, md: JsonObj) -> JsonObj:
        """The base Deployment from the cache (MDC:87, MDC:288, MDC:529); a cached miss is NotFound."""
        name = _str(_dict(md.get("spec")).get("baseDeploymentName"))
        found = self.deployments.get(f"{self.namespace}/{name}")
        if found is None:
            raise NotFound(404, "NotFound", f'deployments.apps "{name}" not found')
        return found

    def _create_or_get_replica_set(self, md: JsonObj) -> tuple[_ReplicaSet | None, bool]:
        """createOrGetModuleReplicas (MDC:312-371), over the stand-in: (newRS, moduleVersionChanged)."""
        meta, spec = _dict(md.get("metadata")), _dict(md.get("spec"))
        uid = _str(meta.get("uid"))
        module = _dict(_dict(_dict(spec.get("template")).get("spec")).get("module"))
        wanted = (_str(module.get("name")), _str(module.get("version")))
        rs = self._replica_sets.get(uid)
        release = _release_status(md)
        if uid not in self._replica_sets and release is not None:
            # This emulator (re)started on a ModuleDeployment V1.0.0 had already released: its
            # ModuleReplicaSet would exist in the API; assume it as the status says.
            done = release.get("progress") in (COMPLETED, TERMINATING, TERMINATED)
            rs = self._replica_sets[uid] = _ReplicaSet(wanted, _str(module.get("url")),
                                                       _int(spec.get("replicas")) if done else 0)
        if rs is not None and rs.module == wanted:
            return rs, False  # MDC:352-354
        if meta.get("deletionTimestamp"):
            return None, False  # MDC:359-361
        # createNewReplicaSet (MDC:527-542): needs the base Deployment; the three tries of MDC:314 fail alike.
        self._deployment(md)
        if not meta.get("labels"):
            self._would_panic(_str(meta.get("name")), "MDC:491 nil map write: metadata.labels is empty")
        rs = self._replica_sets[uid] = _ReplicaSet(wanted, _str(module.get("url")), 0)
        return rs, True

    def _handle_init(self, md: JsonObj, rs: _ReplicaSet | None) -> None:
        """handleInitModuleDeployment (MDC:219-243)."""
        spec, release = _dict(md.get("spec")), _dict(_release_status(md))
        if rs is None:
            self._would_panic(_str(_dict(md.get("metadata")).get("name")), "MDC:222 nil ModuleReplicaSet")
        expected = _int(spec.get("replicas"))
        delta = expected - (rs.replicas if rs is not None else 0)
        strategy = _dict(spec.get("operationStrategy"))
        batch_count = _int(strategy.get("batchCount"))
        if batch_count <= 0:
            real = 1
        elif abs(delta) < batch_count:
            real = abs(delta)
        elif _bool(strategy.get("useBeta")) and expected - 1 > 1:
            real = batch_count + 1
        else:
            real = batch_count
        release.update(realBatchCount=real, originalDeltaReplicas=delta, currentBatch=1, progress=EXECUTING)

    async def _update_replica_set(self, md: JsonObj, rs: _ReplicaSet | None) -> _Result:
        """updateModuleReplicaSet (MDC:393-485) with the whole release as one batch."""
        spec, status = _dict(md.get("spec")), _dict(md.get("status"))
        release = _dict(status.get("releaseStatus"))
        if rs is None:
            self._would_panic(_str(_dict(md.get("metadata")).get("name")), "MDC:400 nil ModuleReplicaSet")
            rs = _ReplicaSet(("", ""), "", 0)
        expected = _int(spec.get("replicas"))
        now = _now()
        if expected == rs.replicas:  # MDC:405-416
            release["progress"] = COMPLETED
            release["lastTransitionTime"] = now
            status["conditions"] = _append_condition(status.get("conditions"), {
                "type": "Available", "status": "True", "last_transition_time": now,
                "message": "deployment release progress completed"})
            await self._update(md, status=True)
            return _Result()
        # MDC:421-425 waits for the ModuleReplicaSet controller to end a batch; the stand-in has none.
        rs.replicas = expected  # MDC:438 updateModuleReplicas: the whole release in one batch
        release["lastTransitionTime"] = now
        release["progress"] = EXECUTING
        status["conditions"] = _append_condition(status.get("conditions"), {
            "type": "Progressing", "status": "True", "last_transition_time": now,
            "message": f"deployment release: curbatch {_int(release.get('currentBatch'))}, "
                       f"batchCount {_int(release.get('realBatchCount'))}"})
        release["batchProgress"] = EXECUTING  # MDC:478
        await self._update(md, status=True)
        return _Result(requeue=True)  # MDC:484 with no gray time: Requeue, RequeueAfter 0

    async def _handle_deleting(self, md: JsonObj) -> _Result:
        """handleDeletingModuleDeployment (MDC:246-283): delete the ModuleReplicaSets and requeue; once
        none is left, remove the finalizer."""
        uid = _str(_dict(md.get("metadata")).get("uid"))
        if self._replica_sets.get(uid) is not None:  # MDC:264-273
            self._replica_sets[uid] = None
            delay = self.replicaset_requeue_after
            if delay is None:
                deleted_at = _parse_time(_dict(md.get("metadata")).get("deletionTimestamp"))
                age = (datetime.now(UTC) - deleted_at).total_seconds() if deleted_at else 0.0
                delay = _next_reconcile_time(age)
            return _Result(requeue_after=delay)
        self._remove_finalizer(md, self.replicaset_finalizer)  # MDC:274-281
        await self._update(md, status=False)
        return _Result()

    # ------------------------------------------------------------------ event handlers
    async def _publish(self, kind: Literal["create", "delete"], md: JsonObj) -> None:
        """PublishModuleDeployment{Create,Delete}Event: the handler runs synchronously (EVENT:34-53); its
        error goes back to the reconciler, which drops it (MDC:95, MDC:107)."""
        name = _str(_dict(md.get("metadata")).get("name"))
        (self.create_events if kind == "create" else self.delete_events)[name] += 1
        try:
            if kind == "create":
                await self._service_create_handler(md)
            else:
                await self._service_delete_handler(md)
        except KubeError as exc:
            self.discarded_errors.append((time.monotonic(), name, f"{kind}: {exc}"))
            log.info("v1_handle_event_error", module_deployment=name, handler=kind, error=str(exc))

    async def _service_create_handler(self, md: JsonObj) -> None:
        """ServiceCreateHandler.Handle (CREATE_H:20-66)."""
        spec = _dict(md.get("spec"))
        strategy = _dict(_dict(spec.get("operationStrategy")).get("serviceStrategy"))
        if not _bool(strategy.get("enableModuleService")):  # CREATE_H:23-26
            return
        module = _str(_dict(_dict(_dict(spec.get("template")).get("spec")).get("module")).get("name"))
        if self.cached_service(f"{module}-service") is not None:  # CREATE_H:32-37: anyone's Service
            return
        svc = upstream_service(self.namespace, module, strategy, self.label_prefix)
        await self._service_write("create", md, svc["metadata"]["name"], "POST", SERVICES.path(self.namespace), svc)

    async def _service_delete_handler(self, md: JsonObj) -> None:
        """ServiceDeleteHandler.Handle (DELETE_H:18-40): by name, no precondition, no owner check."""
        spec = _dict(md.get("spec"))
        strategy = _dict(_dict(spec.get("operationStrategy")).get("serviceStrategy"))
        if not _bool(strategy.get("enableModuleService")):  # DELETE_H:21-24
            return
        module = _str(_dict(_dict(_dict(spec.get("template")).get("spec")).get("module")).get("name"))
        name = f"{module}-service"
        if self.cached_service(name) is None:  # DELETE_H:30-32
            return
        await self._service_write("delete", md, name, "DELETE", SERVICES.path(self.namespace, name))

    async def _service_write(self, op: Literal["create", "delete"], md: JsonObj, service: str, method: str,
                             path: str, body: JsonObj | None = None) -> None:
        md_name = _str(_dict(md.get("metadata")).get("name"))
        try:
            await self.client.request(method, path, body=body)
        except KubeError as exc:
            outcome: Outcome = ("not_found" if isinstance(exc, NotFound) else "already_exists"
                                if isinstance(exc, AlreadyExists) else "refused" if isinstance(exc, ApiError)
                                else "error")
            code = exc.status if isinstance(exc, ApiError) else None
            self.service_ops.append(ServiceOp(time.monotonic(), op, service, md_name, outcome, code, str(exc)))
            raise
        self.service_ops.append(ServiceOp(time.monotonic(), op, service, md_name, "ok"))
        log.info("v1_service_" + op, service=service, module_deployment=md_name)

    # ------------------------------------------------------------------ writes and helpers
    async def _update(self, md: JsonObj, *, status: bool) -> JsonObj:
        """``r.Update`` / ``r.Status().Update``: a PUT of the Go-encoded object with its cached
        resourceVersion. Returns the response (the Go client decodes it into the object)."""
        meta = _dict(md.get("metadata"))
        path = self.resource.path(self.namespace, _str(meta.get("name")), "status" if status else None)
        return await self.client.request("PUT", path, body=go_module_deployment(md, self.resource.api_version))

    def _has_finalizer(self, md: JsonObj, finalizer: str) -> bool:  # UTILS:50-59
        return finalizer in _list(_dict(md.get("metadata")).get("finalizers"))

    def _add_finalizer(self, md: JsonObj, finalizer: str) -> None:  # UTILS:20-31
        meta = _dict(md.get("metadata"))
        finalizers = _list(meta.get("finalizers"))
        if finalizer not in finalizers:
            meta["finalizers"] = [*finalizers, finalizer]

    def _remove_finalizer(self, md: JsonObj, finalizer: str) -> None:  # UTILS:33-48
        meta = _dict(md.get("metadata"))
        meta["finalizers"] = [f for f in _list(meta.get("finalizers")) if f != finalizer]

    def _would_panic(self, md: str, where: str) -> None:
        self.would_panic.append((md, where))
        log.info("v1_would_panic", module_deployment=md, where=where)


@asynccontextmanager
async def run_module_controller_v1(
    client: KubeClient,
    namespace: str,
    *,
    group: str = DEFAULT_GROUP,
    version: str = DEFAULT_VERSION,
    label_prefix: str = DEFAULT_LABEL_PREFIX,
    finalizers: tuple[str, str] = (MODULE_REPLICASET_EXISTED, MODULE_EXISTED),
    replicaset_requeue_after: float | None = None,
    sync_timeout: float = 60.0,
) -> AsyncIterator[ModuleControllerV1]:
    """Runs a :class:`ModuleControllerV1` in a task group of its own; yields it once its caches have
    synced; stops it on exit (the reconcile in progress finishes first, within 10 s)."""
    emulator = ModuleControllerV1(client, namespace, group=group, version=version, label_prefix=label_prefix,
                                  finalizers=finalizers, replicaset_requeue_after=replicaset_requeue_after)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(sync_timeout):
            await tg.start(emulator.run)
        try:
            yield emulator
        finally:
            emulator.stop()
            with anyio.move_on_after(10, shield=True):
                await emulator.wait_stopped()
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- Go encoding
def go_module_deployment(md: Mapping[str, Any], api_version: str) -> JsonObj:
    """``md`` decoded into V1.0.0's ModuleDeployment (TYPES:207-213) and encoded again, as its client PUTs
    it: fields the Go types lack are dropped; zero values without ``omitempty`` (structs, metav1.Time,
    IntOrString, non-omitempty strings) are written."""
    return {
        "apiVersion": api_version, "kind": "ModuleDeployment",
        "metadata": _go_object_meta(md.get("metadata")),
        "spec": _go_spec(md.get("spec")),
        "status": _go_status(md.get("status")),
    }


_OBJECT_META_FIELDS = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                       "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
                       "annotations", "ownerReferences", "finalizers", "managedFields")


def _go_object_meta(value: Any) -> JsonObj:
    meta = _dict(value)
    # deletionGracePeriodSeconds is a pointer: 0 is written.
    out: JsonObj = {k: meta[k] for k in _OBJECT_META_FIELDS if meta.get(k) not in (None, "", 0, [], {})
                    or (k == "deletionGracePeriodSeconds" and meta.get(k) is not None)}
    out.setdefault("creationTimestamp", None)  # metav1.Time: null when zero
    return out


def _go_spec(value: Any) -> JsonObj:
    """ModuleDeploymentSpec (TYPES:149-173)."""
    spec = _dict(value)
    template = _dict(spec.get("template"))
    tspec = _dict(template.get("spec"))
    module = _dict(tspec.get("module"))
    selector = _dict(tspec.get("selector"))
    strategy = _dict(spec.get("operationStrategy"))
    service = _dict(strategy.get("serviceStrategy"))
    out: JsonObj = {
        "baseDeploymentName": _str(spec.get("baseDeploymentName")),
        "template": {  # MTYPES:50-78
            "metadata": _go_object_meta(template.get("metadata")),
            "spec": _omit({
                "selector": _omit({"matchLabels": selector.get("matchLabels"),
                                   "matchExpressions": selector.get("matchExpressions")}),
                "module": {"name": _str(module.get("name")), "version": _str(module.get("version")),
                           "url": _str(module.get("url")),
                           **_omit({"type": module.get("type"), "md5": module.get("md5")})},
                "upgradePolicy": tspec.get("upgradePolicy"),
            }, keep=("selector", "module")),
        },
    }
    for key in ("replicas", "minReadySeconds", "revisionHistoryLimit", "progressDeadlineSeconds", "confirmBatchNum"):
        if _int(spec.get(key)):
            out[key] = _int(spec.get(key))
    out["operationStrategy"] = {  # TYPES:117-131, 140-146
        **_omit({k: _bool(strategy.get(k)) for k in ("needConfirm", "useBeta")}),
        **_omit({k: _int(strategy.get(k)) for k in ("batchCount", "maxUnavailable", "grayTimeBetweenBatchSeconds")}),
        **_omit({"upgradePolicy": _str(strategy.get("upgradePolicy"))}),
        "serviceStrategy": {
            **_omit({"enableModuleService": _bool(service.get("enableModuleService")),
                     "port": _int(service.get("port"))}),
            "targetPort": _int_or_string(service.get("targetPort")),  # IntOrString: a struct, 0 when zero
        },
    }
    out["schedulingStrategy"] = _omit({"schedulingPolicy": _str(_dict(spec.get("schedulingStrategy"))
                                                                .get("schedulingPolicy"))})
    return out


def _go_status(value: Any) -> JsonObj:
    """ModuleDeploymentStatus (TYPES:176-200)."""
    status = _dict(value)
    out: JsonObj = {}
    for key in ("replicas", "availableReplicas", "readyReplicas", "unavailableReplicas", "updatedReplicas",
                "upgradingReplicas", "updatedReadyReplicas", "updatedAvailableReplicas", "observedGeneration"):
        if _int(status.get(key)):
            out[key] = _int(status.get(key))
    if isinstance(status.get("collisionCount"), int):
        out["collisionCount"] = status["collisionCount"]
    conditions = [  # TYPES:100-115
        {**_omit({"type": _str(c.get("type")), "status": _str(c.get("status"))}),
         "last_transition_time": c.get("last_transition_time") or None,
         **_omit({"reason": _str(c.get("reason")), "message": _str(c.get("message"))})}
        for c in map(_dict, _list(status.get("conditions")))
    ]
    if conditions:
        out["conditions"] = conditions
    release = status.get("releaseStatus")
    if isinstance(release, dict):  # TYPES:70-98
        out["releaseStatus"] = {
            **_omit({"updateRevision": _str(release.get("updateRevision"))}),
            **_omit({k: _int(release.get(k)) for k in ("currentBatch", "realBatchCount", "originalDeltaReplicas")}),
            **_omit({k: _str(release.get(k)) for k in ("progress", "batchProgress")}),
            "lastTransitionTime": release.get("lastTransitionTime") or None,
            "nextReconcileTime": release.get("nextReconcileTime") or None,
        }
    return out


# ---------------------------------------------------------------------------------------------- small helpers
def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _bool(value: Any) -> bool:
    return value is True


def _int_or_string(value: Any) -> int | str:
    return value if isinstance(value, str) else _int(value)


def _omit(fields: Mapping[str, Any], keep: tuple[str, ...] = ()) -> JsonObj:
    """``omitempty``: drops zero values (except the ``keep`` keys, structs Go always writes)."""
    return {k: v for k, v in fields.items() if k in keep or v not in (None, "", 0, False, [], {})}


def _release_status(md: Mapping[str, Any]) -> dict[str, Any] | None:
    release = _dict(md.get("status")).get("releaseStatus")
    return release if isinstance(release, dict) else None


def _append_condition(conditions: Any, condition: JsonObj) -> list[Any]:
    """AppendModuleDeploymentCondition (UTILS:114-120): at most ten, the oldest dropped."""
    current = _list(conditions)
    return [*(current if len(current) < 10 else current[1:]), condition]


def _now() -> str:
    """metav1.Now() as it is encoded: RFC 3339 in UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _next_reconcile_time(age: float) -> float:
    """GetNextReconcileTime (UTILS:79-92) for a deletion ``age`` seconds old."""
    if age > 3600:
        return 600.0
    if age > 1800:
        return 300.0
    if age > 600:
        return 60.0
    return 10.0

