"""HTTP/1.1 to the API server on asyncio protocols: a pool of keep-alive connections, nothing else.

Why not aiohttp's client, which this replaced: every request through it cost about 160 us of CPU (a GET of
a small object, 16 in flight, on the local API server), this about 80; a controller makes three requests per
ModuleDeployment in a burst and reads every watch event through it. What the API server needs is small:
a request line, a few headers, a body with a length; answers with a length or chunked, gzip for large
ones, and keep-alive. Anything else (a proxy, HTTP/2, cookies, redirects) is not used.

Every failure is an ``OSError`` (``ConnectionError`` for a connection that dropped or a malformed answer),
a ``TimeoutError`` from the caller's deadline, or cancellation; a connection that failed, timed out or was
cancelled mid-response is aborted and never reused.
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import anyio

__all__ = ["Connection", "Dechunker", "Pool", "Response"]

_HIGH_WATER = 4 * 2**20  # a watch's undelivered bytes past which the socket is paused
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class Connection(asyncio.Protocol):
    """One connection; bytes are gathered here and parsed by the task that owns the request."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self.streaming = False

    # -- protocol (event loop callbacks) --------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.streaming and len(self.buf) > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if self.error is None:  # a deadline that dropped the connection stays the reason
            self.error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def time_out(self) -> None:
        """The request's deadline passed: the connection is dropped, and its reader raises TimeoutError."""
        if not self.eof:
            self.eof = True
            self.error = TimeoutError("no complete answer before the deadline")
            _abort(self)
            self._wake()

    # -- reading (the owning task) --------------------------------------------------------------------
    @property
    def reusable(self) -> bool:
        return not self.eof and self.transport is not None and not self.transport.is_closing()

    async def more(self) -> None:
        """Waits for more bytes; raises ConnectionError once the connection is gone."""
        if self._paused and len(self.buf) < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self.eof:
            if isinstance(self.error, TimeoutError):
                raise self.error
            raise ConnectionError(f"connection closed{f': {self.error}' if self.error else ''}")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_head(self) -> tuple[int, dict[str, str]]:
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD:
                    raise ConnectionError("response head too large")
                await self.more()
                continue
            lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
            del self.buf[:end + 4]
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ConnectionError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200:
                continue  # an interim answer: the real one follows
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
                headers["connection"] = "close"
            return status, headers

    async def read_exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self.more()
        body = bytes(self.buf[:n])
        del self.buf[:n]
        return body

    async def read_to_eof(self) -> bytes:
        while not self.eof:
            await self.more_or_eof()
        body = bytes(self.buf)
        self.buf.clear()
        return body

    async def more_or_eof(self) -> None:
        try:
            await self.more()
        except ConnectionError:
            if self.error is not None:
                raise


class Dechunker:
    """Decodes a chunked body out of a connection's buffer, a piece at a time."""

    def __init__(self) -> None:
        self.left = 0  # bytes of the current chunk still to come
        self.crlf = False  # the CRLF after a chunk's data is due
        self.done = False

    def take(self, buf: bytearray, out: bytearray) -> None:
        """Moves whatever complete body bytes ``buf`` holds into ``out``."""
        pos = 0
        n = len(buf)
        while not self.done:
            if self.left:
                take = min(self.left, n - pos)
                if not take:
                    break
                out += buf[pos:pos + take]
                pos += take
                self.left -= take
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if n - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ConnectionError("malformed chunked body")
                pos += 2
                self.crlf = False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if n - pos > 1024:
                    raise ConnectionError("malformed chunk size")
                break
            try:
                size = int(bytes(buf[pos:end]).split(b";", 1)[0], 16)
            except ValueError:
                raise ConnectionError("malformed chunk size") from None
            if size == 0:
                # The last chunk: trailers (none in practice), then an empty line.
                last = buf.find(b"\r\n\r\n", end)
                if last >= 0:
                    pos = last + 4
                    self.done = True
                break
            pos = end + 2
            self.left = size
        if pos:
            del buf[:pos]


