"""The status lane: each ModuleDeployment's ``status.moduleService``, or Events where the CRD cannot
store it.

Only that sub-object is ours (Koupleless' module-controller owns the rest of the status). It is written
through the status subresource with a merge patch, and only when it differs from what is cached. A CRD
whose schema prunes it (Koupleless', sofa-serverless') gets no status writes at all: each
ModuleDeployment's state goes out as an Event whenever it changes, so ``kubectl describe`` still tells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from ..runtime.events import now_rfc3339
from ..runtime.kube.client import JsonObj
from ..runtime.kube.errors import NotFound
from ..runtime.result import Result
from ..runtime.store import resource_version
from . import reasons
from .desired import (
    FIELD_MANAGER,
    ModuleDeploymentView,
    adoptable,
    foreign_group,
    is_managed,
    module_of_service,
    service_name,
)
from .mapping import ServiceKey, md_module, pod_modules, pod_ready
from .reconcile import MERGE_PATCH, POD_MODULE_INDEX, Reconciler, md_ref
from .status import Outcome, module_service_status, status_patch

__all__ = ["StatusWriter"]

log = structlog.get_logger(__name__)
_DONE = Result()


class StatusWriter:
    def __init__(self, reconciler: Reconciler, *,
                 on_status_pruned: Callable[[bool], None] = lambda pruned: None) -> None:
        self._r = reconciler
        self._on_status_pruned = on_status_pruned
        # Why status.moduleService cannot be stored on this CRD (None: it can). While set, no status write
        # is made and each ModuleDeployment's state goes out as an Event when it changes.
        self.status_pruned: str | None = None
        self._reported: dict[ServiceKey, dict[str, tuple[str, str]]] = {}
        # Read-your-writes for status, per key and then per ModuleDeployment uid: (its resourceVersion
        # before our write, what we wrote). A key's entry holds only the ModuleDeployments its last pass saw
        # alive, so deleted ones never accumulate.
        self._written: dict[ServiceKey, dict[str, tuple[str, dict[str, Any]]]] = {}

    @property
    def pending_writes(self) -> int:
        """Keys whose last status write the cache has not shown yet."""
        return len(self._written)

    async def reconcile(self, key: ServiceKey) -> Result:
        """Writes ``status.moduleService`` of every ModuleDeployment of this key, where it changed."""
        if module_of_service(key.name) is None:
            return _DONE
        r = self._r
        inputs = r.inputs(key)
        views, desired = inputs.views, inputs.desired
        if not views:
            self._written.pop(key, None)
            self._reported.pop(key, None)
            return _DONE
        actual = r.service_view(key)
        managed = actual is not None and is_managed(actual, r.profile.group)
        pods, ready = self._count_pods(key.namespace, inputs.module)
        outcome = Outcome(
            desired=desired,
            service=actual if managed and desired is not None else None,
            # A Service about to be adopted is pending, not a conflict.
            name_conflict=desired is not None and actual is not None and not managed
            and not (r.adopt and adoptable(actual, desired)),
            pods=pods, ready_pods=ready, write_error=r.write_error(key),
            foreign_group=foreign_group(actual, r.profile.group) if actual is not None else None,
        )
        if self.status_pruned is not None:
            self._report_by_events(key, views, outcome)
            return _DONE
        return await self._write_statuses(key, views, outcome)

    def status_update_matters(self, old: JsonObj, new: JsonObj) -> bool:
        """Whether a status-only update of a ModuleDeployment can change what this lane writes. Not when
        ``status.moduleService`` did not change (someone else's part of the status), nor when it now says
        exactly what we last wrote (our own write coming back: the key's inputs are what they were, and
        any other change queues the key through its own event). That echo also ends the wait for it."""
        before = _module_service(old)
        after = _module_service(new)
        if before == after:
            return False
        meta = new.get("metadata") or {}
        key = ServiceKey(str(meta.get("namespace") or ""), service_name(md_module(new)))
        uid = str(meta.get("uid") or "")
        pending = self._written.get(key, {})
        mine = pending.get(uid)
        if mine is None or not isinstance(after, dict) or _without_transition_times(after) != mine[1]:
            return True
        del pending[uid]
        if not pending:
            del self._written[key]
        return False

    def set_status_pruned(self, reason: str | None) -> None:
        """Switches status writes off (``reason`` says why) or back on; logs once per change."""
        if reason == self.status_pruned or (reason is not None and self.status_pruned is not None):
            return
        self.status_pruned = reason
        self._on_status_pruned(reason is not None)
        crd = self._r.profile.crd_name
        if reason is not None:
            log.warning("status_not_writable", crd=crd, reason=reason,
                        message=f"CustomResourceDefinition {crd} cannot store status.moduleService ({reason}); "
                                "not writing it, reporting each ModuleDeployment's state through Events instead")
        else:
            self._reported.clear()
            log.info("status_writable", crd=crd)

    # ------------------------------------------------------------------ status writes
    def _count_pods(self, ns: str, module: str) -> tuple[int, int]:
        total = ready = 0
        if not module:
            return 0, 0
        prefix = self._r.profile.label_prefix
        for pod in self._r.pods.by_index(POD_MODULE_INDEX, f"{ns}/{module}"):
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                continue
            if dict(pod_modules(pod, prefix)).get(module) != "true":
                continue
            total += 1
            ready += pod_ready(pod)
        return total, ready

    async def _write_statuses(self, key: ServiceKey, views: list[ModuleDeploymentView], outcome: Outcome) -> Result:
        now = now_rfc3339()
        pending = self._written.get(key, {})
        kept: dict[str, tuple[str, dict[str, Any]]] = {}
        written = 0
        try:
            for view in views:
                wrote = await self._write_status(view, outcome, now, pending=pending.get(view.uid), kept=kept)
                if wrote is None:
                    self._report_by_events(key, views, outcome)  # the CRD prunes it: say it in Events
                    break
                written += wrote
        finally:
            if kept:
                self._written[key] = kept
            else:
                self._written.pop(key, None)
        return Result(actions=("status_written",) * written)

    async def _write_status(self, view: ModuleDeploymentView, outcome: Outcome, now: str, *,
                            pending: tuple[str, dict[str, Any]] | None,
                            kept: dict[str, tuple[str, dict[str, Any]]]) -> bool | None:
        """Whether a status was written; None when the write showed that the CRD cannot store it."""
        r = self._r
        if view.deleting:
            return False
        md = r.mds.get(f"{view.namespace}/{view.name}")
        if md is None:
            return False
        current = (md.get("status") or {}).get("moduleService")
        wanted = module_service_status(view, outcome)
        md_rv = resource_version(md)
        if pending is not None and pending[0] == md_rv and pending[1] == wanted:
            kept[view.uid] = pending
            return False  # our last write says exactly this and the cache has not seen it yet
        patch = status_patch(current if isinstance(current, dict) else None, wanted, now)
        if patch is None:
            return False
        r.fence()
        try:
            answer: JsonObj = await r.client.request(
                "PATCH", r.profile.resource.path(view.namespace, view.name, "status"),
                params={"fieldManager": FIELD_MANAGER}, body=patch, content_type=MERGE_PATCH)
        except NotFound:
            return False
        stored = (answer.get("status") or {}).get("moduleService")
        if not isinstance(stored, dict) or "conditions" not in stored:
            # 200 OK and our field (or its content) is gone: the schema prunes it. Writing again would
            # change nothing.
            self.set_status_pruned("the API server dropped status.moduleService from the PATCH response")
            return None
        kept[view.uid] = (md_rv, wanted)
        cond = wanted["conditions"][0]
        if cond["reason"] in reasons.WARNING_REASONS and cond["reason"] != _reason(current):
            r.events.record(md_ref(view, r.profile), "Warning", cond["reason"], cond["message"])
        return True

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
            if state[0] == reasons.PENDING:
                continue  # transient: the next pass reports where it lands
            now[view.uid] = state
            if before.get(view.uid) != state:
                type_ = "Warning" if state[0] in reasons.WARNING_REASONS else "Normal"
                self._r.events.record(md_ref(view, self._r.profile), type_, state[0], state[1])
        if now:
            self._reported[key] = now
        else:
            self._reported.pop(key, None)


def _module_service(md: JsonObj) -> Any:
    status = md.get("status")
    return status.get("moduleService") if isinstance(status, dict) else None


def _without_transition_times(module_service: dict[str, Any]) -> dict[str, Any]:
    """``status.moduleService`` as :func:`module_service_status` computes it (the write adds the times)."""
    conditions = module_service.get("conditions")
    if not isinstance(conditions, list):
        return module_service
    return {**module_service, "conditions": [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, dict) else c for c in conditions]}


def _reason(module_service: Any) -> str | None:
    if not isinstance(module_service, dict):
        return None
    conditions = module_service.get("conditions") or []
    return str(conditions[0].get("reason")) if conditions and isinstance(conditions[0], dict) else None
