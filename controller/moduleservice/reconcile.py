"""Reconcile one Service key: read the caches, compute the desired Service, write only the difference.

Level-triggered: the input is the key, never an event. Everything is read from informer stores; the only
API calls are writes, and only where the cache shows a difference, so an idle controller writes nothing.
Status is a separate, lower-priority pass (:mod:`.statuswriter`), so that in a burst the API server's
capacity goes to Services first.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ..runtime.clock import SYSTEM_CLOCK, Clock
from ..runtime.events import EventRecorder, ObjectRef
from ..runtime.expectations import Expectations
from ..runtime.fight import FightDetector
from ..runtime.kube.client import JsonObj, KubeClient
from ..runtime.kube.errors import AlreadyExists, ApiError, Conflict, Invalid, NotFound, TooManyRequests
from ..runtime.kube.resources import SERVICES
from ..runtime.leaderelection import NotLeader
from ..runtime.result import Result
from ..runtime.store import Store, resource_version
from . import reasons
from .addresses import AddressBook, Addresses, service_addresses
from .desired import (
    FIELD_MANAGER,
    MD_KIND,
    DesiredService,
    ModuleDeploymentView,
    adoptable,
    desired_service,
    is_managed,
    module_of_service,
    parse_module_deployment,
    service_patch,
)
from .mapping import ServiceKey
from .profiles import Profile
from .servicenews import ServiceNews

__all__ = ["MD_MODULE_INDEX", "POD_MODULE_INDEX", "Inputs", "Reconciler"]

log = structlog.get_logger(__name__)

MD_MODULE_INDEX = "module"
POD_MODULE_INDEX = "module"
MERGE_PATCH = "application/merge-patch+json"
_ABSENT = "<absent>"  # the fingerprint of "no Service"
_ALLOCATED = "already allocated"  # the API server's words for a clusterIP or nodePort in use
_DONE = Result()


@dataclass(frozen=True, slots=True)
class Inputs:
    """What one key is reconciled from: the module, its ModuleDeployments, the Service they want."""

    module: str
    views: list[ModuleDeploymentView]
    desired: DesiredService | None


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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        self.mds = mds
        self.services = services
        self.pods = pods
        self.profile = profile
        self.events = events
        self.write_allowed = write_allowed
        self.adopt = adopt
        # Read-your-writes over a lagging cache: until the Service cache says anything new about a key,
        # our last write of it is the newest state we know, so a reconcile triggered meanwhile neither
        # repeats the write nor trips a 409. Fed by service_events and services_relisted.
        self._expect: Expectations[ServiceKey, JsonObj | None] = Expectations()
        # The addresses of our Services deleted by someone else while still wanted: re-created with them.
        self.addresses: AddressBook[ServiceKey] = AddressBook(clock.now)
        self.service_events = ServiceNews(self.service_changed)
        self._write_errors: dict[ServiceKey, str] = {}
        self._status_due: set[ServiceKey] = set()
        self.fights: FightDetector[ServiceKey] = fights or FightDetector(clock.now)

    # ------------------------------------------------------------------ reading
    def fence(self) -> None:
        """Every write checks leadership first (see Manager.write_allowed)."""
        if not self.write_allowed():
            raise NotLeader("not the leader: refusing to write")

    def inputs(self, key: ServiceKey) -> Inputs:
        module = module_of_service(key.name) or ""
        views = [parse_module_deployment(md) for md in self.mds.by_index(MD_MODULE_INDEX, f"{key.namespace}/{module}")]
        desired = desired_service(key.namespace, module, views, label_prefix=self.profile.label_prefix,
                                  api_version=self.profile.api_version) if module else None
        return Inputs(module, views, desired)

    def service_view(self, key: ServiceKey) -> JsonObj | None:
        """The Service as the cache shows it, or as we last wrote it while the cache has not caught up."""
        return self._expect.view(key, self.services.get(f"{key.namespace}/{key.name}"))

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

    # ------------------------------------------------------------------ reconcile
    async def reconcile(self, key: ServiceKey) -> Result:
        """Makes the Service of ``key`` right."""
        if module_of_service(key.name) is None:
            return _DONE
        views, desired = (inputs := self.inputs(key)).views, inputs.desired
        actual = self.service_view(key)
        managed = actual is not None and is_managed(actual, self.profile.group)
        result = _DONE
        if managed and _invalid_contributor(views):
            # A spec that cannot be served (a typo the CRD let through) must not cost the live Service:
            # keep the last good one unchanged until the spec is fixed; status reports InvalidSpec.
            pass
        elif desired is None:
            if actual is not None and managed:
                refs = [md_ref(v, self.profile) for v in views if not v.deleting]
                result = await self._write(key, _ABSENT, f"deleting Service {key.name}", refs,
                                           lambda: self._delete(actual))
                if result.actions:
                    for ref in refs:
                        self.events.record(ref, "Normal", reasons.DELETED,
                                           f"Deleted Service {key.name}: no ModuleDeployment enables it")
        elif actual is None:
            # Not a fight: a Service deleted under us (Koupleless' module-controller retiring an old
            # version) must come back at once, and only one create per delete is ever made.
            result = await self._write(key, None, f"creating Service {key.name}", [self._owner_ref(desired)],
                                       lambda: self._create(desired))
        elif managed:
            patch = service_patch(actual, desired)
            if patch is not None:
                result = await self._write(key, _fingerprint(desired), f"updating Service {key.name}",
                                           [self._owner_ref(desired)], lambda: self._patch(actual, patch))
                if result.actions:
                    self._event(desired, "Normal", reasons.UPDATED, f"Updated Service {key.name} ({desired.port})")
        elif self.adopt and adoptable(actual, desired) and _moved(previous := self.addresses.get(key), actual):
            # Koupleless' module-controller deleted ours, then made this one (reconciling another of the
            # module's ModuleDeployments, still at generation 1) with new addresses, which no client knows.
            # Replace it (UID precondition); the create that follows asks for the old addresses.
            result = await self._write(key, None, f"replacing Service {key.name}", [self._owner_ref(desired)],
                                       lambda: self._delete(actual))
            if result.actions:
                self._event(desired, "Normal", reasons.DELETED,
                            f"Deleted Service {key.name}: another controller re-created it with new addresses "
                            f"({service_addresses(actual)}); re-creating it with its previous {previous}")
        elif self.adopt and adoptable(actual, desired):
            # Koupleless' module-controller made it: labels and owner references (and the port, if it
            # changed) in one resourceVersion-preconditioned patch; UID, clusterIP and nodePort stay.
            adopt = service_patch(actual, desired)
            if adopt is not None:
                result = await self._write(key, _fingerprint(desired), f"adopting Service {key.name}",
                                           [self._owner_ref(desired)],
                                           lambda: self._patch(actual, adopt, action="service_adopted"))
                if result.actions:
                    self._event(desired, "Normal", reasons.ADOPTED,
                                f"Adopted Service {key.name}, created without an owner by another controller "
                                f"({desired.port}; clusterIP and nodePort kept)")
        # else: a Service we do not manage holds the name; never touch it (status reports NameConflict).
        if not (result.requeue or result.requeue_after):
            # Written, or nothing to write: an old refusal no longer applies.
            self._write_errors.pop(key, None)
            self._status_due.discard(key)
        return result

    async def _write(self, key: ServiceKey, fingerprint: str | None, doing: str, refs: list[ObjectRef],
                     write: Callable[[], Awaitable[Result]]) -> Result:
        """One Service write, unless our writes of this state keep being undone (then a wait; not for a
        ``fingerprint`` of None); a failure the API explains is kept for the status lane and reported
        as a Warning Event."""
        wait = 0.0 if fingerprint is None else self.fights.delay(key, fingerprint)
        if wait > 0:
            return Result(requeue_after=wait,
                          reason=f"Service {key.name}: another writer keeps undoing ours; next try in {wait:.1f}s")
        try:
            result = await write()
        except ApiError as exc:
            if not isinstance(exc, TooManyRequests):  # throttling is transient and not the user's to fix
                message = f"{doing} failed: {exc}"
                if self._write_errors.get(key) != message:
                    self._status_due.add(key)
                self._write_errors[key] = message
                for ref in refs:
                    self.events.record(ref, "Warning", reasons.WRITE_FAILED, message)
            raise
        if result.actions and fingerprint is not None and self.fights.wrote(key, fingerprint):
            rounds = self.fights.rounds(key)
            log.warning("service_fight", key=str(key), rounds=rounds)
            for ref in refs:
                self.events.record(
                    ref, "Warning", reasons.FIGHT,
                    f"Service {key.name}: another writer undid our last {rounds} writes; "
                    f"retrying with backoff (up to {self.fights.cap:g}s)")
        return result

    # ------------------------------------------------------------------ the Service cache's news
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

    def service_changed(self, key: ServiceKey, deleted: JsonObj | None, current: JsonObj | None = None) -> bool:
        """The Service cache changed ``key`` (``deleted``: the Service it deleted; ``current``: the Service it
        now holds). Returns whether ``current`` is exactly what our last write of the key returned."""
        token = self._expect.observed(key)
        if deleted is not None:
            self._deleted_under_us(key, deleted)
        return (current is not None and token is not None and isinstance(token.value, dict)
                and resource_version(current) != "" and resource_version(current) == resource_version(token.value))

    def _deleted_under_us(self, key: ServiceKey, deleted: JsonObj) -> None:
        if not is_managed(deleted, self.profile.group):
            return
        addresses = service_addresses(deleted)
        if addresses is not None and self.inputs(key).desired is not None:
            # Deleted while still wanted (not by us, and not by the garbage collector after the last
            # owner): the re-create asks for the same addresses.
            self.addresses.remember(key, addresses)

    # ------------------------------------------------------------------ writes
    async def _post(self, manifest: JsonObj) -> JsonObj:
        return await self.client.request("POST", SERVICES.path(manifest["metadata"]["namespace"]),
                                         params={"fieldManager": FIELD_MANAGER}, body=manifest)

    async def _create(self, desired: DesiredService) -> Result:
        self.fence()
        key = ServiceKey(desired.namespace, desired.name)
        previous = self.addresses.get(key)
        if previous is not None and (pause := self.addresses.wait(key)) > 0:
            return Result(requeue_after=pause,
                          reason=f"Service {key.name}: letting the API server release its previous {previous}")
        token = self._expect.begin(key)
        try:
            created = await self._post(desired.manifest(previous))
        except AlreadyExists:
            self._expect.cancel(token)
            # Our cache is behind (or someone just created it): look again later, never overwrite.
            return Result(requeue=True, reason=f"Service {desired.name} already exists; waiting for the cache")
        except Invalid as exc:
            if previous is None:
                self._expect.cancel(token)
                raise
            if _ALLOCATED in exc.message and (wait := self.addresses.refused(key)) is not None:
                # Most likely not released yet: the watch shows a delete before the API server frees its
                # addresses.
                self._expect.cancel(token)
                return Result(requeue_after=wait, reason=f"Service {key.name}: its previous {previous} are not "
                                                          f"free yet ({exc.message}); next try in {wait:.2f}s")
            created = await self._create_fresh(desired, previous, exc, token)
        except BaseException:
            self._expect.cancel(token)
            raise
        else:
            message = (f"Created Service {key.name} ({desired.port})" if previous is None else
                       f"Re-created Service {key.name} ({desired.port}) after someone deleted it, with its "
                       f"previous {previous}")
            self._event(desired, "Normal", reasons.CREATED, message)
        self.addresses.forget(key)
        self._expect.settle(token, created)
        return Result(actions=("service_created",))

    async def _create_fresh(self, desired: DesiredService, previous: Addresses, refused: Invalid,
                            token: Any) -> JsonObj:
        # Taken by another Service meanwhile (or out of range now): new addresses beat no Service. Said
        # loudly: clients pinned to the old ones must be told.
        key = ServiceKey(desired.namespace, desired.name)
        try:
            created = await self._post(desired.manifest())
        except BaseException:
            self._expect.cancel(token)
            raise
        fresh = service_addresses(created)
        log.warning("service_address_changed", key=str(key), previous=str(previous), now=str(fresh),
                    error=str(refused))
        self._event(desired, "Warning", reasons.ADDRESS_CHANGED,
                    f"Re-created Service {key.name} with new addresses: the API server refused its previous "
                    f"{previous} ({refused.message}); it now has {fresh}")
        return created

    async def _patch(self, actual: Mapping[str, Any], patch: dict[str, Any], *,
                     action: str = "service_updated") -> Result:
        self.fence()
        meta = actual["metadata"]
        patch.setdefault("metadata", {})["resourceVersion"] = meta["resourceVersion"]  # precondition
        key = ServiceKey(meta["namespace"], meta["name"])
        token = self._expect.begin(key)
        try:
            updated = await self.client.request(
                "PATCH", SERVICES.path(meta["namespace"], meta["name"]),
                params={"fieldManager": FIELD_MANAGER}, body=patch, content_type=MERGE_PATCH)
        except (Conflict, NotFound) as exc:
            self._expect.cancel(token)
            return Result(requeue=True, reason=f"Service {meta['name']} changed under us: {exc.reason}")
        except BaseException:
            self._expect.cancel(token)
            raise
        self._expect.settle(token, updated)
        return Result(actions=(action,))

    async def _delete(self, actual: Mapping[str, Any]) -> Result:
        self.fence()
        meta = actual["metadata"]
        key = ServiceKey(meta["namespace"], meta["name"])
        token = self._expect.begin(key)
        try:
            await self.client.request(
                "DELETE", SERVICES.path(meta["namespace"], meta["name"]),
                body={"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                      "preconditions": {"uid": meta["uid"]}})
        except NotFound:
            self._expect.cancel(token)
            return _DONE
        except Conflict as exc:
            self._expect.cancel(token)
            # UID precondition failed: a different object now has this name; re-evaluate it.
            return Result(requeue=True, reason=f"Service {meta['name']} was replaced: {exc.reason}")
        except BaseException:
            self._expect.cancel(token)
            raise
        self._expect.settle(token, None)
        return Result(actions=("service_deleted",))

    # ------------------------------------------------------------------ events
    def _event(self, desired: DesiredService, type_: str, reason: str, message: str) -> None:
        self.events.record(self._owner_ref(desired), type_, reason, message)

    def _owner_ref(self, desired: DesiredService) -> ObjectRef:
        owner = desired.owners[0]
        return ObjectRef(desired.namespace, owner.name, owner.uid, self.profile.api_version, MD_KIND)



def md_ref(view: ModuleDeploymentView, profile: Profile) -> ObjectRef:
    """The ModuleDeployment an Event is about."""
    return ObjectRef(view.namespace, view.name, view.uid, profile.api_version, MD_KIND)


def _moved(previous: Addresses | None, service: Mapping[str, Any]) -> bool:
    """Whether ``service`` lacks addresses we still owe to the clients of a deleted one."""
    if previous is None:
        return False
    now = service_addresses(service)
    return now is None or now.cluster_ips != previous.cluster_ips or now.node_port != previous.node_port


def _invalid_contributor(views: list[ModuleDeploymentView]) -> bool:
    return any(v.enabled and v.problems and not v.deleting for v in views)


def _fingerprint(desired: DesiredService) -> str:
    return json.dumps(desired.manifest(), sort_keys=True)
