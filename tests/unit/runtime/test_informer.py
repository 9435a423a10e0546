"""The Informer and KubeClient against a scripted fake API server (aiohttp on 127.0.0.1, plain HTTP).

The server serves paginated LISTs from a mutable object table and answers each WATCH with the next
script in a queue (default: headers, then silence until the test ends). Tests synchronise on requests
the server received, handler calls and anyio Events set by scripts, all under ``anyio.fail_after``
deadlines; there are no bare sleeps. The informer's backoff is shrunk to 10-50 ms.
"""

from __future__ import annotations

import copy
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import orjson
import pytest
from aiohttp import web

from controller.runtime.backoff import Backoff
from controller.runtime.informer import Informer
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.config import Configuration
from controller.runtime.kube.errors import Gone, ServerError, TransportError, WatchStalled
from controller.runtime.kube.resources import PODS
from controller.runtime.listing import list_all
from controller.runtime.store import Store, object_key, replace_steps, strip_managed_fields

NS = "ns"
PATH = PODS.path(NS)
MODULE_PREFIX = "module.koupleless.alipay.com/"
DEADLINE = 10.0
MANAGED_FIELDS = [{"manager": "kubectl", "operation": "Update", "fieldsV1": {"f:metadata": {}}}]


def pod(name: str, rv: int, *, module: str | None = None, **annotations: str) -> JsonObj:
    """A Pod as a LIST returns it (items carry no kind/apiVersion) with managedFields."""
    meta: JsonObj = {"name": name, "namespace": NS, "uid": f"uid-{name}", "resourceVersion": str(rv),
                     "managedFields": copy.deepcopy(MANAGED_FIELDS)}
    if module:
        meta["labels"] = {f"{MODULE_PREFIX}{module}": "true"}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "i"}]}}


