"""Informers: a paginated LIST, then a WATCH from the list's resourceVersion, into an indexed Store.

Semantics follow client-go's Reflector (tools/cache/reflector.go):
- WATCH with ``allowWatchBookmarks`` and a server ``timeoutSeconds`` drawn from [300, 600) each time;
  a clean end re-watches at once from the last resourceVersion (no relist).
- Our own inactivity watchdog (the silent half-open connection every Python controller has met): no
  event or bookmark for ``idle_timeout`` (~70 s; bookmarks come every minute) drops the stream, which
  resumes from the last resourceVersion; two silent watches in a row relist.
- 410 Gone relists after the backoff (so informers whose RVs expire together do not stampede); objects
  that vanished meanwhile reach handlers as deletes. A 429 waits and re-watches from the same RV.
- LIST resourceVersion follows client-go's ``relistResourceVersion``: the first list ``0`` (the watch
  cache), a relist "not older than" the last RV seen, and only a relist after 410 the latest state.
- Failures back off 0.8 s -> 30 s (factor 2, jitter 1.0), reset after 2 minutes without failure. ``run``
  reports ``started`` after the first full list (``has_synced``).
- Streaming lists (``stream_lists``; client-go's WatchListClient): the list is a WATCH with
  ``sendInitialEvents=true`` ending in a BOOKMARK annotated ``k8s.io/initial-events-end``, then goes on as
  the watch. A server that rejects or ignores it turns it off for good; silence before the end marker
  lists this once, and twice in a row turns it off.
- ``wedged_for()`` measures the loop itself (an attempt, a page or an event), never the API server: it
  feeds liveness, which must not restart the process during an API outage.
- ``keep`` (client-go has none; selectors cannot say "has a label key with this prefix"): objects it
  rejects are never stored; one that stops (starts) being kept is delivered as a delete (an add).
Handlers are called synchronously on the event loop and must only map objects to keys and enqueue.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import TaskStatus

from .backoff import Backoff
from .clock import SYSTEM_CLOCK, Clock
from .informermetrics import InformerMetrics, NoInformerMetrics
from .kube.client import JsonObj, KubeClient
from .kube.errors import ApiError, Gone, KubeError, TooManyRequests, TransportError, WatchStalled
from .kube.resources import Resource
from .listing import LIST_TIMEOUT, list_all
from .store import (
    EventHandler,
    Store,
    apply,
    compacted,
    object_key,
    replace,
    replace_steps,
    resource_version,
    strip_managed_fields,
)

__all__ = ["Informer", "InformerMetrics"]

log = structlog.get_logger(__name__)

Transform = Callable[[JsonObj], JsonObj]
Keep = Callable[[JsonObj], bool]

PAGE_SIZE = 500  # client-go's pager default
IDLE_TIMEOUT = 70.0  # kopf's default: longer than the ~60 s bookmark interval
MIN_WATCH_TIMEOUT = 300  # client-go: random in [5m, 10m) spreads reconnects of many clients
VERY_SHORT_WATCH = 1.0  # client-go: a watch that ends within 1 s with no event is an error
SILENT_WATCHES_BEFORE_RELIST = 2
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class _NotStreaming(Exception):
    """This streaming list failed in a way a LIST can fix: list instead (``permanent``: from now on)."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