class Pool:
    """Keep-alive connections to one API server; ``limit`` connections at most (0: no limit)."""

    def __init__(self, base_url: str, ssl_context: ssl.SSLContext | None, *, limit: int,
                 connect_timeout: float) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "localhost"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self.host_header = url.netloc
        self.ssl = ssl_context
        self.connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        # A plain counter and a queue of waiters, not a semaphore: taking a free slot must not cost a pass
        # of the event loop.
        self._limit = limit
        self._busy = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def target(self, path: str, query: Mapping[str, str] | None) -> str:
        return f"{self.prefix}{path}?{urlencode(query)}" if query else f"{self.prefix}{path}"

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        with anyio.fail_after(self.connect_timeout):
            _, conn = await loop.create_connection(
                Connection, self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None)
        return conn

    def _checkout(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and not conn.buf:
                return conn
            _abort(conn)
        return None

    async def _acquire(self, timeout: float) -> None:
        if not self._limit:
            return
        while self._busy >= self._limit:
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                with anyio.fail_after(timeout):
                    await waiter
            except BaseException:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._release_wake()  # pass the wake-up we took on
                raise
        self._busy += 1

    def _release(self) -> None:
        if self._limit:
            self._busy -= 1
            self._release_wake()

    def _release_wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def request(self, method: str, target: str, headers: bytes, body: bytes | None, *,
                      timeout: float) -> Response:
        """One request, answered within ``timeout`` seconds (the wait for a free connection included) or
        TimeoutError; ``headers`` are complete header lines (CRLF-terminated) without Content-Length."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._acquire(timeout)
        conn: Connection | None = None
        timer: asyncio.TimerHandle | None = None
        try:
            conn = self._checkout()
            if conn is None:
                with anyio.fail_after(max(0.0, deadline - loop.time())):
                    conn = await self._connect()
            timer = loop.call_at(deadline, conn.time_out)
            data = body or b""
            head = f"{method} {target} HTTP/1.1\r\n".encode() + headers
            if body is not None or method in ("POST", "PUT", "PATCH"):
                head += b"Content-Length: %d\r\n" % len(data)
            assert conn.transport is not None
            conn.transport.write(head + b"\r\n" + data)
            status, resp_headers = await conn.read_head()
            raw = await _read_body(conn, method, status, resp_headers)
            if resp_headers.get("content-encoding", "").lower() == "gzip":
                raw = zlib.decompress(raw, wbits=31)
            if resp_headers.get("connection", "").lower() == "close" or self._closed:
                _abort(conn)
            else:
                self._idle.append(conn)
            conn = None
            return Response(status, resp_headers, raw)
        finally:
            if timer is not None:
                timer.cancel()
            if conn is not None:
                _abort(conn)  # failed, timed out or cancelled mid-request: never reused
            self._release()

    async def open_stream(self, target: str, headers: bytes) -> tuple[Connection, int, dict[str, str]]:
        """A GET whose body is read by the caller (a watch); the connection is the caller's to close."""
        conn = await self._connect()
        try:
            assert conn.transport is not None
            conn.transport.write(f"GET {target} HTTP/1.1\r\n".encode() + headers + b"\r\n")
            status, resp_headers = await conn.read_head()
        except BaseException:
            _abort(conn)
            raise
        conn.streaming = True
        return conn, status, resp_headers

    def close(self) -> None:
        """Drops the idle connections at once. A graceful TLS close would need the event loop for a while
        longer, and one that ends first (asyncio.run returning, every test) leaks the socket."""
        self._closed = True
        for conn in self._idle:
            _abort(conn)
        self._idle.clear()


async def _read_body(conn: Connection, method: str, status: int, headers: dict[str, str]) -> bytes:
    if method == "HEAD" or status in (204, 304):
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        dechunk = Dechunker()
        while True:
            dechunk.take(conn.buf, out)
            if dechunk.done:
                return bytes(out)
            await conn.more()
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ConnectionError(f"bad Content-Length {length[:20]!r}")
        return await conn.read_exactly(int(length))
    headers["connection"] = "close"  # the body ends with the connection
    return await conn.read_to_eof()


def _abort(conn: Connection) -> None:
    if conn.transport is not None:
        conn.transport.abort()