def modules_of(obj: JsonObj) -> Iterable[str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return [k[len(MODULE_PREFIX):] for k in labels if k.startswith(MODULE_PREFIX)]


def status_body(code: int, reason: str, message: str) -> JsonObj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


# ------------------------------------------------------------------------------------------- fake server
@dataclass
class Request:
    path: str
    query: dict[str, str]


Script = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WatchStream:
    """What a watch script can do with its open (chunked) response."""

    def __init__(self, request: web.Request, resp: web.StreamResponse, release: anyio.Event) -> None:
        self.request = request
        self.resp = resp
        self.release = release
        self.dropped = False
        self.chunks = 0

    async def raw(self, data: bytes) -> None:
        self.chunks += 1
        await self.resp.write(data)

    async def send(self, etype: str, obj: JsonObj) -> None:
        await self.raw(orjson.dumps({"type": etype, "object": obj}) + b"\n")

    async def bookmark(self, rv: int) -> None:
        await self.send("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}})

    async def error(self, code: int, reason: str, message: str) -> None:
        await self.send("ERROR", status_body(code, reason, message))

    async def hold(self) -> None:
        """Send nothing more until the test ends."""
        await self.release.wait()

    def drop(self) -> None:
        """Cut the TCP connection mid-stream (no terminating chunk)."""
        transport = self.request.transport
        assert transport is not None
        transport.abort()
        self.dropped = True


class FakeApiServer:
    """Scripted /api/v1/namespaces/ns/pods: LIST with limit/continue, WATCH from a script queue."""

    def __init__(self, objects: Iterable[JsonObj] = (), rv: int = 100) -> None:
        self.objects: list[JsonObj] = []
        self.rv = 0
        self.set_objects(objects, rv)
        self.lists: list[Request] = []
        self.watches: list[Request] = []
        self.scripts: deque[Script] = deque()
        self.release = anyio.Event()  # set at teardown: every held response ends
        self.list_gate: anyio.Event | None = None  # when set, LIST requests wait for it
        self.expire_continue = False  # answer the next LIST with a continue token with 410
        self.list_errors: deque[int] = deque()  # answer the next LISTs with these HTTP codes
        self._list_tx, self.list_requests = anyio.create_memory_object_stream[Request](100)
        self._watch_tx, self.watch_requests = anyio.create_memory_object_stream[Request](100)
        self.app = web.Application()
        self.app.router.add_get(PATH, self.handle)

    def set_objects(self, objects: Iterable[JsonObj], rv: int) -> None:
        self.objects = sorted((copy.deepcopy(o) for o in objects), key=lambda o: str(o["metadata"]["name"]))
        self.rv = rv

    def script(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    def stream(self, body: Callable[[WatchStream], Awaitable[None]]) -> Script:
        """A watch answered 200 with a chunked stream driven by ``body``; ends cleanly when it returns."""

        async def run(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            ws = WatchStream(request, resp, self.release)
            try:
                await body(ws)
                if not ws.dropped:
                    await resp.write_eof()
            except ConnectionError:
                pass  # the client went away first (e.g. the test ended)
            return resp

        return run

    def http_error(self, code: int, reason: str, before: Callable[[], None] | None = None) -> Script:
        async def run(request: web.Request) -> web.StreamResponse:
            if before is not None:
                before()
            return web.json_response(status_body(code, reason, f"{reason} (scripted)"), status=code)

        return run

    def silent(self) -> Script:
        """Accept the request but never send response headers (a half-open connection)."""

        async def run(request: web.Request) -> web.StreamResponse:
            await self.release.wait()
            return web.json_response(status_body(500, "InternalError", "released"), status=500)

        return run

    def close(self) -> None:
        for stream in (self._list_tx, self.list_requests, self._watch_tx, self.watch_requests):
            stream.close()

    async def next_list(self) -> Request:
        return await self.list_requests.receive()

    async def next_watch(self) -> Request:
        return await self.watch_requests.receive()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        req = Request(request.path, dict(request.query))
        if req.query.get("watch") == "true":
            self.watches.append(req)
            self._watch_tx.send_nowait(req)
            script = self.scripts.popleft() if self.scripts else self.stream(WatchStream.hold)
            return await script(request)
        self.lists.append(req)
        self._list_tx.send_nowait(req)
        if self.list_gate is not None:
            await self.list_gate.wait()
        if self.list_errors:
            code = self.list_errors.popleft()
            return web.json_response(status_body(code, "Scripted", "scripted list failure"), status=code)
        token = req.query.get("continue")
        if token is not None and self.expire_continue:
            self.expire_continue = False
            return web.json_response(status_body(410, "Expired", "continue token expired"), status=410)
        start = int(token) if token else 0
        limit = int(req.query.get("limit") or 0) or len(self.objects)
        page = self.objects[start:start + limit]
        meta: JsonObj = {"resourceVersion": str(self.rv)}
        if start + limit < len(self.objects):
            meta["continue"] = str(start + limit)
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page})


@asynccontextmanager
async def serving(fake: FakeApiServer) -> AsyncIterator[KubeClient]:
    """Runs the fake on 127.0.0.1:<free port> and yields a KubeClient pointed at it."""
    runner = web.AppRunner(fake.app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with KubeClient(Configuration(host=f"http://127.0.0.1:{port}"), timeout=5) as client:
            yield client
    finally:
        fake.release.set()
        await runner.cleanup()
        fake.close()


# ---------------------------------------------------------------------------------------------- informer
class _NoMetricsForTest:
    def list(self) -> None: ...
    def watch_start(self) -> None: ...
    def relist(self, reason: str) -> None: ...
    def gone(self) -> None: ...
    def watch_error(self, kind: str) -> None: ...
    def event(self, type: str) -> None: ...
    def objects(self, n: int) -> None: ...
    def synced(self, b: bool) -> None: ...


@dataclass
class CountingBackoff(Backoff):
    calls: int = field(default=0, init=False)
    delays: list[float] = field(default_factory=list, init=False)

    def next(self, now: float) -> float:
        self.calls += 1
        self.delays.append(super().next(now))
        return self.delays[-1]


class Recorder:
    """An EventHandler that records (op, key, resourceVersion) and lets tests wait for calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.objects: list[JsonObj] = []
        self.old: list[JsonObj] = []
        self._changed = anyio.Event()

    def _record(self, op: str, obj: JsonObj) -> None:
        self.calls.append((op, object_key(obj), str(obj["metadata"].get("resourceVersion"))))
        self.objects.append(obj)
        self._changed.set()
        self._changed = anyio.Event()

    def on_add(self, obj: JsonObj) -> None:
        self._record("add", obj)

    def on_update(self, old: JsonObj, new: JsonObj) -> None:
        self.old.append(old)
        self._record("update", new)

    def on_delete(self, obj: JsonObj) -> None:
        self._record("delete", obj)

    async def wait_calls(self, n: int) -> None:
        while len(self.calls) < n:
            await self._changed.wait()


def make_informer(
    client: KubeClient, recorder: Recorder, *, idle_timeout: float = 30.0, page_size: int = 2
) -> tuple[Informer, CountingBackoff]:
    backoff = CountingBackoff(initial=0.01, cap=0.05, jitter=0.0)
    informer = Informer(
        client, PODS, store=Store({"module": modules_of}), namespace=NS, handlers=[recorder],
        page_size=page_size, idle_timeout=idle_timeout, backoff=backoff,
    )
    return informer, backoff


def rvs(informer: Informer) -> dict[str, str]:
    return {k: str(informer.store.get(k)["metadata"]["resourceVersion"])  # type: ignore[index]
            for k in sorted(informer.store.keys())}


@asynccontextmanager
async def informing(fake: FakeApiServer, recorder: Recorder, *, idle_timeout: float = 30.0,
                    page_size: int = 2) -> AsyncIterator[tuple[Informer, CountingBackoff]]:
    """An informer against ``fake``, started (first list done), stopped when the block ends; the whole
    block is bounded by DEADLINE."""
    with anyio.fail_after(DEADLINE):
        async with serving(fake) as client, anyio.create_task_group() as tg:
            informer, backoff = make_informer(client, recorder, idle_timeout=idle_timeout, page_size=page_size)
            await tg.start(informer.run)
            yield informer, backoff
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------- tests
class TestInitialList:
    pytestmark = pytest.mark.asyncio

    async def test_paginated_list_fills_store_and_calls_on_add(self) -> None:
        fake = FakeApiServer([pod(n, 10 + i) for i, n in enumerate("abcde")], rv=100)
        rec = Recorder()
        async with informing(fake, rec, page_size=2) as (inf, _):
            # The first page from any cached state (RV=0); continued pages repeat no resourceVersion.
            assert [r.query for r in fake.lists] == [
                {"limit": "2", "resourceVersion": "0"}, {"limit": "2", "continue": "2"},
                {"limit": "2", "continue": "4"}]
            assert all(r.path == PATH for r in fake.lists)
            assert sorted(inf.store.keys()) == [f"{NS}/{n}" for n in "abcde"]
            assert rec.calls == [("add", f"{NS}/{n}", str(10 + i)) for i, n in enumerate("abcde")]
            assert inf.resource_version == "100"

    async def test_continue_expired_falls_back_to_one_full_list(self) -> None:
        fake = FakeApiServer([pod(n, 10) for n in "abc"], rv=100)
        fake.expire_continue = True
        rec = Recorder()
        async with informing(fake, rec, page_size=2) as (_inf, _):
            assert [r.query for r in fake.lists] == [
                {"limit": "2", "resourceVersion": "0"}, {"limit": "2", "continue": "2"}, {}]
            assert [c[1] for c in rec.calls] == [f"{NS}/{n}" for n in "abc"]


class TestHasSynced:
    pytestmark = pytest.mark.asyncio

    async def test_false_before_first_list_true_after(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.list_gate = anyio.Event()
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                synced = [inf.has_synced]
                tg.start_soon(inf.run)
                await fake.next_list()
                synced.append(inf.has_synced)
                assert len(inf.store) == 0
                fake.list_gate.set()
                await fake.next_watch()  # the watch starts only after the list is applied
                synced.append(inf.has_synced)
                assert synced == [False, False, True]
                assert len(inf.store) == 1
                tg.cancel_scope.cancel()

    async def test_failed_first_list_retries_with_backoff_unsynced_meanwhile(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.list_errors.extend([500, 429])
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, backoff = make_informer(client, rec)
                tg.start_soon(inf.run)
                synced = []
                for _ in range(3):
                    await fake.next_list()
                    synced.append(inf.has_synced)
                await fake.next_watch()
                synced.append(inf.has_synced)
                assert synced == [False, False, False, True]
                assert backoff.calls == 2
                assert [c[:2] for c in rec.calls] == [("add", f"{NS}/a")]
                tg.cancel_scope.cancel()

    async def test_started_reported_only_after_list(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            assert inf.has_synced
            assert inf.store.get(f"{NS}/a") is not None


class TestWatchRequest:
    pytestmark = pytest.mark.asyncio

    async def test_watch_from_list_rv_with_bookmarks_and_server_timeout(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def one_bookmark(s: WatchStream) -> None:
            await s.bookmark(101)

        fake.script(*(fake.stream(one_bookmark) for _ in range(5)))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                tg.start_soon(inf.run)
                first = await fake.next_watch()
                assert first.path == PATH
                assert set(first.query) == {"watch", "resourceVersion", "allowWatchBookmarks", "timeoutSeconds"}
                assert first.query["watch"] == "true"
                assert first.query["resourceVersion"] == "100"
                assert first.query["allowWatchBookmarks"] == "true"
                # a clean end re-watches at once (no relist), each time with a fresh random server timeout
                for _ in range(5):
                    await fake.next_watch()
                assert len(fake.lists) == 1
                timeouts = [int(w.query["timeoutSeconds"]) for w in fake.watches]
                assert all(300 <= t < 600 for t in timeouts), timeouts
                assert [w.query["resourceVersion"] for w in fake.watches] == ["100"] + ["101"] * 5
                tg.cancel_scope.cancel()


class TestWatchEvents:
    pytestmark = pytest.mark.asyncio

    async def test_added_modified_deleted_applied(self) -> None:
        fake = FakeApiServer([pod("a", 10, module="m1")], rv=100)

        async def events(s: WatchStream) -> None:
            await s.send("ADDED", {"kind": "Pod", "apiVersion": "v1", **pod("b", 101, module="m2")})
            await s.send("MODIFIED", pod("a", 102, module="m2"))
            await s.send("DELETED", pod("b", 103, module="m2"))

        fake.script(fake.stream(events))
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            await fake.next_watch()
            second = await fake.next_watch()
            assert second.query["resourceVersion"] == "103"
            # (op, key) only: on delete the informer hands over the last state it cached
            assert [c[:2] for c in rec.calls] == [
                ("add", f"{NS}/a"), ("add", f"{NS}/b"), ("update", f"{NS}/a"), ("delete", f"{NS}/b")]
            assert [c[2] for c in rec.calls[:3]] == ["10", "101", "102"]
            assert rec.old[0]["metadata"]["resourceVersion"] == "10"
            assert rvs(inf) == {f"{NS}/a": "102"}
            assert inf.resource_version == "103"
            assert [o["kind"] for o in rec.objects] == ["Pod"] * 4
            assert len(fake.lists) == 1

    async def test_delete_of_unknown_object_still_notifies(self) -> None:
        fake = FakeApiServer([], rv=100)

        async def events(s: WatchStream) -> None:
            await s.send("DELETED", pod("ghost", 101))

        fake.script(fake.stream(events))
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            await rec.wait_calls(1)
            assert rec.calls == [("delete", f"{NS}/ghost", "101")]
            assert len(inf.store) == 0

    async def test_several_events_per_chunk_and_events_split_across_chunks(self) -> None:
        fake = FakeApiServer([], rv=100)
        lines = [orjson.dumps({"type": "ADDED", "object": pod(f"p{i}", 101 + i)}) + b"\n" for i in range(6)]

        async def events(s: WatchStream) -> None:
            await s.raw(lines[0] + lines[1] + lines[2][:7])  # two and a half
            await s.raw(lines[2][7:-1])  # the rest without its newline
            await s.raw(b"\n" + lines[3] + b"\n")  # a blank line is ignored
            await s.raw(lines[4][:1])
            await s.raw(lines[4][1:] + lines[5][:-1])  # the last line ends at EOF without a newline

        fake.script(fake.stream(events))
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            await fake.next_watch()
            await fake.next_watch()
            assert [c[1] for c in rec.calls] == [f"{NS}/p{i}" for i in range(6)]
            assert inf.resource_version == "106"

    async def test_bookmark_updates_resource_version_and_calls_no_handler(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        seen: list[str] = []

        async def bookmark(s: WatchStream) -> None:
            await s.bookmark(150)

        fake.script(fake.stream(bookmark))
        rec = Recorder()
        async with informing(fake, rec) as (inf, backoff):
            await fake.next_watch()
            rewatch = await fake.next_watch()  # the stream ended after the bookmark
            seen.append(inf.resource_version)
            assert rewatch.query["resourceVersion"] == "150"
            assert seen == ["150"]
            assert rec.calls == [("add", f"{NS}/a", "10")]
            assert rvs(inf) == {f"{NS}/a": "10"}
            assert len(fake.lists) == 1
            assert backoff.calls == 0


class TestGone:
    pytestmark = pytest.mark.asyncio

    async def test_error_event_410_relists_and_delivers_vanished_as_delete(self) -> None:
        fake = FakeApiServer([pod("a", 10), pod("b", 11)], rv=100)

        async def expire(s: WatchStream) -> None:
            await s.send("MODIFIED", pod("a", 101))
            # while we are away: b is deleted, a changes again, c appears
            fake.set_objects([pod("a", 120), pod("c", 115)], rv=130)
            await s.error(410, "Expired", "too old resource version: 101 (125)")
            await s.hold()

        fake.script(fake.stream(expire))
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            await fake.next_list()
            await fake.next_watch()
            relist = await fake.next_list()
            assert relist.query == {"limit": "2"}
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "130"
            assert rec.calls == [
                ("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "11"),
                ("update", f"{NS}/a", "101"),
                ("update", f"{NS}/a", "120"), ("add", f"{NS}/c", "115"), ("delete", f"{NS}/b", "11"),
            ]
            assert rvs(inf) == {f"{NS}/a": "120", f"{NS}/c": "115"}

    async def test_relist_skips_unchanged_objects(self) -> None:
        fake = FakeApiServer([pod("a", 10), pod("b", 11)], rv=100)
        fake.script(fake.http_error(410, "Expired", before=lambda: fake.set_objects([pod("a", 10)], rv=140)))
        rec = Recorder()
        async with informing(fake, rec) as (_inf, _):
            await fake.next_watch()
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "140"
            assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "11"), ("delete", f"{NS}/b", "11")]

    async def test_watch_answered_with_http_410_relists(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.http_error(410, "Gone", before=lambda: fake.set_objects([pod("a", 10), pod("d", 150)],
                                                                                   rv=160)))
        rec = Recorder()
        async with informing(fake, rec) as (_inf, _):
            await fake.next_list()
            first = await fake.next_watch()
            assert first.query["resourceVersion"] == "100"
            await fake.next_list()
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "160"
            assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/d", "150")]


class TestWatchErrors:
    pytestmark = pytest.mark.asyncio

    @pytest.mark.parametrize(("code", "reason"), [(500, "InternalError"), (400, "BadRequest")])
    async def test_error_event_other_code_relists_after_backoff(self, code: int, reason: str) -> None:
        fake = FakeApiServer([pod("a", 10), pod("b", 11)], rv=100)

        async def fail(s: WatchStream) -> None:
            await s.send("ADDED", pod("c", 101))
            fake.set_objects([pod("a", 10), pod("c", 101)], rv=110)
            await s.error(code, reason, "scripted failure")
            await s.hold()

        fake.script(fake.stream(fail))
        rec = Recorder()
        async with informing(fake, rec) as (inf, backoff):
            await fake.next_list()
            await fake.next_watch()
            await fake.next_list()
            assert backoff.calls == 1
            assert inf.last_error is not None
            assert str(code) in inf.last_error
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "110"
            assert rec.calls == [
                ("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "11"), ("add", f"{NS}/c", "101"),
                ("delete", f"{NS}/b", "11"),
            ]

    async def test_very_short_empty_watch_backs_off_and_rewatches(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def nothing(s: WatchStream) -> None:
            return None

        fake.script(fake.stream(nothing))
        rec = Recorder()
        async with informing(fake, rec) as (_inf, backoff):
            await fake.next_watch()
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "100"
            assert backoff.calls == 1  # client-go: closed within 1 s without an event is an error
            assert len(fake.lists) == 1

    async def test_stall_rewatches_from_same_resource_version(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        stalled = anyio.Event()

        async def stall(s: WatchStream) -> None:
            await s.send("ADDED", pod("b", 101))
            stalled.set()
            await s.hold()  # headers and one event, then nothing: a silent, half-dead connection

        fake.script(fake.stream(stall))
        rec = Recorder()
        async with informing(fake, rec, idle_timeout=0.5) as (_inf, backoff):
            await fake.next_watch()
            await stalled.wait()
            started = anyio.current_time()
            rewatch = await fake.next_watch()
            assert anyio.current_time() - started >= 0.4  # the watchdog, not the server, ended it
            assert rewatch.query["resourceVersion"] == "101"
            assert len(fake.lists) == 1
            assert backoff.calls == 0
            assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "101")]

    async def test_stall_before_response_headers_rewatches(self) -> None:
        # A reused keep-alive connection that went half-open: the request is sent, nothing ever comes back.
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.silent())
        rec = Recorder()
        async with informing(fake, rec, idle_timeout=0.5) as (_inf, _):
            await fake.next_watch()
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "100"
            assert len(fake.lists) == 1

    async def test_dropped_connection_backs_off_and_rewatches(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def drop(s: WatchStream) -> None:
            await s.send("ADDED", pod("b", 101))
            await s.raw(b'{"type":"MODIFIED","object":{"metadata":')  # half a line, then the cable is cut
            s.drop()

        fake.script(fake.stream(drop))
        rec = Recorder()
        async with informing(fake, rec) as (inf, backoff):
            await fake.next_watch()
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "101"
            assert backoff.calls == 1
            assert inf.last_error is not None
            assert "WATCH" in inf.last_error
            assert len(fake.lists) == 1  # a connection failure re-watches, it does not relist
            assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "101")]


class TestLargeLines:
    pytestmark = pytest.mark.asyncio

    async def test_5_mib_line_in_many_chunks(self) -> None:
        fake = FakeApiServer([], rv=100)
        big = "x" * (5 * 1024 * 1024)
        line = orjson.dumps({"type": "ADDED", "object": pod("big", 101, huge=big)}) + b"\n"
        sent = anyio.Event()
        chunks = 0

        async def large(s: WatchStream) -> None:
            nonlocal chunks
            for i in range(0, len(line), 64 * 1024):
                await s.raw(line[i:i + 64 * 1024])
            await s.send("ADDED", pod("small", 102))
            chunks = s.chunks
            sent.set()

        fake.script(fake.stream(large))
        rec = Recorder()
        async with informing(fake, rec) as (inf, backoff):
            await rec.wait_calls(2)
            await sent.wait()
            assert chunks > 80
            obj = inf.store.get(f"{NS}/big")
            assert obj is not None
            assert obj["metadata"]["annotations"]["huge"] == big
            assert [c[1] for c in rec.calls] == [f"{NS}/big", f"{NS}/small"]
            assert backoff.calls == 0


class TestTransform:
    pytestmark = pytest.mark.asyncio

    async def test_managed_fields_stripped_from_list_and_watch(self) -> None:
        fake = FakeApiServer([pod("a", 10), pod("b", 11)], rv=100)

        async def events(s: WatchStream) -> None:
            await s.send("ADDED", pod("c", 101))
            await s.send("MODIFIED", pod("a", 102))

        fake.script(fake.stream(events))
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            await rec.wait_calls(4)
            assert len(inf.store) == 3
            for obj in [*inf.store.values(), *rec.objects]:
                assert "managedFields" not in obj["metadata"]
                assert obj["kind"] == "Pod"
                assert obj["metadata"]["uid"]  # the rest is kept

    async def test_custom_transform_applies_everywhere(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def events(s: WatchStream) -> None:
            await s.send("ADDED", pod("b", 101))

        fake.script(fake.stream(events))
        rec = Recorder()

        def slim(obj: JsonObj) -> JsonObj:
            obj = strip_managed_fields(obj)
            obj.pop("spec", None)
            return obj

        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf = Informer(client, PODS, store=Store(), namespace=NS, handlers=[rec], transform=slim)
                await tg.start(inf.run)
                await rec.wait_calls(2)
                assert all("spec" not in o for o in inf.store.values())
                tg.cancel_scope.cancel()

    async def test_compacted_list_keeps_the_same_objects_recreated(self) -> None:
        fake = FakeApiServer([pod(n, 10 + i) for i, n in enumerate("abcde")], rv=100)
        kept: list[JsonObj] = []

        def slim(obj: JsonObj) -> JsonObj:
            out = {"metadata": {k: obj["metadata"][k] for k in ("name", "namespace", "resourceVersion")}}
            kept.append(out)
            return out

        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf = Informer(client, PODS, store=Store(), namespace=NS, handlers=[Recorder()], transform=slim,
                               page_size=2, compact_lists=True)
                await tg.start(inf.run)
                stored = sorted(inf.store.values(), key=lambda o: o["metadata"]["name"])
                assert stored == kept, "the same content"
                assert all(a is not b for a, b in zip(stored, kept, strict=True)), "re-created, not the originals"
                assert all(o["metadata"]["namespace"] is sys.intern(NS) for o in stored)
                tg.cancel_scope.cancel()


class TestStore:
    def test_strip_managed_fields(self) -> None:
        obj = pod("a", 1)
        assert "managedFields" not in strip_managed_fields(obj)["metadata"]
        assert strip_managed_fields({"kind": "Pod"}) == {"kind": "Pod"}
        assert strip_managed_fields({"metadata": None}) == {"metadata": None}

    def test_replace_in_steps_pauses_every_step_and_ends_like_one_replace(self) -> None:
        store = Store()
        store.upsert({"metadata": {"name": "gone", "namespace": "ns", "resourceVersion": "1"}})
        items = [{"metadata": {"name": f"o{i}", "namespace": "ns", "resourceVersion": "1"}} for i in range(1050)]
        pauses = sum(1 for _ in replace_steps(store, items, [], lambda key: True, step=500))
        assert pauses == 2
        assert len(store) == 1050
        assert store.get("ns/gone") is None

    def test_by_index_after_add_update_delete(self) -> None:
        store = Store({"module": modules_of})
        a = strip_managed_fields(pod("a", 1, module="m1"))
        b = strip_managed_fields(pod("b", 1, module="m1"))
        assert store.upsert(a) is None
        assert store.upsert(b) is None
        assert sorted(object_key(o) for o in store.by_index("module", "m1")) == [f"{NS}/a", f"{NS}/b"]
        a2 = strip_managed_fields(pod("a", 2, module="m2"))
        assert store.upsert(a2) is a
        assert [object_key(o) for o in store.by_index("module", "m1")] == [f"{NS}/b"]
        assert store.by_index("module", "m2") == [a2]
        assert store.delete(f"{NS}/b") is b
        assert store.by_index("module", "m1") == []
        assert store.delete(f"{NS}/b") is None
        assert store.by_index("module", "unknown") == []
        assert len(store) == 1
        assert store.keys() == [f"{NS}/a"]

    def test_multi_valued_index(self) -> None:
        store = Store({"module": modules_of})
        obj = pod("a", 1, module="m1")
        obj["metadata"]["labels"][f"{MODULE_PREFIX}m2"] = "true"
        store.upsert(obj)
        assert store.by_index("module", "m1") == store.by_index("module", "m2") == [obj]
        store.delete(f"{NS}/a")
        assert store.by_index("module", "m1") == store.by_index("module", "m2") == []

    def test_object_key(self) -> None:
        assert object_key({"metadata": {"name": "n", "namespace": "x"}}) == "x/n"
        assert object_key({"metadata": {"name": "cluster-scoped"}}) == "cluster-scoped"

class TestInformerIndex:
    pytestmark = pytest.mark.asyncio

    async def test_informer_keeps_index_current(self) -> None:
        fake = FakeApiServer([pod("a", 10, module="m1"), pod("b", 11, module="m1")], rv=100)

        async def events(s: WatchStream) -> None:
            await s.send("MODIFIED", pod("a", 101, module="m2"))
            await s.send("DELETED", pod("b", 102, module="m1"))
            await s.send("ADDED", pod("c", 103, module="m2"))

        fake.script(fake.stream(events))
        rec = Recorder()
        async with informing(fake, rec) as (inf, _):
            assert sorted(object_key(o) for o in inf.store.by_index("module", "m1")) == [f"{NS}/a", f"{NS}/b"]
            await rec.wait_calls(5)
            assert inf.store.by_index("module", "m1") == []
            assert sorted(object_key(o) for o in inf.store.by_index("module", "m2")) == [f"{NS}/a", f"{NS}/c"]


class TestKubeClientWatch:
    """The raw watch reader on its own: typed errors for each way a stream can end."""
    pytestmark = pytest.mark.asyncio


    async def _watch(self, fake: FakeApiServer, idle_timeout: float = 5.0) -> list[JsonObj]:
        got: list[JsonObj] = []
        async with serving(fake) as client:
            await client.watch(PATH, params={"resourceVersion": "1"}, on_event=got.append, idle_timeout=idle_timeout)
        return got

    async def test_clean_end_returns(self) -> None:
        fake = FakeApiServer()

        async def events(s: WatchStream) -> None:
            await s.bookmark(5)

        fake.script(fake.stream(events))
        with anyio.fail_after(DEADLINE):
            got = await self._watch(fake)
        assert [e["type"] for e in got] == ["BOOKMARK"]

    @pytest.mark.parametrize(
        ("code", "reason", "exc"),
        [(410, "Expired", Gone), (500, "InternalError", ServerError)],
    )
    async def test_error_event_raises_typed_error(self, code: int, reason: str, exc: type[Exception]) -> None:
        fake = FakeApiServer()

        async def events(s: WatchStream) -> None:
            await s.error(code, reason, "boom")

        fake.script(fake.stream(events))
        with anyio.fail_after(DEADLINE), pytest.raises(exc, match="boom"):
            await self._watch(fake)

    async def test_stall_raises_watch_stalled(self) -> None:
        fake = FakeApiServer()
        with anyio.fail_after(DEADLINE), pytest.raises(WatchStalled):
            await self._watch(fake, idle_timeout=0.3)

    async def test_drop_raises_transport_error(self) -> None:
        fake = FakeApiServer()

        async def events(s: WatchStream) -> None:
            await s.raw(b'{"type":')
            s.drop()

        fake.script(fake.stream(events))
        with anyio.fail_after(DEADLINE), pytest.raises(TransportError):
            await self._watch(fake)

    async def test_request_hook_counts_watches_by_code(self) -> None:
        fake = FakeApiServer()

        async def events(s: WatchStream) -> None:
            await s.bookmark(5)

        fake.script(fake.stream(events), fake.http_error(410, "Expired"), fake.silent())
        seen: list[tuple[str, str]] = []
        params = {"resourceVersion": "1"}
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client:
                client.on_request = lambda verb, code, seconds: seen.append((verb, code))
                await client.watch(PATH, params=params, on_event=lambda e: None, idle_timeout=5)
                with pytest.raises(Gone):
                    await client.watch(PATH, params=params, on_event=lambda e: None, idle_timeout=5)
                with pytest.raises(WatchStalled):  # no response headers at all
                    await client.watch(PATH, params=params, on_event=lambda e: None, idle_timeout=0.3)
        assert seen == [("WATCH", "200"), ("WATCH", "410"), ("WATCH", "<error>")]


class TestGarbledResponses:
    """A 2xx answer that is not a JSON object must fail loudly: read as ``{}``, a LIST would look like
    "every object was deleted" and the controller would delete every Service it manages."""
    pytestmark = pytest.mark.asyncio

    @pytest.mark.parametrize("body", [b"<html>proxy error</html>", b"[1, 2]", b'{"kind": "Status"'])
    async def test_request_with_garbled_2xx_body_raises(self, body: bytes) -> None:
        app = web.Application()

        async def garbled(request: web.Request) -> web.Response:
            return web.Response(body=body, status=200, content_type="application/json")

        app.router.add_get(PATH, garbled)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with KubeClient(Configuration(host=f"http://127.0.0.1:{port}"), timeout=5) as client:
                with anyio.fail_after(DEADLINE), pytest.raises(TransportError, match="not a JSON object"):
                    await client.request("GET", PATH)
        finally:
            await runner.cleanup()

    async def test_list_without_items_is_not_an_empty_list(self) -> None:
        # Taken for an empty list, it would delete every object of the store on a relist.
        async with serving(FakeApiServer()) as client:
            async def not_a_list(*args: object, **kwargs: object) -> JsonObj:
                return {}

            client.request = not_a_list  # type: ignore[method-assign]
            with anyio.fail_after(DEADLINE), pytest.raises(TransportError, match="not a list"):
                await list_all(client, PATH, {}, kind="Pod", transform=strip_managed_fields, keep=None,
                               on_page=lambda: None)


class TestScope:
    """the scope check that prunes vanished objects on a relist must agree with the
    path the informer lists, for every namespace value, or a relist after a 410 never deletes anything."""

    pytestmark = pytest.mark.asyncio

    @pytest.mark.parametrize("namespace", ["", None])
    async def test_cluster_wide_relist_prunes_vanished_objects(self, namespace: str | None) -> None:
        fake = FakeApiServer([pod("a", 10), pod("b", 11)], rv=100)
        fake.app.router.add_get(PODS.path(), fake.handle)  # the cluster-wide path serves the same table
        fake.script(fake.http_error(410, "Expired", before=lambda: fake.set_objects([pod("a", 10)], rv=140)))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf = Informer(client, PODS, store=Store(), namespace=namespace, handlers=[rec], page_size=2,
                               backoff=CountingBackoff(initial=0.01, cap=0.05))
                await tg.start(inf.run)
                first = await fake.next_list()
                assert first.path == PODS.path()
                await fake.next_watch()
                await fake.next_list()
                await fake.next_watch()
                assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "11"), ("delete", f"{NS}/b", "11")]
                assert sorted(inf.store.keys()) == [f"{NS}/a"]
                tg.cancel_scope.cancel()


class TestRelistPolicy:
    """silence relists, a 410 backs off, the loop's heartbeat does
    not depend on the API server, and LISTs use client-go's resourceVersion semantics."""

    pytestmark = pytest.mark.asyncio

    async def test_two_silent_watches_relist_not_older_than_the_last_rv(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.silent(), fake.silent())
        rec = Recorder()
        relists: list[str] = []

        class Metrics(_NoMetricsForTest):
            def relist(self, reason: str) -> None:
                relists.append(reason)

        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, backoff = make_informer(client, rec, idle_timeout=0.3)
                inf.metrics = Metrics()
                await tg.start(inf.run)
                first_list_at = inf.last_activity
                await fake.next_list()
                await fake.next_watch()
                await fake.next_watch()
                relist = await fake.next_list()
                assert relist.query == {"limit": "2", "resourceVersion": "100",
                                        "resourceVersionMatch": "NotOlderThan"}
                await fake.next_watch()
                assert relists == ["stall"]
                assert backoff.calls == 0
                assert inf.last_activity > first_list_at  # the successful relist is progress
                tg.cancel_scope.cancel()

    async def test_one_silent_watch_does_not_relist(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def one_event_then_silence(s: WatchStream) -> None:
            await s.send("ADDED", pod("b", 101))
            await s.hold()

        fake.script(fake.silent(), fake.stream(one_event_then_silence), fake.silent())
        rec = Recorder()
        async with informing(fake, rec, idle_timeout=1.0) as (_inf, _):
            await fake.next_list()
            for _ in range(3):  # silent (1), an event resets the count, silent (1): a 3rd watch, no list
                await fake.next_watch()
            assert len(fake.lists) == 1
            relist = await fake.next_list()  # the 3rd watch is silent too: two in a row
            assert relist.query["resourceVersionMatch"] == "NotOlderThan"

    async def test_410_relists_after_a_backoff(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.http_error(410, "Expired"), fake.http_error(410, "Expired"))
        rec = Recorder()
        async with informing(fake, rec) as (_inf, backoff):
            await fake.next_list()
            await fake.next_watch()
            relist = await fake.next_list()
            assert relist.query == {"limit": "2"}  # our RV is gone: the latest state
            await fake.next_watch()
            await fake.next_list()
            assert backoff.calls == 2
            assert backoff.delays == pytest.approx([0.01, 0.02])  # doubled: consecutive 410s slow down

    async def test_relist_with_an_expired_rv_falls_back_to_the_latest_state(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.http_error(500, "InternalError"))
        rec = Recorder()
        async with informing(fake, rec) as (_inf, _):
            await fake.next_list()
            fake.list_errors.append(410)
            await fake.next_watch()
            relist = await fake.next_list()
            assert relist.query["resourceVersionMatch"] == "NotOlderThan"
            latest = await fake.next_list()
            assert latest.query == {"limit": "2"}
            await fake.next_watch()

    async def test_a_throttled_watch_is_watched_again_not_relisted(self) -> None:
        # client-go's reflector waits and re-watches from the same resourceVersion on a 429: a relist
        # would add load to an API server that is already asking for less.
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.http_error(429, "TooManyRequests"))
        rec = Recorder()
        async with informing(fake, rec) as (inf, backoff):
            await fake.next_watch()  # throttled
            rewatch = await fake.next_watch()
            assert rewatch.query["resourceVersion"] == "100"
            assert len(fake.lists) == 1, "a 429 on the watch relisted"
            assert backoff.calls == 1
            assert inf.has_synced

    async def test_the_loop_turns_while_the_api_server_is_down(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.http_error(500, "InternalError"))
        rec = Recorder()
        async with informing(fake, rec) as (inf, backoff):
            await fake.next_list()
            fake.list_errors.extend([503] * 5)
            await fake.next_watch()
            for _ in range(6):
                await fake.next_list()
            # Every failed attempt is a turn of the loop: not wedged, although nothing succeeds.
            assert inf.wedged_for() < 1.0
            assert backoff.calls >= 5


class TestKeep:
    """only kept objects are stored, and moving into or
    out of scope reaches the handlers as an add or a delete, on the watch and across a relist."""

    pytestmark = pytest.mark.asyncio

    async def test_only_kept_objects_are_stored_and_scope_changes_notify(self) -> None:
        fake = FakeApiServer([pod("a", 10, module="m"), pod("b", 11), pod("x", 12)], rv=100)
        done = anyio.Event()

        async def script(s: WatchStream) -> None:
            await s.send("MODIFIED", pod("b", 101, module="m"))  # gains a module label: an add
            await s.send("MODIFIED", pod("a", 102))  # loses its last one: a delete
            await s.send("ADDED", pod("c", 103))  # never in scope: nothing
            await s.send("MODIFIED", pod("x", 104))  # still out of scope: nothing
            await s.send("DELETED", pod("c", 105))  # deleted while out of scope: nothing
            await s.send("MODIFIED", pod("b", 106, module="m", note="1"))  # in scope: an update
            done.set()
            await s.hold()

        fake.script(fake.stream(script))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                inf.keep = lambda o: bool(list(modules_of(o)))
                await tg.start(inf.run)
                assert sorted(inf.store.keys()) == [f"{NS}/a"]
                await done.wait()
                await rec.wait_calls(4)
                assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "101"),
                                     ("delete", f"{NS}/a", "10"), ("update", f"{NS}/b", "106")]
                assert sorted(inf.store.keys()) == [f"{NS}/b"]
                tg.cancel_scope.cancel()

    async def test_relist_deletes_what_left_scope_during_the_gap(self) -> None:
        fake = FakeApiServer([pod("a", 10, module="m"), pod("b", 11)], rv=100)
        fake.script(fake.http_error(410, "Expired", before=lambda: fake.set_objects(
            [pod("a", 120), pod("b", 121, module="m")], rv=130)))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                inf.keep = lambda o: bool(list(modules_of(o)))
                await tg.start(inf.run)
                await fake.next_list()
                await fake.next_watch()
                await fake.next_list()
                await fake.next_watch()
                assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "121"), ("delete", f"{NS}/a", "10")]
                assert sorted(inf.store.keys()) == [f"{NS}/b"]
                tg.cancel_scope.cancel()