class Informer:
    """List-watch one resource (in one namespace, or all) into a Store and notify handlers."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        store: Store,
        namespace: str | None = None,
        handlers: Iterable[EventHandler] = (),
        transform: Transform = strip_managed_fields,
        metrics: InformerMetrics | None = None,
        page_size: int = PAGE_SIZE,
        idle_timeout: float = IDLE_TIMEOUT,
        min_watch_timeout: int = MIN_WATCH_TIMEOUT,
        label_selector: str | None = None,
        keep: Keep | None = None,
        stream_lists: bool = False,
        field_selector: str | None = None,
        compact_lists: bool = False,
        intern: Callable[[JsonObj], None] | None = None,
        on_replaced: Callable[[], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
        backoff: Backoff | None = None,
    ) -> None:
        self.client = client
        self.clock = clock
        self.resource = resource
        self.store = store
        # "" lists the whole cluster (Resource.path), so it must also mean "all" to the scope check below.
        self.namespace = namespace or None
        self.handlers = list(handlers)
        self.transform = transform
        self.metrics: InformerMetrics = metrics or NoInformerMetrics()
        self.page_size = page_size
        self.idle_timeout = idle_timeout
        self.min_watch_timeout = min_watch_timeout
        self.label_selector = label_selector
        self.keep = keep
        self.stream_lists = stream_lists
        # The transform returns plain JSON (dicts, lists, strings, numbers, booleans, None), so a list's
        # kept objects may be re-created side by side (see _compacted).
        self.compact_lists = compact_lists
        self.intern = intern  # interns a transformed object's repeated strings again after compaction
        # Called after every full list has been synced into the store (the first one and each relist):
        # a relist reports only differences, so whoever remembers something the store did not show yet
        # (a write not yet seen, say) must learn that the store is current again.
        self.on_replaced = on_replaced
        self._stream_synced = False  # the current streaming list has delivered its initial state
        self._stream_misses = 0  # streaming lists in a row that went silent before their end marker
        self.field_selector = field_selector
        self.has_synced = False
        self.resource_version = ""
        # monotonic time of the last sign of life: a list done, or an event or bookmark received. Opening a
        # watch is not one: a stream that opens and then stays silent (a stalled proxy or LB) re-opens
        # every idle_timeout, and counting that would keep /healthz green while nothing arrives.
        self.last_activity = clock.now()
        self.last_error: str | None = None
        # monotonic time the loop last turned: an attempt started, a page or an event arrived, a backoff ended.
        self.last_turn = self.last_activity
        self._silent_watches = 0
        self._backoff = backoff or Backoff()
        self._log = log.bind(resource=resource.plural, namespace=namespace or "*")

    # ------------------------------------------------------------------ health
    def _alive(self) -> None:
        self.last_activity = self.last_turn = self.clock.now()

    def _turn(self) -> None:
        self.last_turn = self.clock.now()

    def wedged_for(self) -> float:
        """Seconds since the loop last turned. Every await in it is bounded (a page by LIST_TIMEOUT, a
        silent watch by ``idle_timeout``, a backoff by twice its cap), so more than :attr:`step_limit` means
        the loop is stuck, whatever the API server does."""
        return self.clock.now() - self.last_turn

    @property
    def step_limit(self) -> float:
        return max(self.idle_timeout, LIST_TIMEOUT) + 2 * self._backoff.cap * (1 + self._backoff.jitter)

    # ------------------------------------------------------------------ main loop
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs forever. ``task_status.started()`` after the first full list (``has_synced``)."""
        need_list = True
        relist_reason = "initial"
        while True:
            self._turn()
            try:
                if need_list and self.stream_lists:
                    try:
                        await self._watch_list(relist_reason, task_status)
                    except _NotStreaming as exc:
                        self._stream_misses = 0 if exc.permanent else self._stream_misses + 1
                        if exc.permanent or self._stream_misses >= SILENT_WATCHES_BEFORE_RELIST:
                            self.stream_lists = False
                        self._log.info("streaming_list_fallback", reason=str(exc), disabled=not self.stream_lists)
                    else:
                        need_list = False  # synced, then the stream ended like any watch: re-watch
                        continue
                    finally:
                        if self._stream_synced:
                            need_list = False  # an error after the initial state: handled as a watch's
                if need_list:
                    await self._list(relist_reason)
                    need_list = False
                    self._synced(task_status)
                opened = self.clock.now()
                events = await self._watch()
                if events == 0 and self.clock.now() - opened < VERY_SHORT_WATCH:
                    raise TransportError("very short watch: closed within 1s without an event")
                self._log.debug("watch_ended", resource_version=self.resource_version, events=events)
            except Gone as exc:
                # The RV we hold was compacted away: only a fresh list can restore a consistent view.
                self.metrics.gone()
                delay = self._backoff.next(self.clock.now())
                self._log.info("watch_expired", error=str(exc), relist_in_s=round(delay, 2))
                need_list, relist_reason = True, "gone"
                self.resource_version = ""
                await self.clock.sleep(delay)
            except WatchStalled as exc:
                self.metrics.watch_error("stall")
                self.last_error = str(exc)
                self._silent_watches += 1
                self._log.warning("watch_stalled", error=str(exc), in_a_row=self._silent_watches)
                if self._silent_watches >= SILENT_WATCHES_BEFORE_RELIST:
                    # Silence twice: relist (from the cache, not older than our RV) instead of trusting the
                    # stream; a list that succeeds proves the view is current.
                    need_list, relist_reason = True, "stall"
                    self._silent_watches = 0
                # Otherwise resume from the last RV at once: the connection is dead, not the RV.
            except KubeError as exc:
                kind = "transport" if isinstance(exc, TransportError) else "api"
                self.metrics.watch_error(kind)
                self.last_error = str(exc)
                delay = self._backoff.next(self.clock.now())
                if isinstance(exc, TooManyRequests) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                if isinstance(exc, ApiError) and not isinstance(exc, TooManyRequests) and not need_list:
                    # client-go relists after unexpected watch errors; connection failures re-watch, and so
                    # does throttling (the reflector waits and retries the watch from the same RV).
                    need_list, relist_reason = True, "error"
                self._log.warning(
                    "watch_failed" if not need_list or self.has_synced else "list_failed",
                    error=str(exc), retry_in_s=round(delay, 2),
                )
                await self.clock.sleep(delay)

    def _synced(self, task_status: TaskStatus[None]) -> None:
        if not self.has_synced:
            self.has_synced = True
            self.metrics.synced(True)
            task_status.started()

    async def _watch_list(self, reason: str, task_status: TaskStatus[None]) -> None:
        """A streaming list that goes on as the watch. Raises _NotStreaming when the server cannot."""
        if reason != "initial":
            self.metrics.relist(reason)
        self.metrics.list()
        self._stream_synced = False
        params: dict[str, str | int | bool] = {
            "sendInitialEvents": True,
            "resourceVersionMatch": "NotOlderThan",
            # "" = the latest state (first list, or after a 410); else not older than what we have seen.
            "resourceVersion": self.resource_version if self.has_synced else "",
            "allowWatchBookmarks": True,
            "timeoutSeconds": random.randint(self.min_watch_timeout, 2 * self.min_watch_timeout - 1),
        }
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        items: dict[str, JsonObj] = {}

        def on_event(event: JsonObj) -> None:
            self._silent_watches = 0
            self._alive()
            if self._stream_synced:
                self._handle(event)
                return
            etype, obj = event.get("type"), event.get("object")
            if not isinstance(obj, dict):
                return
            if etype == "BOOKMARK":
                annotations = (obj.get("metadata") or {}).get("annotations") or {}
                if annotations.get(INITIAL_EVENTS_END) != "true":
                    raise _NotStreaming("a bookmark without the initial-events-end annotation came first")
                self._replace(list(items.values()))
                self.resource_version = resource_version(obj)
                self._stream_synced = True
                self._stream_misses = 0
                self._log.info("list_done", objects=len(items), resource_version=self.resource_version,
                               reason=reason, streamed=True)
                self._synced(task_status)
                return
            obj.setdefault("kind", self.resource.kind)
            obj = self.transform(obj)
            key = object_key(obj)
            if etype == "DELETED" or (self.keep is not None and not self.keep(obj)):
                items.pop(key, None)
            else:
                items[key] = obj

        try:
            await self.client.watch(
                self.resource.path(self.namespace), params=params, on_event=on_event,
                idle_timeout=self.idle_timeout, on_open=self.metrics.watch_start,
            )
        except ApiError as exc:
            if not self._stream_synced and exc.status in (400, 422):
                raise _NotStreaming(str(exc)) from exc
            raise
        except WatchStalled as exc:
            if not self._stream_synced:
                # A slow server, or one that never sends the end marker (a resource served without a
                # watch cache): list this time; twice in a row, for good.
                raise _NotStreaming(f"no end of the initial events: {exc}", permanent=False) from exc
            raise
        if not self._stream_synced:
            raise _NotStreaming("the stream ended before the end of the initial events", permanent=False)

    def _list_params(self) -> dict[str, str | int | bool]:
        params: dict[str, str | int | bool] = {"limit": self.page_size}
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        if not self.has_synced:
            # Any cached state will do for the first list: the watch that follows catches up. RV=0 is
            # served from the watch cache, which ignores ``limit`` (one page).
            params["resourceVersion"] = "0"
        elif self.resource_version:
            params["resourceVersion"] = self.resource_version
            params["resourceVersionMatch"] = "NotOlderThan"
        # else: after a 410 our RV is gone; ask for the latest state (served from the cache since 1.31's
        # consistent reads from cache, else a quorum read).
        return params

    # ------------------------------------------------------------------ list
    async def _list(self, reason: str) -> None:
        if reason != "initial":
            self.metrics.relist(reason)
        self.metrics.list()
        items, list_rv = await list_all(
            self.client, self.resource.path(self.namespace), self._list_params(), kind=self.resource.kind,
            transform=self.transform, keep=self.keep, on_page=self._turn)
        if self.compact_lists and len(items) >= self.page_size:
            items = compacted(items, self.intern)
        # In steps: a list of tens of thousands must not hold up the other informers' handlers and the
        # workers (a Service lane that could already create a missing Service) until it is all stored.
        for _ in replace_steps(self.store, items, self.handlers, self._in_scope):
            await anyio.lowlevel.checkpoint()
        self.metrics.objects(len(self.store))
        if self.on_replaced is not None:
            self.on_replaced()
        self.resource_version = list_rv
        self._silent_watches = 0
        self._alive()
        self._log.info("list_done", objects=len(items), resource_version=list_rv, reason=reason)

    def _in_scope(self, key: str) -> bool:
        return self.namespace is None or key.startswith(self.namespace + "/")

    def _replace(self, items: list[JsonObj]) -> None:
        replace(self.store, items, self.handlers, self._in_scope)
        self.metrics.objects(len(self.store))
        if self.on_replaced is not None:
            self.on_replaced()

    # ------------------------------------------------------------------ watch
    async def _watch(self) -> int:
        params: dict[str, str | int | bool] = {
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": True,
            "timeoutSeconds": random.randint(self.min_watch_timeout, 2 * self.min_watch_timeout - 1),
        }
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        count = 0

        def on_open() -> None:
            self.metrics.watch_start()

        def on_event(event: JsonObj) -> None:
            nonlocal count
            count += 1
            self._silent_watches = 0
            self._alive()
            self._handle(event)

        await self.client.watch(
            self.resource.path(self.namespace), params=params, on_event=on_event,
            idle_timeout=self.idle_timeout, on_open=on_open,
        )
        return count

    def _handle(self, event: JsonObj) -> None:
        etype = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict) or etype not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
            self._log.warning("watch_event_unexpected", type=etype)
            return
        self.metrics.event(str(etype))
        rv = resource_version(obj)
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        obj.setdefault("kind", self.resource.kind)
        obj = self.transform(obj)
        apply(self.store, obj, self.handlers, deleted=etype == "DELETED", kept=self.keep is None or self.keep(obj))
        if rv:
            self.resource_version = rv
        self.metrics.objects(len(self.store))
