"""The only code that speaks HTTP to the API server.

Credentials come from ``config.py`` (kubeconfig or in-cluster loading, token refresh); requests go through
our own aiohttp session: plain dicts in and out (orjson), a timeout on every request, typed
errors, and a raw watch reader that splits JSON lines itself (lines of several MiB are fine) instead of
kubernetes-asyncio's ``Watch`` (which retries 410 with a stale RV and re-serialises every event).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import orjson

from .config import Configuration, load_configuration
from .errors import ApiError, TransportError, WatchStalled, error_from_status

__all__ = ["JsonObj", "KubeClient", "RequestHook", "load_configuration"]

JsonObj = dict[str, Any]
# (verb in upper case, HTTP code or "<error>", seconds) -> None; called once per request.
RequestHook = Callable[[str, str, float], None]

DEFAULT_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 10.0
_USER_AGENT = "module-service-controller/0.1"


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
        self._ssl: ssl.SSLContext | bool = (
            _ssl_context(configuration) if self.base_url.startswith("https") else False
        )
        self._session = self._new_session(max_connections)
        # Watches get a pool of their own without a limit: each holds its connection for minutes, so in a
        # shared pool N namespaces x 3 resources would starve every LIST, write and Lease renewal
        #. Their number is bounded by the informers, not by traffic.
        self._watch_session = self._new_session(0)

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        # trust_env=False: proxy variables meant for registries must never reroute API traffic.
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, ssl=self._ssl),
            trust_env=False,
            json_serialize=lambda o: orjson.dumps(o).decode(),
        )

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
        await self._session.close()
        await self._watch_session.close()

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent, **self.extra_headers}
        if content_type:
            headers["Content-Type"] = content_type
        auth = await self.configuration.auth_settings()
        token = auth.get("BearerToken")
        if token and token.get("value"):
            headers["Authorization"] = str(token["value"])
        return headers

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
        headers = await self._headers(content_type if data is not None else None)
        query = _query(params)
        started = time.perf_counter()
        try:
            async with self._session.request(
                verb, self.base_url + path, params=query, data=data, headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout or self.timeout, sock_connect=_CONNECT_TIMEOUT),
            ) as resp, _abort_on_cancel(resp):
                raw = await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self._observe(verb, "<error>", started)
            raise TransportError(f"{verb} {path}: {type(exc).__name__}: {exc}"[:300]) from exc
        self._observe(verb, str(status), started)
        decoded: Any = None
        if raw:
            try:
                decoded = orjson.loads(raw)
            except orjson.JSONDecodeError:
                decoded = None
        if status >= 300:
            raise error_from_status(status, decoded, retry_after=retry_after)
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
        query = _query({**params, "watch": True})
        started = time.perf_counter()
        stalled = False
        responded = False
        try:
            # The idle deadline also covers the wait for the response headers: a reused keep-alive
            # connection that went half-open takes the request and never answers (total/sock_read are
            # None for the long-lived stream, so nothing else would ever end that wait).
            with anyio.CancelScope(deadline=anyio.current_time() + idle_timeout) as scope:
                async with self._watch_session.get(
                    self.base_url + path, params=query, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT,
                                                  sock_read=None),
                ) as resp, _abort_on_cancel(resp):
                    responded = True
                    self._observe("WATCH", str(resp.status), started)
                    if resp.status >= 300:
                        raw = await resp.read()
                        try:
                            body = orjson.loads(raw) if raw else None
                        except orjson.JSONDecodeError:
                            body = None
                        raise error_from_status(
                            resp.status, body, retry_after=_retry_after(resp.headers.get("Retry-After"))
                        )
                    if on_open is not None:
                        on_open()
                    scope.deadline = anyio.current_time() + idle_timeout
                    # bytearray + offsets: a 5 MiB line arriving in 64 KiB chunks stays linear.
                    buf = bytearray()
                    async for chunk in resp.content.iter_any():
                        scope.deadline = anyio.current_time() + idle_timeout
                        search_from = len(buf)
                        buf += chunk
                        start = 0
                        while (end := buf.find(b"\n", search_from)) != -1:
                            if end > start:
                                _dispatch(orjson.loads(buf[start:end]), on_event)
                            start = search_from = end + 1
                        if start:
                            del buf[:start]
                    if bytes(buf).strip():
                        _dispatch(orjson.loads(buf), on_event)
            stalled = scope.cancelled_caught
        except ApiError:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            if not responded:
                self._observe("WATCH", "<error>", started)  # counted like request(): no HTTP response
            raise TransportError(f"WATCH {path}: {type(exc).__name__}: {exc}"[:300]) from exc
        if stalled:
            if not responded:
                self._observe("WATCH", "<error>", started)
            raise WatchStalled(f"no event or bookmark for {idle_timeout:g}s on {path}")


@asynccontextmanager
async def _abort_on_cancel(resp: aiohttp.ClientResponse) -> AsyncIterator[None]:
    """Cancelled mid-response (e.g. a watch torn down on shutdown): drop the connection at once.

    Otherwise aiohttp starts a graceful TLS close and awaits it in ``__aexit__``, but that await is
    cancelled with us; when the event loop ends before the close completes (asyncio.run returning, every
    test), the socket is never closed and leaks.
    """
    try:
        yield
    except anyio.get_cancelled_exc_class():
        if resp.connection is not None and resp.connection.protocol is not None:
            resp.connection.protocol.abort()
        raise


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