class TestStreamingList:
    """a streaming list (WATCH with sendInitialEvents) replaces the LIST where the
    server supports it; a server that rejects or ignores it gets a LIST."""

    pytestmark = pytest.mark.asyncio

    @staticmethod
    def end_marker(rv: int) -> JsonObj:
        return {"kind": "Pod", "apiVersion": "v1",
                "metadata": {"resourceVersion": str(rv), "annotations": {"k8s.io/initial-events-end": "true"}}}

    async def test_initial_events_then_the_same_stream_is_the_watch(self) -> None:
        fake = FakeApiServer([], rv=100)
        delivered = anyio.Event()

        async def stream(s: WatchStream) -> None:
            await s.send("ADDED", pod("a", 10, module="m"))
            await s.send("ADDED", pod("b", 11))
            await s.send("BOOKMARK", self.end_marker(100))
            await s.send("MODIFIED", pod("a", 101, module="m"))
            delivered.set()
            await s.hold()

        fake.script(fake.stream(stream))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                inf.stream_lists = True
                await tg.start(inf.run)
                assert inf.has_synced
                assert sorted(inf.store.keys()) == [f"{NS}/a", f"{NS}/b"]
                await delivered.wait()
                await rec.wait_calls(3)
                assert fake.lists == []  # no LIST at all
                assert len(fake.watches) == 1
                q = fake.watches[0].query
                assert q["sendInitialEvents"] == "true"
                assert q["resourceVersionMatch"] == "NotOlderThan"
                assert q["resourceVersion"] == ""
                assert q["allowWatchBookmarks"] == "true"
                assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "11"), ("update", f"{NS}/a", "101")]
                assert inf.resource_version == "101"
                tg.cancel_scope.cancel()

    async def test_rejected_parameters_fall_back_to_list(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)
        fake.script(fake.http_error(422, "Invalid"))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                inf.stream_lists = True
                await tg.start(inf.run)
                assert [r.query.get("sendInitialEvents") for r in fake.watches] == ["true"]
                assert len(fake.lists) == 1
                watch = await fake.next_watch()
                watch = await fake.next_watch()  # the plain watch after the LIST
                assert "sendInitialEvents" not in watch.query
                assert inf.stream_lists is False
                tg.cancel_scope.cancel()

    async def test_ignored_parameters_fall_back_to_list(self) -> None:
        # An older server treats it as a plain watch: a bookmark without the annotation comes first.
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def plain(s: WatchStream) -> None:
            await s.bookmark(150)
            await s.hold()

        fake.script(fake.stream(plain))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                inf.stream_lists = True
                await tg.start(inf.run)
                assert len(fake.lists) == 1
                assert rec.calls == [("add", f"{NS}/a", "10")]
                assert inf.stream_lists is False
                tg.cancel_scope.cancel()

    async def test_relist_after_410_streams_again_and_prunes(self) -> None:
        fake = FakeApiServer([], rv=100)

        async def first(s: WatchStream) -> None:
            await s.send("ADDED", pod("a", 10))
            await s.send("ADDED", pod("b", 11))
            await s.send("BOOKMARK", self.end_marker(100))
            await s.error(410, "Expired", "too old")

        async def second(s: WatchStream) -> None:
            await s.send("ADDED", pod("a", 10))
            await s.send("BOOKMARK", self.end_marker(200))
            await s.hold()

        fake.script(fake.stream(first), fake.stream(second))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec)
                inf.stream_lists = True
                await tg.start(inf.run)
                await fake.next_watch()
                again = await fake.next_watch()
                assert again.query["sendInitialEvents"] == "true"
                assert again.query["resourceVersion"] == ""  # after a 410: the latest state
                await rec.wait_calls(3)
                assert rec.calls == [("add", f"{NS}/a", "10"), ("add", f"{NS}/b", "11"), ("delete", f"{NS}/b", "11")]
                assert fake.lists == []
                tg.cancel_scope.cancel()


