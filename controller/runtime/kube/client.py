"""The only code that speaks to the API server.

Credentials come from ``config.py`` (kubeconfig or in-cluster loading, token refresh); requests go over our
own HTTP/1.1 transport (``transport.py``): plain dicts in and out (orjson), a timeout on every request,
typed errors, and a raw watch reader that splits JSON lines itself (lines of several MiB are fine) instead of
kubernetes-asyncio's ``Watch`` (which retries 410 with a stale RV and re-serialises every event).
"""

from __future__ import annotations

import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson

from .config import Configuration, load_configuration
from .errors import ApiError, TransportError, WatchStalled, error_from_status
from .transport import Connection, Dechunker, Pool

__all__ = ["JsonObj", "KubeClient", "RequestHook", "load_configuration"]

JsonObj = dict[str, Any]
# (verb in upper case, HTTP code or "<error>", seconds) -> None; called once per request.
RequestHook = Callable[[str, str, float], None]

DEFAULT_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
_USER_AGENT = "module-service-controller/0.1"
_GZIP = b"Accept-Encoding: gzip\r\n"  # the API server compresses large answers (LISTs), as for client-go
# What a failed exchange looks like from the transport: the socket's, the TLS layer's, a deadline, a
# malformed or undecodable answer.
_TRANSPORT_ERRORS = (OSError, TimeoutError, ssl.SSLError, EOFError, ValueError, zlib.error)


def _ssl_context(cfg: Configuration) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, keyfile=cfg.key_file)
    if not cfg.verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class KubeClient:
    """Raw-dict API client. Use ``async with`` or call :meth:`close`."""

    def __init__(
        self,
        configuration: Configuration,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_request: RequestHook | None = None,
        max_connections: int = 100,
        user_agent: str = _USER_AGENT,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """``headers``: sent with every request (``Impersonate-User``, say)."""
        self.configuration = configuration
        self.extra_headers = dict(headers or {})
        self.base_url = str(configuration.host).rstrip("/")
        self.host = urlsplit(self.base_url).netloc
        self.timeout = timeout
        self.on_request = on_request
        self._user_agent = user_agent
        self._parent: KubeClient | None = None
        self._children: list[KubeClient] = []
        ssl_context = _ssl_context(configuration) if self.base_url.startswith("https") else None
        # No proxy, ever: proxy variables meant for registries must never reroute API traffic.
        self._pool = Pool(self.base_url, ssl_context, limit=max_connections, connect_timeout=_CONNECT_TIMEOUT)
        # Watches get connections of their own without a limit: each holds its connection for minutes, so in
        # a shared pool N namespaces x 3 resources would starve every LIST, write and Lease renewal. Their
        # number is bounded by the informers, not by traffic.
        self._watch_pool = Pool(self.base_url, ssl_context, limit=0, connect_timeout=_CONNECT_TIMEOUT)
        self._static = self._header_lines({"Host": self._pool.host_header, "Accept": "application/json",
                                           "User-Agent": self._user_agent, **self.extra_headers})
        self._auth: tuple[str | None, bytes] = (None, b"")

    def dedicated(self, *, max_connections: int = 2, timeout: float | None = None) -> KubeClient:
        """A client with the same credentials and its own small pool, closed with this one. For traffic
        that must never queue behind the rest, like the Lease renewal (client-go gives leader election a
        client of its own for the same reason). Requests are reported to this client's ``on_request``."""
        child = KubeClient(self.configuration, timeout=timeout or self.timeout, max_connections=max_connections,
                           user_agent=self._user_agent, headers=self.extra_headers)
        child._parent = self
        self._children.append(child)
        return child

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for child in self._children:
            await child.close()
        self._pool.close()
        self._watch_pool.close()

    @staticmethod
    def _header_lines(headers: Mapping[str, str]) -> bytes:
        for name, value in headers.items():
            if "\r" in f"{name}{value}" or "\n" in f"{name}{value}":
                raise ValueError(f"header {name!r} holds a line break")
        return "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")

    async def _headers(self, content_type: str | None) -> bytes:
        """Header lines; the Authorization line is rendered again only when the token changes."""
        auth = await self.configuration.auth_settings()
        token = (auth.get("BearerToken") or {}).get("value") or None
        if token != self._auth[0]:
            self._auth = (token, self._header_lines({"Authorization": token}) if token else b"")
        extra = b"Content-Type: %s\r\n" % content_type.encode("latin-1") if content_type else b""
        return self._static + self._auth[1] + extra

    def _observe(self, verb: str, code: str, started: float) -> None:
        hook = self.on_request if self._parent is None else self._parent.on_request
        if hook is not None:
            hook(verb, code, time.perf_counter() - started)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> JsonObj:
        """One request with a hard total timeout; returns the decoded JSON body or raises a KubeError."""
        verb = method.upper()
        data = orjson.dumps(body) if body is not None else None
        headers = await self._headers(content_type if data is not None else None) + _GZIP
        target = self._pool.target(path, _query(params))
        started = time.perf_counter()
        try:
            resp = await self._pool.request(verb, target, headers, data, timeout=timeout or self.timeout)
        except _TRANSPORT_ERRORS as exc:
            self._observe(verb, "<error>", started)
            raise TransportError(f"{verb} {path}: {type(exc).__name__}: {exc}"[:300]) from exc
        status, raw = resp.status, resp.body
        self._observe(verb, str(status), started)
        decoded: Any = None
        if raw:
            try:
                decoded = orjson.loads(raw)
            except orjson.JSONDecodeError:
                decoded = None
        if status >= 300:
            raise error_from_status(status, decoded, retry_after=_retry_after(resp.headers.get("retry-after")))
        if raw and not isinstance(decoded, dict):
            # Never guess: a garbled 2xx LIST read as "{}" would look like "everything was deleted".
            raise TransportError(f"{verb} {path}: {status} with a body that is not a JSON object")
        return decoded if isinstance(decoded, dict) else {}

    async def watch(
        self,
        path: str,
        *,
        params: Mapping[str, str | int | bool],
        on_event: Callable[[JsonObj], None],
        idle_timeout: float,
        on_open: Callable[[], None] | None = None,
    ) -> None:
        """Streams a watch: calls ``on_event`` with each decoded event (including BOOKMARKs) until the
        server ends the stream. ERROR events raise the matching ApiError (410 -> Gone); silence longer
        than ``idle_timeout`` raises WatchStalled; a broken connection raises TransportError.

        A callback, not an async generator: the inactivity deadline is a cancel scope, and yielding
        from inside a cancel scope in an async generator corrupts anyio's scope stack.
        """
        headers = await self._headers(None)
        target = self._watch_pool.target(path, _query({**params, "watch": True}))
        started = time.perf_counter()
        stalled = False
        responded = False
        conn: Connection | None = None
        try:
            # The idle deadline also covers the wait for the response headers: a connection that went
            # half-open takes the request and never answers.
            with anyio.CancelScope(deadline=anyio.current_time() + idle_timeout) as scope:
                conn, status, resp_headers = await self._watch_pool.open_stream(target, headers)
                responded = True
                self._observe("WATCH", str(status), started)
                if status >= 300:
                    body = await _error_body(conn, resp_headers)
                    raise error_from_status(status, body,
                                            retry_after=_retry_after(resp_headers.get("retry-after")))
                if on_open is not None:
                    on_open()
                scope.deadline = anyio.current_time() + idle_timeout
                await _read_events(conn, resp_headers, on_event, scope, idle_timeout)
            stalled = scope.cancelled_caught
        except ApiError:
            raise
        except (*_TRANSPORT_ERRORS, orjson.JSONDecodeError) as exc:
            if not responded:
                self._observe("WATCH", "<error>", started)  # counted like request(): no HTTP response
            raise TransportError(f"WATCH {path}: {type(exc).__name__}: {exc}"[:300]) from exc
        finally:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()  # a watch's connection is never reused
        if stalled:
            if not responded:
                self._observe("WATCH", "<error>", started)
            raise WatchStalled(f"no event or bookmark for {idle_timeout:g}s on {path}")


