"""watches must never starve the requests, and the Lease has a lane of its own.

A fake API server on 127.0.0.1 answers watches with headers and then silence (a quiet namespace), and
``/slow`` never answers (a request stuck on a dead connection). With a pool of 2 connections, three
watches and two stuck requests must leave a GET, and a Lease GET, free to complete at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from aiohttp import web

from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.config import Configuration
from controller.runtime.kube.errors import TransportError

pytestmark = pytest.mark.asyncio
DEADLINE = 10.0


class Server:
    def __init__(self) -> None:
        self.release = anyio.Event()
        self.watches_open = 0
        self.app = web.Application()
        self.app.router.add_get("/watch", self._watch)
        self.app.router.add_get("/slow", self._slow)
        self.app.router.add_get("/fast", self._fast)

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.watches_open += 1
        await self.release.wait()
        return resp

    async def _slow(self, request: web.Request) -> web.StreamResponse:
        await self.release.wait()
        return web.json_response({})

    async def _fast(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})


@asynccontextmanager
async def serving(server: Server, max_connections: int) -> AsyncIterator[KubeClient]:
    runner = web.AppRunner(server.app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with KubeClient(Configuration(host=f"http://127.0.0.1:{port}"), timeout=5,
                              max_connections=max_connections) as client:
            yield client
    finally:
        server.release.set()
        await runner.cleanup()


def _ignore(event: JsonObj) -> None:
    pass


async def _watch(client: KubeClient) -> None:
    with contextlib.suppress(TransportError):  # torn down at the end of the test
        await client.watch("/watch", params={}, on_event=_ignore, idle_timeout=60)


async def test_watches_do_not_take_connections_from_requests() -> None:
    server = Server()
    with anyio.fail_after(DEADLINE):
        async with serving(server, max_connections=2) as client, anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(_watch, client)
            while server.watches_open < 3:  # every watch has its own connection, beyond the pool's 2
                await anyio.sleep(0.01)
            with anyio.fail_after(3):
                assert await client.request("GET", "/fast") == {"ok": True}
            tg.cancel_scope.cancel()


async def test_the_lease_lane_is_free_while_requests_are_stuck() -> None:
    server = Server()
    with anyio.fail_after(DEADLINE):
        async with serving(server, max_connections=2) as client, anyio.create_task_group() as tg:
            lease = client.dedicated(max_connections=2)
            for _ in range(2):
                tg.start_soon(lambda: client.request("GET", "/slow"))
            await anyio.sleep(0)  # let them take the pool (the assertion below holds either way)
            with anyio.fail_after(3):
                assert await lease.request("GET", "/fast") == {"ok": True}
            calls: list[tuple[str, str]] = []
            client.on_request = lambda verb, code, secs: calls.append((verb, code))
            await lease.request("GET", "/fast")
            assert calls == [("GET", "200")]  # the lane reports to the parent's request metrics
            tg.cancel_scope.cancel()
