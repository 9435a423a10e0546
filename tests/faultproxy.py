"""A small fault-injecting HTTP reverse proxy in front of kube-apiserver, for fault tests.

The controller talks plain HTTP to ``http://127.0.0.1:<port>`` (a kubeconfig without credentials, see
:meth:`FaultProxy.write_kubeconfig`); the proxy forwards every request over TLS with the control plane's
admin client certificate and streams the response back chunk by chunk, so watches work through it.

Faults (all take effect for requests that arrive after the call, unless said otherwise):

- :meth:`FaultProxy.fail_with` answers matching requests with a Kubernetes ``Status`` body of the given
  code (429 carries ``Retry-After`` and ``details.retryAfterSeconds``) for ``count`` requests and/or
  ``duration`` seconds, without forwarding them.
- :meth:`FaultProxy.stall_watches` holds new watch requests open: response headers (200) and then not
  one byte, as a half-dead intermediary would; ``send_headers=False`` holds them before the headers;
  ``existing=True`` also cuts the upstream side of watches already streaming and keeps their
  downstream side open and silent.
- :meth:`FaultProxy.slow_down` delays matching requests by ``seconds`` before forwarding them (a slow or
  overloaded API server; a long delay is a hung request), for ``duration`` seconds.
- :meth:`FaultProxy.release_watches` ends held watches and keeps the rules.
- :meth:`FaultProxy.resume` ends every fault: held watches are closed (a clean end of stream), delayed
  requests are forwarded at once, and new requests flow again.

:attr:`FaultProxy.stats` counts what was forwarded and injected. Use it inside a test body::

    async with FaultProxy.for_controlplane(cp) as proxy:
        kubeconfig = proxy.write_kubeconfig(tmp_path / "kubeconfig")
        proxy.fail_with(429, duration=5, methods=("POST",))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from tests.controlplane import ControlPlane

__all__ = ["FaultProxy", "FaultRule", "ProxyStats"]

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones aiohttp must compute itself.
_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
})
_REASONS = {403: "Forbidden", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout", 409: "Conflict", 410: "Expired"}
_POLL = 0.05  # how often a held response checks whether its client went away


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in ("true", "1")


@dataclass
class FaultRule:
    """Answer matching requests with ``status`` until ``remaining`` hits 0 or ``until`` passes."""

    status: int
    remaining: int | None
    until: float | None
    methods: frozenset[str] | None
    path_contains: str | None
    watch: bool | None
    retry_after: int
    injected: int = 0

    def active(self, now: float) -> bool:
        return (self.remaining is None or self.remaining > 0) and (self.until is None or now < self.until)

    def matches(self, method: str, path: str, is_watch: bool) -> bool:
        return ((self.methods is None or method in self.methods)
                and (self.path_contains is None or self.path_contains in path)
                and (self.watch is None or self.watch == is_watch))


@dataclass
class _Delay:
    seconds: float
    until: float
    methods: frozenset[str] | None
    path_contains: str | None
    released: asyncio.Event = field(default_factory=asyncio.Event)  # resume() lets held requests go

    def matches(self, method: str, path: str, now: float) -> bool:
        return (now < self.until and (self.methods is None or method in self.methods)
                and (self.path_contains is None or self.path_contains in path))


@dataclass(eq=False)
class _Stall:
    existing: bool
    send_headers: bool
    path_contains: str | None
    released: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class ProxyStats:
    forwarded: Counter[str] = field(default_factory=Counter)  # HTTP method (WATCH for watches) -> count
    injected: Counter[int] = field(default_factory=Counter)  # status -> count
    injected_by_method: Counter[tuple[str, int]] = field(default_factory=Counter)
    # ("services", "moduledeployments/status", "events", ...; status) -> count
    injected_by_resource: Counter[tuple[str, int]] = field(default_factory=Counter)
    last_injected_at: dict[int, float] = field(default_factory=dict)  # status -> time.monotonic() of the last
    delayed: int = 0  # requests held back by slow_down before being forwarded
    stalled_watches: int = 0  # new watches held open without data
    cut_watches: int = 0  # streaming watches whose upstream was cut by stall_watches(existing=True)
    open_watches: int = 0  # watch responses currently streaming or held
    upstream_errors: int = 0  # requests the API server did not answer (down, or the stream broke)

    def injected_total(self, status: int | None = None) -> int:
        return sum(self.injected.values()) if status is None else self.injected[status]


class _Stream:
    """One forwarded watch response, so a stall can cut it from upstream."""

    def __init__(self, path: str, upstream: aiohttp.ClientResponse) -> None:
        self.path = path
        self.upstream = upstream
        self.cut: _Stall | None = None

    def cut_off(self, stall: _Stall) -> None:
        self.cut = stall
        _abort(self.upstream)  # wakes the reader; whatever upstream sends from now on is dropped


def _resource_of(path: str) -> str:
    """``/api/v1/namespaces/ns/services/x`` -> ``services``; ``.../moduledeployments/x/status`` ->
    ``moduledeployments/status``; anything else -> the path."""
    parts = path.strip("/").split("/")
    if "namespaces" not in parts or len(parts) <= parts.index("namespaces") + 2:
        return path
    i = parts.index("namespaces") + 2
    return f"{parts[i]}/{parts[i + 2]}" if len(parts) > i + 2 else parts[i]


def _abort(upstream: aiohttp.ClientResponse) -> None:
    """Drops an upstream connection at once. A plain close starts a graceful TLS shutdown that nobody
    awaits; when the test's event loop ends first, the socket leaks and fails a later test with a
    ResourceWarning (the controller's client does the same, see ``_abort_on_cancel``)."""
    connection = upstream.connection
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    upstream.close()


class FaultProxy:
    """The proxy (module docstring). Single event loop: start, fault and stop it from the test's loop."""

    def __init__(self, upstream: str, *, ca_file: Path, cert_file: Path, key_file: Path) -> None:
        self.upstream = upstream.rstrip("/")
        self._ssl = ssl.create_default_context(cafile=str(ca_file))
        self._ssl.load_cert_chain(str(cert_file), str(key_file))
        self.stats = ProxyStats()
        self._rules: list[FaultRule] = []
        self._delays: list[_Delay] = []
        self._stall: _Stall | None = None
        self._held: set[_Stall] = set()  # stalls that still hold responses (until resume)
        self._streams: set[_Stream] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.port = 0

    @classmethod
    def for_controlplane(cls, cp: ControlPlane) -> FaultProxy:
        pki = cp.directory / "pki"
        return cls(cp.server, ca_file=pki / "ca.crt", cert_file=pki / "admin.crt", key_file=pki / "admin.key")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            auto_decompress=False, trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self._closing.set()
        self.resume()
        for stream in list(self._streams):
            _abort(stream.upstream)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    def write_kubeconfig(self, path: Path) -> str:
        """A kubeconfig for ``http://127.0.0.1:<port>`` without credentials (the proxy adds them)."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "faultproxy",
            "clusters": [{"name": "faultproxy", "cluster": {"server": self.url}}],
            "users": [{"name": "faultproxy", "user": {}}],
            "contexts": [{"name": "faultproxy", "context": {"cluster": "faultproxy", "user": "faultproxy"}}],
        }
        path.write_text(json.dumps(config, indent=2))
        return str(path)

    # ------------------------------------------------------------------ faults
    def fail_with(self, status: int, *, count: int | None = None, duration: float | None = None,
                  methods: Iterable[str] | None = None, path_contains: str | None = None,
                  watch: bool | None = None, retry_after: int = 1) -> FaultRule:
        """Answers matching requests with ``status`` for ``count`` requests and/or ``duration`` seconds
        (at least one is required). ``methods`` are HTTP methods (a watch is a GET); ``watch`` True/False
        restricts the rule to watch/non-watch requests."""
        if count is None and duration is None:
            raise ValueError("fail_with needs count or duration")
        rule = FaultRule(
            status=status, remaining=count,
            until=None if duration is None else time.monotonic() + duration,
            methods=None if methods is None else frozenset(m.upper() for m in methods),
            path_contains=path_contains, watch=watch, retry_after=retry_after,
        )
        self._rules.append(rule)
        return rule

    def slow_down(self, seconds: float, *, duration: float, methods: Iterable[str] | None = None,
                  path_contains: str | None = None) -> None:
        """Holds matching requests (``methods``: HTTP methods) ``seconds`` before forwarding them, for
        the next ``duration`` seconds."""
        self._delays.append(_Delay(
            seconds=seconds, until=time.monotonic() + duration,
            methods=None if methods is None else frozenset(m.upper() for m in methods),
            path_contains=path_contains,
        ))

    def watching(self, path_contains: str) -> bool:
        """True once a watch whose path contains ``path_contains`` streams through the proxy (a stall with
        ``existing=True`` can only cut a watch that is already there)."""
        return any(path_contains in stream.path for stream in self._streams)

    def stall_watches(self, *, existing: bool = False, send_headers: bool = True,
                      path_contains: str | None = None) -> None:
        """Holds new watches (matching ``path_contains``) open without data until :meth:`resume`;
        ``existing`` also silences watches already streaming by cutting their upstream side."""
        stall = _Stall(existing=existing, send_headers=send_headers, path_contains=path_contains)
        self._stall = stall
        self._held.add(stall)
        if existing:
            for stream in list(self._streams):
                if path_contains is None or path_contains in stream.path:
                    self.stats.cut_watches += 1
                    stream.cut_off(stall)

    def release_watches(self) -> None:
        """Ends held watches (cleanly) and stops holding new ones; rules stay (a 410 for the re-watch, say)."""
        self._stall = None
        for stall in self._held:
            stall.released.set()
        self._held.clear()

    def resume(self) -> None:
        """Ends every fault: rules are dropped, held watches end (cleanly), new requests flow."""
        self._rules.clear()
        for delay in self._delays:
            delay.released.set()
        self._delays.clear()
        self._stall = None
        for stall in self._held:
            stall.released.set()
        self._held.clear()

    # ------------------------------------------------------------------ serving
    def _rule_for(self, method: str, path: str, is_watch: bool) -> FaultRule | None:
        now = time.monotonic()
        self._rules = [r for r in self._rules if r.active(now)]
        for rule in self._rules:
            if rule.matches(method, path, is_watch):
                if rule.remaining is not None:
                    rule.remaining -= 1
                rule.injected += 1
                return rule
        return None

    def _fail(self, rule: FaultRule, method: str, path: str = "") -> web.Response:
        self.stats.injected[rule.status] += 1
        self.stats.injected_by_resource[(_resource_of(path), rule.status)] += 1
        self.stats.last_injected_at[rule.status] = time.monotonic()
        self.stats.injected_by_method[(method, rule.status)] += 1
        reason = _REASONS.get(rule.status, "InternalError")
        body: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": f"injected by faultproxy: {rule.status} {reason}", "reason": reason, "code": rule.status,
        }
        headers = {}
        if rule.status == 429:
            body["details"] = {"retryAfterSeconds": rule.retry_after}
            headers["Retry-After"] = str(rule.retry_after)
        return web.json_response(body, status=rule.status, headers=headers)

    async def _wait_released(self, request: web.Request, stall: _Stall) -> None:
        """Returns when the stall is resumed, the proxy closes or the client hangs up."""
        while not (stall.released.is_set() or self._closing.is_set()):
            transport = request.transport
            if transport is None or transport.is_closing():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stall.released.wait(), _POLL)

    async def _hold(self, request: web.Request, stall: _Stall) -> web.StreamResponse:
        self.stats.stalled_watches += 1
        self.stats.open_watches += 1
        try:
            resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            if stall.send_headers:
                await resp.prepare(request)
            await self._wait_released(request, stall)
            if not resp.prepared:
                # Never answered: after the stall, answer 503 so nothing mistakes it for a watch.
                return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                          "reason": "ServiceUnavailable", "code": 503}, status=503)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
            return resp
        finally:
            self.stats.open_watches -= 1

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        method = request.method.upper()
        is_watch = _is_watch(request)
        body = await request.read()
        rule = self._rule_for(method, request.path, is_watch)
        if rule is not None:
            return self._fail(rule, method, request.path)
        stall = self._stall
        if is_watch and stall is not None and (stall.path_contains is None or stall.path_contains in request.path):
            return await self._hold(request, stall)
        now = time.monotonic()
        delay = next((d for d in self._delays if d.matches(method, request.path, now)), None)
        if delay is not None:
            self.stats.delayed += 1
            # The injected latency itself, not a synchronisation; resume() ends it early.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(delay.released.wait(), delay.seconds)
        self.stats.forwarded["WATCH" if is_watch else method] += 1
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        headers["Accept-Encoding"] = "identity"
        try:
            upstream = await self._session.request(method, self.upstream + request.path_qs, headers=headers,
                                                   data=body or None, allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            # kube-apiserver is down: a 503 Status, as a load balancer with no healthy backend answers.
            self.stats.upstream_errors += 1
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": f"faultproxy: upstream unavailable: {type(exc).__name__}",
                                      "reason": "ServiceUnavailable", "code": 503}, status=503)
        stream = _Stream(request.path, upstream) if is_watch else None
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    resp.headers.add(key, value)
            await resp.prepare(request)
            if stream is not None:
                self._streams.add(stream)
                self.stats.open_watches += 1
            try:
                async for chunk in upstream.content.iter_any():
                    if stream is not None and stream.cut is not None:
                        break
                    await resp.write(chunk)
            except (aiohttp.ClientError, OSError):
                if stream is None or stream.cut is None:
                    # Upstream broke mid-body: break the client's connection too (a clean end would
                    # turn a truncated body into a well-formed short one).
                    self.stats.upstream_errors += 1
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
            if stream is not None and stream.cut is not None:
                await self._wait_released(request, stream.cut)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
            return resp
        except asyncio.CancelledError:
            _abort(upstream)  # the client went away mid-response (a watch torn down)
            raise
        finally:
            if stream is not None and stream in self._streams:
                self._streams.discard(stream)
                self.stats.open_watches -= 1
            upstream.release()