async def _read_events(conn: Connection, headers: dict[str, str], on_event: Callable[[JsonObj], None],
                       scope: anyio.CancelScope, idle_timeout: float) -> None:
    """Splits the stream into JSON lines and hands each event on; every byte received moves the idle
    deadline. A bytearray and offsets: a 5 MiB line arriving in 64 KiB pieces stays linear."""
    lines = bytearray()
    dechunk = Dechunker() if "chunked" in headers.get("transfer-encoding", "").lower() else None
    while True:
        search_from = len(lines)
        if dechunk is not None:
            dechunk.take(conn.buf, lines)
        else:
            lines += conn.buf
            conn.buf.clear()
        if len(lines) > search_from:
            scope.deadline = anyio.current_time() + idle_timeout
            start = 0
            while (end := lines.find(b"\n", search_from)) != -1:
                if end > start:
                    _dispatch(orjson.loads(lines[start:end]), on_event)
                start = search_from = end + 1
            if start:
                del lines[:start]
        if dechunk is not None and dechunk.done:
            break
        if conn.eof and dechunk is None and conn.error is None:
            break  # a body without chunks ends with the connection
        await conn.more()
    if bytes(lines).strip():
        _dispatch(orjson.loads(lines), on_event)


async def _error_body(conn: Connection, headers: dict[str, str]) -> Any:
    """The Status object of an error answer to a watch (a watch's error body is small)."""
    try:
        with anyio.fail_after(10):
            if "chunked" in headers.get("transfer-encoding", "").lower():
                out = bytearray()
                dechunk = Dechunker()
                while True:
                    dechunk.take(conn.buf, out)
                    if dechunk.done:
                        break
                    await conn.more()
                raw = bytes(out)
            elif (length := headers.get("content-length", "")).isdigit():
                raw = await conn.read_exactly(int(length))
            else:
                raw = await conn.read_to_eof()
        return orjson.loads(raw) if raw else None
    except (*_TRANSPORT_ERRORS, orjson.JSONDecodeError):
        return None


def _dispatch(event: Any, on_event: Callable[[JsonObj], None]) -> None:
    if not isinstance(event, dict):
        return
    if event.get("type") == "ERROR":
        raise error_from_status(500, event.get("object"))
    on_event(event)


def _query(params: Mapping[str, str | int | bool] | None) -> dict[str, str]:
    if not params:
        return {}
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in params.items()}


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
