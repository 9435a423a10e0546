"""Our HTTP/1.1 transport against a real HTTP server (aiohttp on 127.0.0.1): bodies with a length, chunked
or gzip-compressed, connections reused or not, the deadline, and the chunked decoder on every split."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import orjson
import pytest
from aiohttp import web

from controller.runtime.kube.client import KubeClient
from controller.runtime.kube.config import Configuration
from controller.runtime.kube.errors import TransportError
from controller.runtime.kube.transport import Dechunker

pytestmark = pytest.mark.asyncio
BIG = {"items": [{"name": f"object-{i}", "data": "x" * 100} for i in range(3000)]}


class Server:
    def __init__(self) -> None:
        self.peers: set[object] = set()
        self.app = web.Application()
        self.app.router.add_get("/small", self._small)
        self.app.router.add_get("/big-gzip", self._big_gzip)
        self.app.router.add_get("/chunked", self._chunked)
        self.app.router.add_get("/close", self._close)
        self.app.router.add_get("/never", self._never)
        self.app.router.add_post("/echo", self._echo)

    def _seen(self, request: web.Request) -> None:
        self.peers.add(request.transport.get_extra_info("peername") if request.transport else None)

    async def _small(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        return web.json_response({"ok": True})

    async def _big_gzip(self, request: web.Request) -> web.StreamResponse:
        assert "gzip" in request.headers.get("Accept-Encoding", "")
        return web.Response(body=gzip.compress(orjson.dumps(BIG)), headers={
            "Content-Type": "application/json", "Content-Encoding": "gzip"})

    async def _chunked(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        raw = orjson.dumps(BIG)
        for i in range(0, len(raw), 7777):
            await resp.write(raw[i:i + 7777])
        await resp.write_eof()
        return resp

    async def _close(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        return web.json_response({"closed": True}, headers={"Connection": "close"})

    async def _never(self, request: web.Request) -> web.StreamResponse:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return web.json_response({"got": body, "type": request.headers.get("Content-Type")})


@asynccontextmanager
async def serving(server: Server) -> AsyncIterator[KubeClient]:
    runner = web.AppRunner(server.app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with KubeClient(Configuration(host=f"http://127.0.0.1:{port}"), timeout=5) as client:
            yield client
    finally:
        await runner.cleanup()


async def test_bodies_by_length_chunked_and_gzip() -> None:
    server = Server()
    with anyio.fail_after(20):
        async with serving(server) as client:
            assert await client.request("GET", "/small") == {"ok": True}
            assert await client.request("GET", "/chunked") == BIG
            assert await client.request("GET", "/big-gzip") == BIG
            answer = await client.request("POST", "/echo", body={"a": [1, 2]},
                                          content_type="application/merge-patch+json")
            assert answer == {"got": {"a": [1, 2]}, "type": "application/merge-patch+json"}


async def test_keep_alive_reuses_one_connection_and_close_is_honoured() -> None:
    server = Server()
    with anyio.fail_after(20):
        async with serving(server) as client:
            for _ in range(5):
                await client.request("GET", "/small")
            assert len(server.peers) == 1, "sequential requests share a kept-alive connection"
            await client.request("GET", "/close")
            await client.request("GET", "/small")
            assert len(server.peers) == 2, "an answer with Connection: close ends its connection"


async def test_the_deadline_ends_a_request_that_gets_no_answer() -> None:
    server = Server()
    with anyio.fail_after(20):
        async with serving(server) as client:
            started = anyio.current_time()
            with pytest.raises(TransportError, match="TimeoutError"):
                await client.request("GET", "/never", timeout=0.3)
            assert anyio.current_time() - started < 3
            assert await client.request("GET", "/small") == {"ok": True}  # the pool is still usable


@pytest.mark.parametrize("step", [1, 2, 3, 5, 64, 10_000])
async def test_dechunker_on_every_split(step: int) -> None:
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (b"hello ", b"chunked", b" world" * 50))
    wire = body + b"0\r\nX-Trailer: 1\r\n\r\nNEXT"
    buf, out, dechunk = bytearray(), bytearray(), Dechunker()
    for i in range(0, len(wire), step):
        buf += wire[i:i + step]
        dechunk.take(buf, out)
        if dechunk.done:
            buf += wire[i + step:]
            break
    assert dechunk.done
    assert bytes(out) == b"hello chunked" + b" world" * 50
    assert bytes(buf) == b"NEXT", "the next answer's bytes stay in the buffer"


async def test_dechunker_rejects_garbage() -> None:
    with pytest.raises(ConnectionError):
        Dechunker().take(bytearray(b"zz\r\n"), bytearray())
