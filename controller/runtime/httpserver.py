"""A small HTTP/1.1 server on asyncio streams for the probes and ``/metrics``: GET and HEAD, keep-alive,
TLS when given a context. Nothing else is needed by kubelet's probes and Prometheus' scrapes, and it spares
the process aiohttp (about 11 MiB of RSS and 90 ms of start-up, for a server that answers a few requests a
minute)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

import anyio
from anyio.abc import TaskStatus

__all__ = ["Request", "Response", "serve"]

_KEEP_ALIVE = 75.0  # an idle connection is closed after this long (aiohttp's and Go's default)
_MAX_BODY = 64 * 1024  # a GET has no body to speak of; anything larger is refused


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


async def serve(handler: Handler, host: str | None, port: int, *, ssl_context: ssl.SSLContext | None,
                shutdown_timeout: float, on_bound: Callable[[int], None],
                task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Serves until cancelled; ``on_bound(port)`` and ``task_status.started()`` once the socket listens (a
    busy port raises OSError before that). Connections still open at the end are dropped."""
    writers: set[asyncio.StreamWriter] = set()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await _serve_connection(handler, reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writers.discard(writer)
            writer.transport.abort()

    server = await asyncio.start_server(connection, host, port, ssl=ssl_context)
    try:
        on_bound(int(server.sockets[0].getsockname()[1]))
        task_status.started()
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            server.close()
            for writer in list(writers):
                writer.transport.abort()
            with anyio.move_on_after(shutdown_timeout):
                await server.wait_closed()


async def _serve_connection(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = b""
        with anyio.move_on_after(_KEEP_ALIVE):  # an idle connection, or a head that never ends
            head = await reader.readuntil(b"\r\n\r\n")
        if not head:
            return
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _write(writer, Response(400, b"400 Bad Request\n"), "GET", keep=False)
            return
        method, target, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "0")
        if "transfer-encoding" in headers or not length.isdigit() or int(length) > _MAX_BODY:
            await _write(writer, Response(413, b"413 Request Entity Too Large\n"), method, keep=False)
            return
        if int(length):
            await reader.readexactly(int(length))
        connection = headers.get("connection", "").lower()
        keep = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        url = urlsplit(target)
        request = Request(method.upper(), unquote(url.path), parse_qs(url.query, keep_blank_values=True), headers)
        if request.method not in ("GET", "HEAD"):
            response = Response(405, b"405: Method Not Allowed\n", {"Allow": "GET, HEAD"})
        else:
            response = await handler(request)
        await _write(writer, response, request.method, keep=keep)
        if not keep:
            return


async def _write(writer: asyncio.StreamWriter, response: Response, method: str, *, keep: bool) -> None:
    reason = HTTPStatus(response.status).phrase if response.status in HTTPStatus._value2member_map_ else ""
    head = [f"HTTP/1.1 {response.status} {reason}", f"Content-Length: {len(response.body)}",
            f"Connection: {'keep-alive' if keep else 'close'}"]
    head += [f"{k}: {v}" for k, v in response.headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (b"" if method == "HEAD" else response.body))
    await writer.drain()
