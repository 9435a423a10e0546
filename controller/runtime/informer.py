"""Informers: a paginated LIST, then a WATCH from the list's resourceVersion, into an indexed Store.

Semantics follow client-go's Reflector (tools/cache/reflector.go):
- WATCH with ``allowWatchBookmarks`` and a server ``timeoutSeconds`` drawn from [300, 600) each time;
  a clean end re-watches at once from the last resourceVersion (no relist).
- Our own inactivity watchdog: no line (event or bookmark) for ``idle_timeout`` (~70 s; bookmarks come
  about every minute) drops the stream, which then resumes from the last resourceVersion. This is the
  silent half-open connection every Python controller has been bitten by. Two silent watches in a row
  relist (a resource served without a watch cache sends no bookmarks; a stuck proxy passes nothing):
  a relist that succeeds is progress, one that fails backs off like any other error.
- 410 Gone (on the watch or in an ERROR event) relists after the backoff (client-go's reflector waits
  between ListAndWatch rounds too, so many informers whose RVs expire together do not stampede); objects
  that vanished meanwhile are delivered to handlers as deletes (client-go's DeletedFinalStateUnknown).
- LIST resourceVersion semantics follow client-go's ``relistResourceVersion``: the first list asks for
  ``resourceVersion=0`` (any cached state; the watch cache serves it without touching etcd), a relist
  asks for state not older than the last one seen (``resourceVersionMatch=NotOlderThan``, also served
  from the cache), and only a relist after 410 (our RV is gone) asks for the latest, consistent state.
- Failures back off 0.8 s -> 30 s (factor 2, jitter 1.0), reset after 2 minutes without failure.
- Streaming lists (``stream_lists``; client-go's WatchListClient, KEP-3157): the list is a WATCH with
  ``sendInitialEvents=true``: the server sends every object as ADDED from its watch cache, then a BOOKMARK
  annotated ``k8s.io/initial-events-end``, then carries on as a normal watch. No LIST, no etcd read, no
  full list response in memory. A server that rejects the parameters (400/422) or ignores them (a plain
  bookmark first) turns it off for good, and the informer lists as before; silence or an end of the
  stream before the end marker lists this once, and twice in a row turns it off.
- ``has_synced`` turns true after the first full list; ``run`` reports ``started`` at that moment.
- ``wedged_for()`` measures the loop itself (an attempt, a page or an event), never the API server: it
  feeds liveness, which must not restart the process during an API outage (controller-runtime's choice:
  liveness = not wedged, readiness = synced).
- ``keep`` (client-go has no equivalent; controller-runtime's cache uses label/field selectors, which
  cannot say "has a label key with this prefix" or "name ends with"): objects it rejects are never stored.
  An object that stops being kept is delivered as a delete, one that starts being kept as an add, so a
  change into or out of scope is never missed; on a list, those out of scope simply are not stored.
Handlers are called synchronously on the event loop and must only map objects to keys and enqueue.
Store objects are shared and read-only by contract.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import orjson
import structlog
from anyio.abc import TaskStatus

from .kube.client import JsonObj, KubeClient
from .kube.errors import ApiError, Gone, KubeError, TooManyRequests, TransportError, WatchStalled
from .kube.resources import Resource

__all__ = [
    "Backoff",
    "EventHandler",
    "Informer",
    "InformerMetrics",
    "Store",
    "object_key",
    "strip_managed_fields",
]

log = structlog.get_logger(__name__)

IndexFunc = Callable[[JsonObj], Iterable[str]]
Transform = Callable[[JsonObj], JsonObj]
Keep = Callable[[JsonObj], bool]

PAGE_SIZE = 500  # client-go's pager default
IDLE_TIMEOUT = 70.0  # kopf's default: longer than the ~60 s bookmark interval
MIN_WATCH_TIMEOUT = 300  # client-go: random in [5m, 10m) spreads reconnects of many clients
VERY_SHORT_WATCH = 1.0  # client-go: a watch that ends within 1 s with no event is an error
LIST_TIMEOUT = 120.0  # per page
SILENT_WATCHES_BEFORE_RELIST = 2
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class _NotStreaming(Exception):
    """This streaming list failed in a way a LIST can fix: list instead (``permanent``: from now on)."""

    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.permanent = permanent


def object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


def strip_managed_fields(obj: JsonObj) -> JsonObj:
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


class EventHandler(Protocol):
    def on_add(self, obj: JsonObj) -> None: ...
    def on_update(self, old: JsonObj, new: JsonObj) -> None: ...
    def on_delete(self, obj: JsonObj) -> None: ...


class InformerMetrics(Protocol):
    def list(self) -> None: ...
    def watch_start(self) -> None: ...
    def relist(self, reason: str) -> None: ...
    def gone(self) -> None: ...
    def watch_error(self, kind: str) -> None: ...
    def event(self, type: str) -> None: ...
    def objects(self, n: int) -> None: ...
    def synced(self, b: bool) -> None: ...


class _NoMetrics:
    def list(self) -> None: ...
    def watch_start(self) -> None: ...
    def relist(self, reason: str) -> None: ...
    def gone(self) -> None: ...
    def watch_error(self, kind: str) -> None: ...
    def event(self, type: str) -> None: ...
    def objects(self, n: int) -> None: ...
    def synced(self, b: bool) -> None: ...


class Store:
    """An indexed map ``namespace/name -> object`` (client-go's thread-safe store, minus threads)."""

    def __init__(self, indexers: Mapping[str, IndexFunc] | None = None) -> None:
        self._items: dict[str, JsonObj] = {}
        self._indexers = dict(indexers or {})
        self._indices: dict[str, dict[str, set[str]]] = {name: {} for name in self._indexers}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> JsonObj | None:
        return self._items.get(key)

    def values(self) -> list[JsonObj]:
        return [*self._items.values()]

    def keys(self) -> list[str]:
        return [*self._items]

    def by_index(self, index: str, value: str) -> list[JsonObj]:
        keys = self._indices[index].get(value, ())
        return [self._items[k] for k in keys]

    def index_values(self, index: str) -> list[str]:
        return [*self._indices[index]]

    def upsert(self, obj: JsonObj) -> JsonObj | None:
        key = object_key(obj)
        old = self._items.get(key)
        if old is not None:
            self._unindex(key, old)
        self._items[key] = obj
        for name, fn in self._indexers.items():
            idx = self._indices[name]
            for value in fn(obj):
                idx.setdefault(value, set()).add(key)
        return old

    def delete(self, key: str) -> JsonObj | None:
        old = self._items.pop(key, None)
        if old is not None:
            self._unindex(key, old)
        return old

    def _unindex(self, key: str, obj: JsonObj) -> None:
        for name, fn in self._indexers.items():
            idx = self._indices[name]
            for value in fn(obj):
                keys = idx.get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del idx[value]


@dataclass
class Backoff:
    """client-go's reflector backoff: 0.8 s doubling to 30 s, jitter 1.0, reset after 2 min of health."""

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    reset_after: float = 120.0
    _current: float = field(default=0.0, init=False)
    _last_failure: float = field(default=-1e18, init=False)

    def next(self, now: float) -> float:
        if now - self._last_failure > self.reset_after:
            self._current = 0.0
        self._last_failure = now
        self._current = self.initial if self._current == 0 else min(self._current * self.factor, self.cap)
        return self._current * (1 + self.jitter * random.random())


def _compacted(items: list[JsonObj]) -> list[JsonObj]:
    """The kept objects of a list, re-created side by side. Each was cut from a full object decoded next
    to it, so a large list's survivors end up scattered over every memory arena the list used and CPython
    can return none of them. Re-created once the full objects are gone, they fill few arenas and the rest
    goes back to the OS: a 30,000-Pod list kept 195 MiB of RSS, 83 MiB compacted (orjson round trip:
    milliseconds). Namespace strings are interned again, as the transforms do."""
    blob = orjson.dumps(items)
    items.clear()
    out: list[JsonObj] = orjson.loads(blob)
    del blob
    for obj in out:
        meta = obj.get("metadata")
        if isinstance(meta, dict) and isinstance(ns := meta.get("namespace"), str):
            meta["namespace"] = sys.intern(ns)
    return out


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
        on_replaced: Callable[[], None] | None = None,
    ) -> None:
        self.client = client
        self.resource = resource
        self.store = store
        # "" lists the whole cluster (Resource.path), so it must also mean "all" to the scope check below.
        self.namespace = namespace or None
        self.handlers = list(handlers)
        self.transform = transform
        self.metrics: InformerMetrics = metrics or _NoMetrics()
        self.page_size = page_size
        self.idle_timeout = idle_timeout
        self.min_watch_timeout = min_watch_timeout
        self.label_selector = label_selector
        self.keep = keep
        self.stream_lists = stream_lists
        # The transform returns plain JSON (dicts, lists, strings, numbers, booleans, None), so a list's
        # kept objects may be re-created side by side (see _compacted).
        self.compact_lists = compact_lists
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
        self.last_activity = anyio.current_time() if _in_loop() else 0.0
        self.last_error: str | None = None
        # monotonic time the loop last turned: an attempt started, a page or an event arrived, a backoff ended.
        self.last_turn = self.last_activity
        self._silent_watches = 0
        self._backoff = Backoff()
        self._log = log.bind(resource=resource.plural, namespace=namespace or "*")

    # ------------------------------------------------------------------ health
    def stalled_for(self) -> float:
        """Seconds without any sign of life; a healthy watch never exceeds ``idle_timeout``."""
        return anyio.current_time() - self.last_activity

    def _alive(self) -> None:
        self.last_activity = self.last_turn = anyio.current_time()

    def _turn(self) -> None:
        self.last_turn = anyio.current_time()

    def wedged_for(self) -> float:
        """Seconds since the loop last turned. Every await in it is bounded (a page by LIST_TIMEOUT, a
        silent watch by ``idle_timeout``, a backoff by twice its cap), so more than :attr:`step_limit` means
        the loop is stuck, whatever the API server does."""
        return anyio.current_time() - self.last_turn

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
                opened = anyio.current_time()
                events = await self._watch()
                if events == 0 and anyio.current_time() - opened < VERY_SHORT_WATCH:
                    raise TransportError("very short watch: closed within 1s without an event")
                self._log.debug("watch_ended", resource_version=self.resource_version, events=events)
            except Gone as exc:
                # The RV we hold was compacted away: only a fresh list can restore a consistent view.
                self.metrics.gone()
                delay = self._backoff.next(anyio.current_time())
                self._log.info("watch_expired", error=str(exc), relist_in_s=round(delay, 2))
                need_list, relist_reason = True, "gone"
                self.resource_version = ""
                await anyio.sleep(delay)
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
                delay = self._backoff.next(anyio.current_time())
                if isinstance(exc, TooManyRequests) and exc.retry_after:
                    delay = max(delay, exc.retry_after)
                if isinstance(exc, ApiError) and not need_list:
                    # client-go relists after unexpected watch errors; connection failures re-watch.
                    need_list, relist_reason = True, "error"
                self._log.warning(
                    "watch_failed" if not need_list or self.has_synced else "list_failed",
                    error=str(exc), retry_in_s=round(delay, 2),
                )
                await anyio.sleep(delay)

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
                self.resource_version = _rv(obj)
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
        path = self.resource.path(self.namespace)
        kind = self.resource.kind
        items: list[JsonObj] = []  # already transformed
        params = self._list_params()
        list_rv = ""
        while True:
            try:
                page = await self.client.request("GET", path, params=params, timeout=LIST_TIMEOUT)
            except Gone:
                if "continue" not in params and "resourceVersion" not in params:
                    raise
                if "continue" in params:
                    # The continue token expired mid-list: fall back to one unpaginated list (client-go
                    # FullListIfExpired).
                    items.clear()
                    params = {k: v for k, v in params.items() if k not in ("continue", "limit")}
                else:
                    # Our RV is too old for the server to serve "not older than" (client-go's
                    # isExpiredError): ask for the latest state instead.
                    params.pop("resourceVersion")
                    params.pop("resourceVersionMatch", None)
                continue
            self._turn()
            page_items = page.get("items")
            if page_items is None and "metadata" not in page:
                raise TransportError(f"LIST {path}: the response is not a list")
            # Transform page by page: holding every full object of a 30,000-Pod list until the end
            # would grow the heap to the size of the full list, and CPython keeps that memory.
            for raw in page_items or ():
                raw.setdefault("kind", kind)
                obj = self.transform(raw)
                if self.keep is None or self.keep(obj):
                    items.append(obj)
            meta = page.get("metadata") or {}
            list_rv = str(meta.get("resourceVersion") or list_rv)
            token = meta.get("continue")
            if not token:
                break
            params["continue"] = token
            # A continued page carries the first page's snapshot; resourceVersion must not be repeated.
            params.pop("resourceVersion", None)
            params.pop("resourceVersionMatch", None)
        if self.compact_lists and len(items) >= self.page_size:
            del page, page_items, raw  # the last page's full objects must be gone first (items is not empty)
            items = _compacted(items)
        self._replace(items)
        self.resource_version = list_rv
        self._silent_watches = 0
        self._alive()
        self._log.info("list_done", objects=len(items), resource_version=list_rv, reason=reason)

    def _in_scope(self, key: str) -> bool:
        return self.namespace is None or key.startswith(self.namespace + "/")

    def _replace(self, items: list[JsonObj]) -> None:
        """Syncs the store to a full list of transformed objects: adds, updates (only when the RV changed)
        and deletes."""
        seen: set[str] = set()
        for obj in items:
            key = object_key(obj)
            seen.add(key)
            old = self.store.get(key)
            if old is not None and _rv(old) == _rv(obj):
                continue
            self.store.upsert(obj)
            for h in self.handlers:
                if old is None:
                    h.on_add(obj)
                else:
                    h.on_update(old, obj)
        stale = [k for k in self.store.keys() if k not in seen and self._in_scope(k)]  # noqa: SIM118
        for key in stale:
            gone = self.store.delete(key)
            if gone is not None:
                for h in self.handlers:
                    h.on_delete(gone)
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
        rv = _rv(obj)
        if etype == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        obj.setdefault("kind", self.resource.kind)
        obj = self.transform(obj)
        key = object_key(obj)
        kept = self.keep is None or self.keep(obj)
        if etype == "DELETED" or not kept:
            # Deleted, or out of scope now (e.g. a Pod lost its last module label): gone for our handlers.
            old = self.store.delete(key)
            if old is not None or (etype == "DELETED" and kept):
                for h in self.handlers:
                    h.on_delete(old if old is not None else obj)
        else:
            old = self.store.upsert(obj)
            for h in self.handlers:
                if old is None:
                    h.on_add(obj)
                else:
                    h.on_update(old, obj)
        if rv:
            self.resource_version = rv
        self.metrics.objects(len(self.store))


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _in_loop() -> bool:
    try:
        anyio.current_time()
    except Exception:
        return False
    return True
