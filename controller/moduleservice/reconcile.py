"""Reconcile one Service key: read the caches, compute the desired state, write only the difference.

Level-triggered: the input is the key, never an event. Everything is read from informer stores; the
only API calls are writes (Service create/patch/delete, status patches) and they happen only when the
cache shows a difference, so an idle controller performs zero writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from ..runtime.events import EventRecorder, ObjectRef, now_rfc3339
from ..runtime.expectations import Expectations
from ..runtime.fight import FightDetector
from ..runtime.informer import Store
from ..runtime.kube.client import JsonObj, KubeClient
from ..runtime.kube.errors import AlreadyExists, ApiError, Conflict, Invalid, NotFound, TooManyRequests
from ..runtime.kube.resources import SERVICES
from . import reasons
from .addresses import AddressBook, Addresses, service_addresses
from .desired import (
    FIELD_MANAGER,
    MD_KIND,
    DesiredService,
    ModuleDeploymentView,
    adoptable,
    desired_service,
    foreign_group,
    is_managed,
    module_of_service,
    parse_module_deployment,
    service_patch,
)
from .mapping import ServiceKey, pod_modules, pod_ready, service_key
from .profiles import Profile
from .status import (
    REASON_PENDING,
    REASON_WRITE_FAILED,
    Outcome,
    module_service_status,
    status_patch,
)

__all__ = ["MD_MODULE_INDEX", "POD_MODULE_INDEX", "REASON_ADDRESS_CHANGED", "REASON_FIGHT", "NotLeader", "Reconciler",
           "Report", "Requeue", "RequeueAfter"]

log = structlog.get_logger(__name__)

MD_MODULE_INDEX = "module"
POD_MODULE_INDEX = "module"
_MERGE_PATCH = "application/merge-patch+json"
_WARNING_REASONS = reasons.WARNING_REASONS
REASON_FIGHT = reasons.FIGHT
REASON_ADDRESS_CHANGED = reasons.ADDRESS_CHANGED
_ABSENT = "<absent>"  # the fingerprint of "no Service"
_ALLOCATED = "already allocated"  # the API server's words for a clusterIP or nodePort in use


class Requeue(Exception):
    """Retry this key with rate limiting; expected (cache lag, optimistic-concurrency conflict)."""


class RequeueAfter(Exception):
    """Retry this key after ``delay`` seconds, not sooner (and not counted as a failure)."""

    def __init__(self, delay: float, message: str) -> None:
        super().__init__(message)
        self.delay = delay


class NotLeader(Exception):
    """A write was attempted without leadership: the fence refused it."""


@dataclass
class Report:
    actions: list[str] = field(default_factory=list)


class Reconciler:
    def __init__(
        self,
        client: KubeClient,
        *,
        mds: Store,
        services: Store,
        pods: Store,
        profile: Profile,
        events: EventRecorder,
        write_allowed: Callable[[], bool] = lambda: True,
        fights: FightDetector[ServiceKey] | None = None,
        adopt: bool = True,
        on_status_pruned: Callable[[bool], None] = lambda pruned: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.mds = mds
        self.services = services
        self.pods = pods
        self.profile = profile
        self.label_prefix = profile.label_prefix
        self.resource = profile.resource
        self.events = events
        self.write_allowed = write_allowed
        self.adopt = adopt
        self._on_status_pruned = on_status_pruned
        # Why status.moduleService cannot be stored on this CRD (None: it can). While set, no status write
        # is made and each ModuleDeployment's state goes out as an Event when it changes.
        self.status_pruned: str | None = None
        self._reported: dict[ServiceKey, dict[str, tuple[str, str]]] = {}
        # Read-your-writes over a lagging cache: until the Service cache says anything new about a key,
        # our last write of it is the newest state we know, so a reconcile triggered meanwhile neither
        # repeats the write nor trips a 409. Fed by service_events and services_relisted.
        self._expect: Expectations[ServiceKey, JsonObj | None] = Expectations()
        # The addresses of our Services deleted by someone else while still wanted: re-created with them.
        self.addresses: AddressBook[ServiceKey] = AddressBook(clock)
        self.service_events = _ServiceEvents(self)
        # Same for status, per key and then per ModuleDeployment uid; a key's entry holds only the
        # ModuleDeployments its last status pass saw alive, so deleted ones never accumulate.
        self._status_written: dict[ServiceKey, dict[str, tuple[str, dict[str, Any]]]] = {}
        self._write_errors: dict[ServiceKey, str] = {}
        self._status_due: set[ServiceKey] = set()
        self.fights: FightDetector[ServiceKey] = fights or FightDetector(clock)

    def _fence(self) -> None:
        if not self.write_allowed():
            raise NotLeader("not the leader: refusing to write")

    def _inputs(self, key: ServiceKey) -> tuple[str, list[ModuleDeploymentView], DesiredService | None]:
        module = module_of_service(key.name) or ""
        views = [parse_module_deployment(md)
                 for md in self.mds.by_index(MD_MODULE_INDEX, f"{key.namespace}/{module}")]
        desired = desired_service(key.namespace, module, views, label_prefix=self.label_prefix,
                                  api_version=self.profile.api_version) if module else None
        return module, views, desired

    async def reconcile(self, key: ServiceKey) -> Report:
        """Makes the Service right. Status is a separate, lower-priority pass (:meth:`reconcile_status`)
        so that in a burst the API server's capacity goes to Services first."""
        report = Report()
        if module_of_service(key.name) is None:
            return report
        _, views, desired = self._inputs(key)
        actual = self._service_view(key)
        managed = actual is not None and is_managed(actual, self.profile.group)
        if managed and _invalid_contributor(views):
            # A spec that cannot be served (a typo the CRD let through) must not cost the live Service:
            # keep the last good one unchanged until the spec is fixed; status reports InvalidSpec.
            self._forget_write_error(key)  # we are not writing: an old refusal no longer applies
            return report
        if desired is None:
            if actual is not None and managed:
                refs = [self._ref(v) for v in views if not v.deleting]
                await self._write(key, _ABSENT, f"deleting Service {key.name}", refs,
                                  lambda: self._delete(actual, report))
                for ref in refs:
                    self.events.record(ref, "Normal", reasons.DELETED,
                                       f"Deleted Service {key.name}: no ModuleDeployment enables it")
        elif actual is None:
            # Not a fight: a Service deleted under us (Koupleless' module-controller retiring an old
            # version) must come back at once, and only one create per delete is ever made.
            await self._write(key, None, f"creating Service {key.name}", [self._owner_ref(desired)],
                              lambda: self._create(desired, report))
        elif managed:
            patch = service_patch(actual, desired)
            if patch is not None:
                await self._write(key, _fingerprint(desired), f"updating Service {key.name}",
                                  [self._owner_ref(desired)], lambda: self._patch(actual, patch, report))
                self._event(desired, "Normal", reasons.UPDATED, f"Updated Service {key.name} ({desired.port})")
        elif self.adopt and adoptable(actual, desired) and _moved(previous := self.addresses.get(key), actual):
            # Koupleless' module-controller deleted ours and made this one at once, with new addresses (it
            # re-creates it in the same reconcile while the ModuleDeployment's generation is 1): clients
            # know the old ones. Replace it (this exact object: UID precondition); the create that
            # follows asks for the old addresses.
            await self._write(key, None, f"replacing Service {key.name}", [self._owner_ref(desired)],
                              lambda: self._delete(actual, report))
            self._event(desired, "Normal", reasons.DELETED,
                        f"Deleted Service {key.name}: another controller re-created it with new addresses "
                        f"({service_addresses(actual)}); re-creating it with its previous {previous}")
        elif self.adopt and adoptable(actual, desired):
            # Koupleless' module-controller made it: labels and owner references (and the port, if it
            # changed) in one resourceVersion-preconditioned patch; UID, clusterIP and nodePort stay.
            adopt = service_patch(actual, desired)
            if adopt is not None:
                await self._write(key, _fingerprint(desired), f"adopting Service {key.name}",
                                  [self._owner_ref(desired)],
                                  lambda: self._patch(actual, adopt, report, action="service_adopted"))
                self._event(desired, "Normal", reasons.ADOPTED,
                            f"Adopted Service {key.name}, created without an owner by another controller "
                            f"({desired.port}; clusterIP and nodePort kept)")
        # else: a Service we do not manage holds the name; never touch it (status reports NameConflict).
        self._forget_write_error(key)
        return report

    def _forget_write_error(self, key: ServiceKey) -> None:
        self._write_errors.pop(key, None)
        self._status_due.discard(key)

    async def _write(self, key: ServiceKey, fingerprint: str | None, doing: str, refs: list[ObjectRef],
                     write: Callable[[], Awaitable[None]]) -> None:
        """One Service write, unless our writes of this state keep being undone (then RequeueAfter; not
        for a ``fingerprint`` of None); a failure the API explains is kept for the status lane and
        reported as a Warning Event."""
        wait = 0.0 if fingerprint is None else self.fights.delay(key, fingerprint)
        if wait > 0:
            raise RequeueAfter(wait, f"Service {key.name}: another writer keeps undoing ours; next try in {wait:.1f}s")
        try:
            await write()
        except ApiError as exc:
            if not isinstance(exc, TooManyRequests):  # throttling is transient and not the user's to fix
                message = f"{doing} failed: {exc}"
                if self._write_errors.get(key) != message:
                    self._status_due.add(key)
                self._write_errors[key] = message
                for ref in refs:
                    self.events.record(ref, "Warning", REASON_WRITE_FAILED, message)
            raise
        if fingerprint is not None and self.fights.wrote(key, fingerprint):
            rounds = self.fights.rounds(key)
            log.warning("service_fight", key=str(key), rounds=rounds)
            for ref in refs:
                self.events.record(
                    ref, "Warning", REASON_FIGHT,
                    f"Service {key.name}: another writer undid our last {rounds} writes; "
                    f"retrying with backoff (up to {self.fights.cap:g}s)")

    def write_error(self, key: ServiceKey) -> str | None:
        """The API's answer to the last failed Service write of ``key`` (None after a success)."""
        return self._write_errors.get(key)

    def take_status_due(self, key: ServiceKey) -> bool:
        """True once after a failure with a new message: the status lane should show it. (Not on every
        retry: with the API refusing every write, the status write would only fail alongside.)"""
        if key in self._status_due:
            self._status_due.discard(key)
            return True
        return False

    async def reconcile_status(self, key: ServiceKey) -> Report:
        """Writes ``status.moduleService`` of every ModuleDeployment of this key, where it changed."""
        report = Report()
        if module_of_service(key.name) is None:
            return report
        module, views, desired = self._inputs(key)
        if not views:
            self._status_written.pop(key, None)
            self._reported.pop(key, None)
            return report
        actual = self._service_view(key)
        managed = actual is not None and is_managed(actual, self.profile.group)
        pods, ready = self._count_pods(key.namespace, module)
        outcome = Outcome(
            desired=desired,
            service=actual if managed and desired is not None else None,
            # A Service about to be adopted is pending, not a conflict.
            name_conflict=desired is not None and actual is not None and not managed
            and not (self.adopt and adoptable(actual, desired)),
            pods=pods, ready_pods=ready, write_error=self._write_errors.get(key),
            foreign_group=foreign_group(actual, self.profile.group) if actual is not None else None,
        )
        if self.status_pruned is not None:
            self._report_by_events(key, views, outcome)
            return report
        await self._write_statuses(key, views, outcome, report)
        return report

    # ------------------------------------------------------------------ Service writes
    def _service_view(self, key: ServiceKey) -> JsonObj | None:
        return self._expect.view(key, self.services.get(f"{key.namespace}/{key.name}"))

    def services_relisted(self) -> list[ServiceKey]:
        """The Service cache relisted: it is current for every key. Returns the keys written since the
        cache last showed them, to be reconciled again: the relist may have folded a create of ours and a
        delete by someone else into nothing at all, and then no event says so."""
        keys = []
        for key, written in self._expect.reset().items():
            keys.append(key)
            if written is not None and self.services.get(f"{key.namespace}/{key.name}") is None:
                self._deleted_under_us(key, written)
        return keys

    def _deleted_under_us(self, key: ServiceKey, deleted: JsonObj) -> None:
        if not is_managed(deleted, self.profile.group):
            return
        addresses = service_addresses(deleted)
        if addresses is not None and self._inputs(key)[2] is not None:
            # Deleted while still wanted (not by us, and not by the garbage collector after the last
            # owner): the re-create asks for the same addresses.
            self.addresses.remember(key, addresses)

    def service_changed(self, key: ServiceKey, deleted: JsonObj | None) -> None:
        """The Service cache changed ``key`` (``deleted``: the Service it deleted)."""
        self._expect.observed(key)
        if deleted is not None:
            self._deleted_under_us(key, deleted)

    async def _post(self, manifest: JsonObj) -> JsonObj:
        return await self.client.request("POST", SERVICES.path(manifest["metadata"]["namespace"]),
                                         params={"fieldManager": FIELD_MANAGER}, body=manifest)

    async def _create(self, desired: DesiredService, report: Report) -> None:
        self._fence()
        key = ServiceKey(desired.namespace, desired.name)
        previous = self.addresses.get(key)
        if previous is not None and (pause := self.addresses.wait(key)) > 0:
            raise RequeueAfter(pause, f"Service {key.name}: letting the API server release its previous {previous}")
        token = self._expect.begin(key)
        try:
            try:
                created = await self._post(desired.manifest(previous))
            except Invalid as exc:
                if previous is None:
                    raise
                if _ALLOCATED in exc.message and (wait := self.addresses.refused(key)) is not None:
                    # Most likely not released yet: the watch shows a delete before the API server frees
                    # its addresses.
                    raise RequeueAfter(wait, f"Service {key.name}: its previous {previous} are not free yet "
                                             f"({exc.message}); next try in {wait:.2f}s") from exc
                # Taken by another Service meanwhile (or out of range now): a Service with new addresses
                # beats no Service. Said loudly: clients pinned to the old ones must be told.
                created = await self._post(desired.manifest())
                fresh = service_addresses(created)
                log.warning("service_address_changed", key=str(key), previous=str(previous), now=str(fresh),
                            error=str(exc))
                self._event(desired, "Warning", REASON_ADDRESS_CHANGED,
                            f"Re-created Service {key.name} with new addresses: the API server refused its "
                            f"previous {previous} ({exc.message}); it now has {fresh}")
            else:
                if previous is None:
                    self._event(desired, "Normal", reasons.CREATED, f"Created Service {key.name} ({desired.port})")
                else:
                    self._event(desired, "Normal", reasons.CREATED,
                                f"Re-created Service {key.name} ({desired.port}) after someone deleted it, with "
                                f"its previous {previous}")
        except AlreadyExists as exc:
            self._expect.cancel(token)
            # Our cache is behind (or someone just created it): look again later, never overwrite.
            raise Requeue(f"Service {desired.name} already exists; waiting for the cache") from exc
        except BaseException:
            self._expect.cancel(token)
            raise
        self.addresses.forget(key)
        report.actions.append("service_created")
        self._expect.settle(token, created)

    async def _patch(self, actual: Mapping[str, Any], patch: dict[str, Any], report: Report, *,
                     action: str = "service_updated") -> None:
        self._fence()
        meta = actual["metadata"]
        patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]  # precondition
        key = ServiceKey(meta["namespace"], meta["name"])
        token = self._expect.begin(key)
        try:
            updated = await self.client.request(
                "PATCH", SERVICES.path(meta["namespace"], meta["name"]),
                params={"fieldManager": FIELD_MANAGER}, body=patch, content_type=_MERGE_PATCH,
            )
        except (Conflict, NotFound) as exc:
            self._expect.cancel(token)
            raise Requeue(f"Service {meta['name']} changed under us: {exc.reason}") from exc
        except BaseException:
            self._expect.cancel(token)
            raise
        report.actions.append(action)
        self._expect.settle(token, updated)

    async def _delete(self, actual: Mapping[str, Any], report: Report) -> None:
        self._fence()
        meta = actual["metadata"]
        key = ServiceKey(meta["namespace"], meta["name"])
        token = self._expect.begin(key)
        try:
            await self.client.request(
                "DELETE", SERVICES.path(meta["namespace"], meta["name"]),
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                      "preconditions": {"uid": meta["uid"]}},
            )
        except NotFound:
            self._expect.cancel(token)
            return
        except Conflict as exc:
            self._expect.cancel(token)
            # UID precondition failed: a different object now has this name; re-evaluate it.
            raise Requeue(f"Service {meta['name']} was replaced: {exc.reason}") from exc
        except BaseException:
            self._expect.cancel(token)
            raise
        report.actions.append("service_deleted")
        self._expect.settle(token, None)

    # ------------------------------------------------------------------ status
    def _count_pods(self, ns: str, module: str) -> tuple[int, int]:
        total = ready = 0
        if not module:
            return 0, 0
        for pod in self.pods.by_index(POD_MODULE_INDEX, f"{ns}/{module}"):
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if dict(pod_modules(pod, self.label_prefix)).get(module) != "true":
                continue
            total += 1
            ready += pod_ready(pod)
        return total, ready

    async def _write_statuses(self, key: ServiceKey, views: list[ModuleDeploymentView], outcome: Outcome,
                              report: Report) -> None:
        now = now_rfc3339()
        pending_writes = self._status_written.get(key, {})
        kept: dict[str, tuple[str, dict[str, Any]]] = {}
        try:
            for view in views:
                if not await self._write_status(view, outcome, now, pending=pending_writes.get(view.uid),
                                                kept=kept, report=report):
                    self._report_by_events(key, views, outcome)  # the CRD prunes it: say it in Events
                    return
        finally:
            if kept:
                self._status_written[key] = kept
            else:
                self._status_written.pop(key, None)

    async def _write_status(self, view: ModuleDeploymentView, outcome: Outcome, now: str, *,
                            pending: tuple[str, dict[str, Any]] | None,
                            kept: dict[str, tuple[str, dict[str, Any]]], report: Report) -> bool:
        """False when the write showed that the CRD cannot store our status (then no more are made)."""
        if view.deleting:
            return True
        md = self.mds.get(f"{view.namespace}/{view.name}")
        if md is None:
            return True
        current = (md.get("status") or {}).get("moduleService")
        wanted = module_service_status(view, outcome)
        md_rv = _rv(md)
        if pending is not None and pending[0] == md_rv and pending[1] == wanted:
            kept[view.uid] = pending
            return True  # our last write says exactly this and the cache has not seen it yet
        patch = status_patch(current if isinstance(current, dict) else None, wanted, now)
        if patch is None:
            return True
        self._fence()
        try:
            written = await self.client.request(
                "PATCH", self.resource.path(view.namespace, view.name, "status"),
                params={"fieldManager": FIELD_MANAGER}, body=patch, content_type=_MERGE_PATCH,
            )
        except NotFound:
            return True
        report.actions.append("status_written")
        stored = (written.get("status") or {}).get("moduleService")
        if not isinstance(stored, dict) or "conditions" not in stored:
            # 200 OK and our field (or its content) is gone: the schema prunes it. Writing again would
            # change nothing.
            self.set_status_pruned("the API server dropped status.moduleService from the PATCH response")
            return False
        kept[view.uid] = (md_rv, wanted)
        cond = wanted["conditions"][0]
        old_reason = _reason(current)
        if cond["reason"] in _WARNING_REASONS and cond["reason"] != old_reason:
            self.events.record(self._ref(view), "Warning", cond["reason"], cond["message"])
        return True

    def set_status_pruned(self, reason: str | None) -> None:
        """Switches status writes off (``reason`` says why) or back on; logs once per change."""
        if reason == self.status_pruned or (reason is not None and self.status_pruned is not None):
            return
        self.status_pruned = reason
        self._on_status_pruned(reason is not None)
        if reason is not None:
            log.warning("status_not_writable", crd=self.profile.crd_name, reason=reason,
                        message=f"CustomResourceDefinition {self.profile.crd_name} cannot store "
                                f"status.moduleService ({reason}); not writing it, reporting each "
                                "ModuleDeployment's state through Events instead")
        else:
            self._reported.clear()
            log.info("status_writable", crd=self.profile.crd_name)

    def _report_by_events(self, key: ServiceKey, views: list[ModuleDeploymentView], outcome: Outcome) -> None:
        """The status we cannot store, as one Event per ModuleDeployment whenever its state changes, so
        that ``kubectl describe`` still tells the user. Remembered per key; the recorder dedups further."""
        before = self._reported.get(key, {})
        now: dict[str, tuple[str, str]] = {}
        for view in views:
            if view.deleting:
                continue
            cond = module_service_status(view, outcome)["conditions"][0]
            state = (str(cond["reason"]), str(cond["message"]))
            if state[0] == REASON_PENDING:
                continue  # transient: the next pass reports where it lands
            now[view.uid] = state
            if before.get(view.uid) != state:
                type_ = "Warning" if state[0] in _WARNING_REASONS else "Normal"
                self.events.record(self._ref(view), type_, state[0], state[1])
        if now:
            self._reported[key] = now
        else:
            self._reported.pop(key, None)

    # ------------------------------------------------------------------ events
    def _event(self, desired: DesiredService, type_: str, reason: str, message: str) -> None:
        self.events.record(self._owner_ref(desired), type_, reason, message)

    def _owner_ref(self, desired: DesiredService) -> ObjectRef:
        owner = desired.owners[0]
        return ObjectRef(desired.namespace, owner.name, owner.uid, self.profile.api_version, MD_KIND)

    def _ref(self, view: ModuleDeploymentView) -> ObjectRef:
        return ObjectRef(view.namespace, view.name, view.uid, self.profile.api_version, MD_KIND)


