"""The controller's two HTTP endpoints, served on the controller's own event loop (``httpserver.py``).

- :class:`ProbeServer`: ``/healthz`` and ``/readyz`` with controller-runtime's ``pkg/healthz`` contract
  (``?verbose``, ``?exclude=<name>``, ``/<endpoint>/<check>``).
- :class:`MetricsServer`: ``/metrics``, plain HTTP or, with ``secure=True``, HTTPS (HTTP/1.1 only) where
  every request needs a bearer token that passes a TokenReview and a SubjectAccessReview for the
  non-resource path (controller-runtime ``filters.WithAuthenticationAndAuthorization``).

Both are anyio runnables: ``await tg.start(server.run)`` returns once the socket is bound (so a busy port
fails start-up), and cancelling the task group shuts the server down. Bind addresses follow Go/
controller-runtime: ``":8080"`` all interfaces, ``"127.0.0.1:0"`` an ephemeral port, ``"0"`` disabled.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import zlib
from collections.abc import Sequence
from typing import Final

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .authz import Authorizer
from .health import HealthChecks
from .httpserver import Request, Response, serve

__all__ = ["MetricsServer", "ProbeServer", "generate_self_signed_cert", "parse_bind"]

log = structlog.get_logger(__name__)

# In-flight requests get this long on shutdown; scrapes and probes take milliseconds.
_SHUTDOWN_TIMEOUT: Final = 2.0


def parse_bind(bind: str) -> tuple[str | None, int] | None:
    """``"0"``/``""`` -> None (disabled); ``":8080"`` -> (None, 8080) (all interfaces);
    ``"127.0.0.1:0"`` -> ephemeral port; ``"[::1]:9"`` -> ("::1", 9). Raises ValueError otherwise."""
    if bind in ("", "0"):
        return None
    host, sep, port_text = bind.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid bind address {bind!r}: want [host]:port, or 0 to disable")
    host = host.removeprefix("[").removesuffix("]")
    return (host or None), int(port_text)


def _text(status: int, body: str) -> Response:
    return Response(status, body.encode(), {"Content-Type": "text/plain; charset=utf-8",
                                            "X-Content-Type-Options": "nosniff"})


_NOT_FOUND = "404: Not Found"


# --------------------------------------------------------------------------------------------------------
# Server base


class _Server:
    """Serves one handler per :meth:`run`; ``port`` is the bound port once started (None if off)."""

    def __init__(self, bind: str) -> None:
        self._address = parse_bind(bind)  # fails at construction, i.e. during flag validation
        self.port: int | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    async def _handle(self, request: Request) -> Response:
        raise NotImplementedError

    async def _ssl_context(self) -> ssl.SSLContext | None:
        return None

    def _bound(self, port: int) -> None:
        self.port = port

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if self._address is None:
            task_status.started()
            return
        host, port = self._address
        ssl_ctx = await self._ssl_context()
        try:
            # No access log: probes every few seconds would drown the controller's own logs.
            await serve(self._handle, host, port, ssl_context=ssl_ctx, shutdown_timeout=_SHUTDOWN_TIMEOUT,
                        on_bound=self._bound, task_status=task_status)
        finally:
            self.port = None


class ProbeServer(_Server):
    """``/healthz`` and ``/readyz`` (plus ``/<endpoint>/<check>``), unauthenticated like kubelet expects."""

    def __init__(self, bind: str, healthz: HealthChecks, readyz: HealthChecks) -> None:
        super().__init__(bind)
        self.healthz = healthz
        self.readyz = readyz

    async def _handle(self, request: Request) -> Response:
        endpoint, _, name = request.path.strip("/").partition("/")
        checks = {"healthz": self.healthz, "readyz": self.readyz}.get(endpoint)
        if checks is None or "/" in name:
            return _text(404, _NOT_FOUND)
        if not name:
            status, body = checks.render(verbose="verbose" in request.query,
                                         exclude=request.query.get("exclude", []))
            return _text(status, body)
        if name not in checks:
            return _text(404, "404 page not found\n")
        reason = checks.run(name)
        return _text(200, "ok") if reason is None else _text(500, f"internal server error: {reason}\n")


# --------------------------------------------------------------------------------------------------------
# Metrics server


def _bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token):
        return None
    return token


class MetricsServer(_Server):
    """``/metrics`` for ``registry``; with ``secure`` HTTPS, and with ``authorizer`` authn/authz on every
    request (controller-runtime allows TLS without the filter, so does this)."""

    def __init__(
        self,
        bind: str,
        registry: CollectorRegistry,
        *,
        secure: bool = False,
        cert_dir: str | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        super().__init__(bind)
        self.registry = registry
        self.secure = secure
        self.cert_dir = cert_dir
        self.authorizer = authorizer

    async def _handle(self, request: Request) -> Response:
        if request.path != "/metrics":
            return _text(404, _NOT_FOUND)
        authorizer = self.authorizer
        if self.secure and authorizer is not None:
            token = _bearer_token(request.headers.get("authorization"))
            if token is None:
                return _text(401, "Unauthorized\n")
            try:
                status = await authorizer.authorize(token, request.path, request.method.lower())
            except Exception as exc:  # an authorizer bug must not turn into an open endpoint
                log.warning("metrics authorization failed", error=type(exc).__name__)
                status = 500
            if status != 200:
                return _text(status, {401: "Unauthorized\n", 403: "Forbidden\n"}.get(
                    status, "Internal Server Error\n"))
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        # ``?name[]=a&name[]=b``: only those families (prometheus_client's own server does the same), so a
        # frequent poll of one gauge does not pay for every family.
        names = request.query.get("name[]", [])
        registry = self.registry.restricted_registry(names) if names else self.registry
        # Collected on the loop: cheap for our few hundred series, and the asyncio task gauge needs the
        # running loop.
        body = encoder(registry)
        headers = {"Content-Type": content_type}
        if "gzip" in request.headers.get("accept-encoding", ""):
            gz = zlib.compressobj(6, zlib.DEFLATED, 31)
            body = gz.compress(body) + gz.flush()
            headers["Content-Encoding"] = "gzip"
        return Response(200, body, headers)

    async def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.secure:
            return None
        # Key generation and temp files are blocking; keep them off the loop.
        return await anyio.to_thread.run_sync(self._build_ssl_context)

    def _build_ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # HTTP/1.1 only, like Kubebuilder's default (HTTP/2 rapid-reset CVEs).
        ctx.set_alpn_protocols(["http/1.1"])
        if self.cert_dir:
            cert = os.path.join(self.cert_dir, "tls.crt")
            key = os.path.join(self.cert_dir, "tls.key")
            if os.path.isfile(cert) and os.path.isfile(key):
                ctx.load_cert_chain(cert, key)
                return ctx
        cert_pem, key_pem = generate_self_signed_cert()
        # load_cert_chain only takes paths; the private dir vanishes right after loading.
        with tempfile.TemporaryDirectory(prefix="metrics-cert-") as tmp:
            cert = os.path.join(tmp, "tls.crt")
            key = os.path.join(tmp, "tls.key")
            with open(cert, "wb") as f:
                f.write(cert_pem)
            with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def generate_self_signed_cert(hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM): a P-256 self-signed certificate for ``hosts`` (DNS names or IPs), valid a year.
    Scrapers use ``insecureSkipVerify`` against it, as with controller-runtime's."""
    # Imported here: cryptography costs ~8 MiB of RSS, and only --metrics-secure without a cert dir needs it.
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{hosts[0]}@{int(now.timestamp())}")])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        # CA so the certificate can also serve as its own trust anchor for clients that pin it.
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


