"""The CRD gate: ModuleDeployments are served exactly while their CustomResourceDefinition is.

The CRD may be missing at start, deleted and re-created while the controller runs: no error storm and no
crash loop meanwhile, and a fresh list as soon as it is back. Each incarnation gets fresh informers over
the same store, whose first list reconciles the store with what exists now. The CRD's schema also says
whether ``status.moduleService`` can be stored (Koupleless' CRD prunes it).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import structlog
from anyio.abc import TaskStatus

from ..runtime.controller import Notifier
from ..runtime.health import HealthChecks
from ..runtime.informer import Informer
from ..runtime.kube.client import JsonObj, KubeClient
from ..runtime.kube.errors import Forbidden, KubeError
from ..runtime.kube.resources import CRDS
from ..runtime.store import Store
from .crdschema import not_served_reason, status_pruned_reason
from .profiles import Profile

__all__ = ["CrdGate"]

log = structlog.get_logger(__name__)


class CrdGate:
    """A runnable (a cache: it has started once the CRD has been looked up) that runs the ModuleDeployment
    informers made by ``make_informers`` while the CRD is served."""

    def __init__(self, client: KubeClient, profile: Profile, *, notifier: Notifier,
                 make_informers: Callable[[], list[Informer]], idle_timeout: float,
                 on_status_pruned: Callable[[str | None], None], on_served: Callable[[bool], None],
                 on_schema_writable: Callable[[], None]) -> None:
        self._client = client
        self.profile = profile
        self._notifier = notifier
        self._make_informers = make_informers
        self._on_status_pruned = on_status_pruned
        self._on_served = on_served
        self._on_schema_writable = on_schema_writable
        self.crds = Store()
        self.crd_informer: Informer | None = Informer(
            client, CRDS, store=self.crds, handlers=[_Changed(self._changed)],
            field_selector=f"metadata.name={profile.crd_name}",
            # One object that rarely changes: only bookmarks (about once a minute) show it alive.
            idle_timeout=max(idle_timeout, 70.0),
        )
        self.problem: str | None = "has not been looked up yet"
        self._seen = False
        self._schema_pruned: str | None = None  # what the schema last said about status.moduleService
        self.md_informers: list[Informer] = []
        self.serving = False  # ModuleDeployment informers running and synced

    def message(self) -> str:
        return (f"CustomResourceDefinition {self.profile.crd_name} {self.problem}: "
                f"ModuleDeployments ({self.profile.api_version}) are not served until it is")

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            await self._check_access()
            if self.crd_informer is not None:
                await tg.start(self.crd_informer.run)
                self._changed()  # the first list found it or not: say which, once
            task_status.started()
            await self._serve()

    async def _check_access(self) -> None:
        """Without read access to CRDs (a Role in namespaced mode cannot grant a cluster-scoped read), serve
        as if the CRD were there: the ModuleDeployment informer then retries on its own backoff, and pruned
        status is still found from PATCH responses. Said once, with what to grant."""
        try:
            await self._client.request("GET", CRDS.path(), params={
                "fieldSelector": f"metadata.name={self.profile.crd_name}", "limit": 1})
        except Forbidden:
            self.crd_informer = None
            self._seen = True
            self._set_problem(None)
            log.info("crd_not_followed", crd=self.profile.crd_name,
                     message="no read access to CustomResourceDefinitions: assuming the CRD is installed; grant "
                             f"get, list and watch on customresourcedefinitions/{self.profile.crd_name} to "
                             "follow it")
        except KubeError:
            pass  # the informer retries and reports it

    async def _serve(self) -> None:
        while True:
            await self._notifier.wait_for(lambda: self.problem is None)
            self.md_informers = self._make_informers()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._start_md_informers, self.md_informers)
                await self._notifier.wait_for(lambda: self.problem is not None)
                tg.cancel_scope.cancel()
            self.serving = False
            self.md_informers = []
            self._notifier.notify()

    async def _start_md_informers(self, informers: list[Informer]) -> None:
        async with anyio.create_task_group() as tg:
            for inf in informers:
                await tg.start(inf.run)
            self.serving = True
            log.info("moduledeployments_synced", api_version=self.profile.api_version,
                     objects=len(informers[0].store) if informers else 0)
            self._notifier.notify()

    # ------------------------------------------------------------------ the CRD's changes
    def _changed(self) -> None:
        """Every change of our CRD (or its removal); one log line per change of state."""
        crd = self.crds.get(self.profile.crd_name)
        problem = not_served_reason(crd, self.profile.version)
        if crd is not None and problem is None:
            schema = status_pruned_reason(crd, self.profile.version)
            # Only a change of what the schema says switches status writing: a CRD update that leaves it
            # alone (a label, its status) must not undo what a PATCH response taught us.
            if schema != self._schema_pruned or not self._seen:
                was = self._schema_pruned
                self._schema_pruned = schema
                self._on_status_pruned(schema)
                if was is not None and schema is None:
                    self._on_schema_writable()
        self._set_problem(problem)

    def _set_problem(self, problem: str | None) -> None:
        if problem == self.problem and self._seen:
            return
        # Log when serving starts or stops, not on every step in between (created -> names accepted ->
        # established): one line per change a user cares about.
        flipped = (problem is None) != (self.problem is None) or not self._seen
        self._seen = True
        self.problem = problem
        self._on_served(problem is None)
        if flipped and problem is None:
            log.info("crd_served", crd=self.profile.crd_name, api_version=self.profile.api_version)
        elif flipped:
            log.warning("crd_not_served", crd=self.profile.crd_name, reason=problem, message=self.message())
        self._notifier.notify()

    # ------------------------------------------------------------------ health
    def add_checks(self, healthz: HealthChecks, readyz: HealthChecks, scopes: list[str | None],
                   wedged: Callable[[Informer], Callable[[], str | None]]) -> None:
        readyz.add("crd", lambda: None if self.problem is None else self.message())
        crd = self.crd_informer
        if crd is not None:
            # A stuck CRD watch only delays noticing a CRD change; it is no reason for a restart.
            readyz.add(f"synced-{CRDS.plural}-all",
                       lambda: None if self.crd_informer is None or crd.has_synced else "informer has not synced")
        for ns in scopes:
            suffix = f"{self.profile.resource.plural}-{ns or 'all'}"
            healthz.add(f"informer-{suffix}", self._md_check(ns, wedged))
            readyz.add(f"synced-{suffix}", self._md_synced(ns))

    def _md_check(self, ns: str | None,
                  wedged: Callable[[Informer], Callable[[], str | None]]) -> Callable[[], str | None]:
        def check() -> str | None:
            inf = next((i for i in self.md_informers if i.namespace == ns), None)
            return None if inf is None else wedged(inf)()
        return check

    def _md_synced(self, ns: str | None) -> Callable[[], str | None]:
        def check() -> str | None:
            if self.problem is not None:
                return self.message()
            inf = next((i for i in self.md_informers if i.namespace == ns), None)
            return None if inf is not None and inf.has_synced else "informer has not synced"
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
