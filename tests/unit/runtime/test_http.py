"""Probe and metrics servers on real sockets (127.0.0.1:0), plus the TokenReview/SAR authorizer."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client import CollectorRegistry

from controller.runtime.authz import KubeAuthorizer
from controller.runtime.health import HealthChecks
from controller.runtime.http import MetricsServer, ProbeServer, generate_self_signed_cert, parse_bind
from controller.runtime.kube.errors import Forbidden, TransportError
from controller.runtime.metrics import Metrics

__all__: list[str] = []


def test_parse_bind() -> None:
    assert parse_bind("0") is None
    assert parse_bind("") is None
    assert parse_bind(":8081") == (None, 8081)
    assert parse_bind("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_bind("[::1]:8443") == ("::1", 8443)
    for bad in ("8080", "host:", "host:http", ":70000"):
        with pytest.raises(ValueError, match="invalid bind address"):
            parse_bind(bad)


def test_health_render() -> None:
    checks = HealthChecks()
    assert checks.render(verbose=False) == (200, "ok")
    assert checks.render(verbose=True) == (200, "[+]ping ok\nhealthz check passed\n")
    checks.add("ping", lambda: None)
    def boom() -> str | None:
        raise ZeroDivisionError("integer division or modulo by zero")

    checks.add("boom", boom)
    status, body = checks.render(verbose=False)
    assert status == 500
    assert body == "[-]boom failed: ZeroDivisionError: integer division or modulo by zero\n" \
                   "[+]ping ok\nhealthz check failed\n"
    assert checks.render(verbose=False, exclude=["boom"]) == (200, "ok")
    assert checks.render(verbose=True, exclude=["boom", "nope"]) == (
        200,
        "[+]boom excluded: ok\n[+]ping ok\n"
        "warn: some health checks cannot be excluded: no matches for nope\nhealthz check passed\n",
    )
    with pytest.raises(ValueError, match="duplicate"):
        checks.add("ping", lambda: None)


@pytest.mark.asyncio
async def test_probe_server() -> None:
    state: dict[str, str | None] = {"informers": None}
    healthz = HealthChecks()
    healthz.add("ping", lambda: None)
    healthz.add("informers", lambda: state["informers"])
    readyz = HealthChecks()
    readyz.add("synced", lambda: "caches not synced")
    server = ProbeServer("127.0.0.1:0", healthz, readyz)

    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz") as resp:
                assert resp.status == 200
                assert await resp.text() == "ok"
            async with session.get(f"{base}/healthz?verbose") as resp:
                assert resp.status == 200
                assert await resp.text() == "[+]informers ok\n[+]ping ok\nhealthz check passed\n"

            state["informers"] = "watch on pods died"
            async with session.get(f"{base}/healthz") as resp:
                assert resp.status == 500
                body = await resp.text()
            assert body.splitlines() == [
                "[-]informers failed: watch on pods died", "[+]ping ok", "healthz check failed",
            ]
            async with session.get(f"{base}/healthz?exclude=informers") as resp:
                assert resp.status == 200
            async with session.get(f"{base}/healthz/ping") as resp:
                assert (resp.status, await resp.text()) == (200, "ok")
            async with session.get(f"{base}/healthz/informers") as resp:
                assert resp.status == 500
                assert "watch on pods died" in await resp.text()
            async with session.get(f"{base}/healthz/missing") as resp:
                assert resp.status == 404

            async with session.get(f"{base}/readyz?verbose") as resp:
                assert resp.status == 500
                assert "[-]synced failed: caches not synced" in await resp.text()
            async with session.head(f"{base}/readyz") as resp:
                assert resp.status == 500
        tg.cancel_scope.cancel()
    assert server.port is None


@pytest.mark.asyncio
async def test_disabled_server_returns_after_started() -> None:
    server = ProbeServer("0", HealthChecks(), HealthChecks())
    assert not server.enabled
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
    assert server.port is None


@pytest.mark.asyncio
async def test_busy_port_fails_start() -> None:
    first = ProbeServer("127.0.0.1:0", HealthChecks(), HealthChecks())
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        second = ProbeServer(f"127.0.0.1:{first.port}", HealthChecks(), HealthChecks())
        with pytest.raises(OSError, match="ddress already in use"):
            await tg.start(second.run)
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_metrics_plain() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.reconcile_result("success", 0.01)
    server = MetricsServer("127.0.0.1:0", registry)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        url = f"http://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession() as session:
            async with session.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain")
                text = await resp.text()
            series = 'controller_runtime_reconcile_total{controller="moduleservice",result="success"}'
            assert f"{series} 1.0" in text
            # Scraped on the loop: at least the server's own task is counted.
            tasks = [line for line in text.splitlines() if line.startswith("moduleservice_asyncio_tasks ")]
            assert len(tasks) == 1, tasks
            assert float(tasks[0].split()[1]) >= 1
            async with session.get(url, headers={"Accept": "application/openmetrics-text"}) as resp:
                assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
                assert (await resp.text()).endswith("# EOF\n")
            async with session.get(f"http://127.0.0.1:{server.port}/other") as resp:
                assert resp.status == 404
            # name[] serves only the families asked for.
            async with session.get(f"{url}?name[]=controller_runtime_reconcile_total") as resp:
                only = await resp.text()
            assert f"{series} 1.0" in only
            assert "moduleservice_asyncio_tasks" not in only
            assert "workqueue_depth" not in only
        tg.cancel_scope.cancel()


class FakeAuthorizer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def authorize(self, token: str, path: str, verb: str) -> int:
        self.calls.append((token, path, verb))
        return {"good": 200, "denied": 403, "broken": 500}.get(token, 401)


@pytest.mark.asyncio
async def test_metrics_secure() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    authorizer = FakeAuthorizer()
    server = MetricsServer("127.0.0.1:0", registry, secure=True, authorizer=authorizer)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        url = f"https://127.0.0.1:{server.port}/metrics"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False)) as session:
            async with session.get(url) as resp:
                assert resp.status == 401
            async with session.get(url, headers={"Authorization": "Basic abc"}) as resp:
                assert resp.status == 401
            assert authorizer.calls == []  # no token, no review

            async def status(token: str) -> int:
                async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                    await resp.read()
                    return resp.status

            assert await status("stranger") == 401
            assert await status("denied") == 403
            assert await status("broken") == 500
            async with session.get(url, headers={"Authorization": "Bearer good"}) as resp:
                assert resp.status == 200
                assert "controller_runtime_reconcile_total" in await resp.text()
            assert authorizer.calls[-1] == ("good", "/metrics", "get")
        # Plain HTTP on the TLS port does not get through.
        async with aiohttp.ClientSession() as session:
            with anyio.fail_after(10), pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{server.port}/metrics") as resp:
                    await resp.read()
        tg.cancel_scope.cancel()


@pytest.mark.asyncio
async def test_metrics_secure_uses_cert_dir(tmp_path: Path) -> None:
    cert_pem, key_pem = generate_self_signed_cert(("metrics.test", "127.0.0.1"))
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    trust = ssl.create_default_context(cadata=cert_pem.decode())
    server = MetricsServer("127.0.0.1:0", CollectorRegistry(), secure=True, cert_dir=str(tmp_path),
                           authorizer=FakeAuthorizer())
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        # Verifying against exactly that certificate proves cert_dir was served.
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session,
            session.get(f"https://127.0.0.1:{server.port}/metrics",
                        headers={"Authorization": "Bearer good"}) as resp,
        ):
            assert resp.status == 200
        tg.cancel_scope.cancel()


class FakeClient:
    """Scripted TokenReview / SubjectAccessReview answers."""

    def __init__(self) -> None:
        self.users = {"sa-token": {"username": "system:serviceaccount:monitoring:prometheus", "uid": "u1",
                                   "groups": ["system:serviceaccounts"], "extra": {"k": ["v"]}},
                      "other": {"username": "bob"}}
        self.allowed = {"system:serviceaccount:monitoring:prometheus"}
        self.fail: Exception | None = None
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def request(
        self, method: str, path: str, *, body: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        assert method == "POST"
        assert timeout is not None
        self.requests.append((path, body))
        if self.fail is not None:
            raise self.fail
        spec = body["spec"]
        if path.endswith("/tokenreviews"):
            user = self.users.get(spec["token"])
            return {"status": {"authenticated": user is not None, **({"user": user} if user else {})}}
        assert path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        return {"status": {"allowed": spec["user"] in self.allowed}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.asyncio
async def test_kube_authorizer_reviews_and_caches() -> None:
    client = FakeClient()
    clock = Clock()
    auth = KubeAuthorizer(client, clock=clock)

    assert await auth.authorize("sa-token", "/metrics", "get") == 200
    (tr_path, tr), (sar_path, sar) = client.requests
    assert tr_path == "/apis/authentication.k8s.io/v1/tokenreviews"
    assert tr["spec"] == {"token": "sa-token"}
    assert sar_path == "/apis/authorization.k8s.io/v1/subjectaccessreviews"
    assert sar["spec"] == {
        "nonResourceAttributes": {"path": "/metrics", "verb": "get"},
        "user": "system:serviceaccount:monitoring:prometheus", "uid": "u1",
        "groups": ["system:serviceaccounts"], "extra": {"k": ["v"]},
    }
    # both answers cached: no reviews within the authn minute, even with the API down
    clock.now = 59.0
    client.fail = TransportError("down")
    assert await auth.authorize("sa-token", "/metrics", "get") == 200
    assert len(client.requests) == 2
    # authn expired after 1 minute -> TokenReview again; the API is down -> 500, not cached
    clock.now = 61.0
    assert await auth.authorize("sa-token", "/metrics", "get") == 500
    client.fail = None
    assert await auth.authorize("sa-token", "/metrics", "get") == 200
    assert [p for p, _ in client.requests[2:]] == [tr_path, tr_path]  # the allow stays cached 5 min
    # another path is another decision
    assert await auth.authorize("sa-token", "/metrics/extra", "get") == 200
    assert client.requests[-1][0] == sar_path

    assert await auth.authorize("unknown", "/metrics", "get") == 401
    assert await auth.authorize("other", "/metrics", "get") == 403
    n = len(client.requests)
    clock.now += 29.0
    assert await auth.authorize("other", "/metrics", "get") == 403
    assert len(client.requests) == n  # deny cached 30 s
    clock.now += 2.0
    client.allowed.add("bob")
    assert await auth.authorize("other", "/metrics", "get") == 200

    client.fail = Forbidden(403, "Forbidden", "cannot create tokenreviews")
    assert await auth.authorize("fresh-token", "/metrics", "get") == 500