class _ServiceEvents:
    """The Service informer's news for the reconciler: the cache is current again for a key, and the
    addresses of a Service of ours that was deleted."""

    def __init__(self, reconciler: Reconciler) -> None:
        self._reconciler = reconciler

    def on_add(self, obj: JsonObj) -> None:
        if (key := service_key(obj)) is not None:
            self._reconciler.service_changed(key, None)

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        if (key := service_key(new)) is not None:
            self._reconciler.service_changed(key, None)

    def on_delete(self, obj: JsonObj) -> None:
        if (key := service_key(obj)) is not None:
            self._reconciler.service_changed(key, obj)


def _rv(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def _moved(previous: Addresses | None, service: Mapping[str, Any]) -> bool:
    """Whether ``service`` lacks addresses we still owe to the clients of a deleted one."""
    if previous is None:
        return False
    now = service_addresses(service)
    return now is None or now.cluster_ips != previous.cluster_ips or now.node_port != previous.node_port


def _invalid_contributor(views: list[ModuleDeploymentView]) -> bool:
    return any(v.enabled and v.problems and not v.deleting for v in views)


def _reason(module_service: Any) -> str | None:
    if not isinstance(module_service, dict):
        return None
    conditions = module_service.get("conditions") or []
    return str(conditions[0].get("reason")) if conditions and isinstance(conditions[0], dict) else None


def _fingerprint(desired: DesiredService) -> str:
    return json.dumps(desired.manifest(), sort_keys=True)