class TestStreamingListFallbackOnSilence:
    pytestmark = pytest.mark.asyncio

    async def test_no_end_marker_lists_once_and_twice_in_a_row_for_good(self) -> None:
        fake = FakeApiServer([pod("a", 10)], rv=100)

        async def objects_then_silence(s: WatchStream) -> None:
            await s.send("ADDED", pod("a", 10))
            await s.hold()

        # Silent: LIST this once (still streaming afterwards). Then a 410; silent again: off for good.
        fake.script(fake.stream(objects_then_silence), fake.http_error(410, "Expired"),
                    fake.stream(objects_then_silence))
        rec = Recorder()
        with anyio.fail_after(DEADLINE):
            async with serving(fake) as client, anyio.create_task_group() as tg:
                inf, _ = make_informer(client, rec, idle_timeout=0.5)
                inf.stream_lists = True
                await tg.start(inf.run)
                assert len(fake.lists) == 1
                streaming = [inf.stream_lists]
                assert rec.calls == [("add", f"{NS}/a", "10")]
                for _ in range(4):  # streaming, the 410 watch, streaming again (silent), the plain watch
                    await fake.next_watch()
                assert [w.query.get("sendInitialEvents") for w in fake.watches] == ["true", None, "true", None]
                assert len(fake.lists) == 2
                streaming.append(inf.stream_lists)
                assert streaming == [True, False]
                tg.cancel_scope.cancel()
