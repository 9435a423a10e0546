"""Traffic, literally: does a module's client notice Koupleless' module-controller V1.0.0 deleting
``<module>-service`` in a rollout, beside our controller?

On the node tier's real kubelet, containerd and kube-proxy (iptables): a base Deployment whose Pod serves
HTTP (the controller image running a few lines of Python, so no other image is needed), labelled as
Koupleless labels a base that runs module ``beta`` (``module.koupleless.io/beta: "true"``). Our controller
(in process, profile koupleless, as a user of its own) and the V1.0.0 emulator (as V1.0.0's ServiceAccount)
serve ModuleDeployments beta-v1 and beta-v2 of that module. A client inside the node's network namespace
sends GET / to the Service's nodePort on the node's address every 50 ms, each on a new connection (so each
one goes through kube-proxy's rules as they are at that moment), while beta-v1 is deleted:

- guard on: V1.0.0's deletes are refused; not one request may fail;
- guard off: V1.0.0 deletes the Service, our controller re-creates it with the same clusterIP and nodePort,
  and kube-proxy programs it again; requests may fail only between a delete and kube-proxy's rules for
  the re-created Service. The test prints how many, the delete -> create gap, and the create -> traffic
  time (kube-proxy's programming, as the client sees it).

Run with ``-s`` for the figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from controller.app import App
from controller.moduleservice.profiles import PROFILES
from controller.runtime.kube.client import JsonObj
from controller.runtime.kube.errors import NotFound
from tests.audit import ServiceWrite
from tests.controlplane import ControlPlane
from tests.harness import (
    PROFILE_CRD_FILES,
    Api,
    api_client,
    controller_config,
    node_port,
    running_controller,
    wait_for,
    wait_quiet,
)
from tests.integration.test_beside_v1 import (
    MODULE,
    OURS,
    SERVICE,
    V1,
    addresses,
    guard,
    md,
    percentiles,
    seconds,
    short,
    wait_idle,
    wait_md_gone,
    wait_released,
    writes_of,
)
from tests.integration.test_profiles import wait_right
from tests.koupleless_v1 import ModuleControllerV1, release_v1_finalizers, running_upstream
from tests.node.conftest import NodeCluster
from tests.node.images import VERSION
from tests.node.node import NODE_IP

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(600)]

KOUPLELESS = PROFILES["koupleless"]
BASE = "beta-base"
INTERVAL = 0.05
BODY = "beta\n"
# A base that "runs" module beta: answers every GET with the module's name.
SERVER = f"""
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {BODY.encode()!r}
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""
# The client: one GET on a new connection every INTERVAL (on a fixed schedule), one JSON line per request.
CLIENT = """
import http.client, json, sys, time
host, port, interval, out, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
start, n = time.monotonic(), 0
with open(out, "a", buffering=1) as f:
    while True:
        t = time.time()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=1.0)
            conn.request("GET", "/")
            resp = conn.getresponse()
            got = resp.read()
            conn.close()
            ok, err = resp.status == 200 and got == body.encode(), f"{resp.status} {got[:40]!r}"
        except OSError as exc:
            ok, err = False, f"{type(exc).__name__}: {exc}"
        f.write(json.dumps({"t": t, "done": time.time(), "ok": ok, "err": "" if ok else err}) + "\\n")
        n += 1
        time.sleep(max(0.0, start + n * interval - time.monotonic()))
"""


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


@dataclass(frozen=True, slots=True)
class Request:
    t: float  # sent (wall clock, as the audit log's timestamps)
    done: float  # answered or failed
    ok: bool
    err: str


@pytest.fixture(scope="module")
def traffic_cluster(node_cluster: NodeCluster) -> NodeCluster:
    """The node tier's cluster with the Koupleless CRD."""
    crd = PROFILE_CRD_FILES["koupleless"]
    node_cluster.cp.kubectl("apply", "--server-side", "-f", str(crd))
    node_cluster.cp.kubectl("wait", "--for=condition=Established", f"crd/{KOUPLELESS.crd_name}")
    return node_cluster


@pytest.fixture
def traffic_ns(traffic_cluster: NodeCluster) -> Iterator[str]:
    cp = traffic_cluster.cp
    name = f"traffic-{uuid.uuid4().hex[:6]}"
    cp.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    release_v1_finalizers(cp, name)
    cp.request(f"/api/v1/namespaces/{name}", "DELETE")


def base_deployment() -> JsonObj:
    labels = {"app": BASE, f"{KOUPLELESS.label_prefix}{MODULE}": "true"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": BASE},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": BASE}}, "template": {
            "metadata": {"labels": labels},
            "spec": {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
                     "containers": [{
                         "name": "base", "image": f"module-service-controller:{VERSION}",
                         "imagePullPolicy": "Never", "command": ["python3", "-c", SERVER],
                         "ports": [{"name": "http", "containerPort": 8080}],
                         "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                     }]}}},
    }


async def start_base(api: Api, ns: str) -> JsonObj:
    """The base Deployment, once its Pod is Ready on the node."""
    async def default_sa() -> bool:
        try:
            await api.client.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")
        except NotFound:
            return False
        return True
    await wait_for(default_sa, timeout=60, what="the namespace's default ServiceAccount")
    await api.client.request("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", body=base_deployment())

    async def ready_pod() -> JsonObj | None:
        pods = (await api.client.request("GET", f"/api/v1/namespaces/{ns}/pods",
                                         params={"labelSelector": f"app={BASE}"})).get("items") or []
        return next((p for p in pods if any(c.get("type") == "Ready" and c.get("status") == "True"
                                            for c in (p.get("status") or {}).get("conditions") or [])), None)
    return await wait_for(ready_pod, timeout=120, what="the base Pod to be Ready", interval=0.5)


class Client:
    """The HTTP client in the node's network namespace; its log, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def requests(self) -> list[Request]:
        out: list[Request] = []
        if not self.path.exists():
            return out
        for line in self.path.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue  # being written
            out.append(Request(r["t"], r["done"], r["ok"], r["err"]))
        return out

    def ok_streak_since(self, since: float) -> int:
        """Successful requests in a row at the end of the log, sent after ``since``."""
        streak = 0
        for r in reversed(self.requests()):
            if r.t < since or not r.ok:
                break
            streak += 1
        return streak


@contextmanager
def http_client(cp: ControlPlane, port: int, log: Path) -> Iterator[Client]:
    proc = subprocess.Popen([*cp.netns_prefix(), sys.executable, "-c", CLIENT, NODE_IP, str(port), str(INTERVAL),
                             str(log), BODY], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        yield Client(log)
        assert proc.poll() is None, f"the client exited: {proc.stderr.read() if proc.stderr else ''!r}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


async def wait_streak(client: Client, since: float, n: int, *, timeout: float = 60.0) -> None:
    async def flowing() -> bool:
        return client.ok_streak_since(since) >= n
    await wait_for(flowing, timeout=timeout, what=f"{n} successful requests in a row", interval=0.1)


@dataclass
class Outage:
    """One delete by V1.0.0, our create that followed, and the requests that failed in between."""

    delete: ServiceWrite
    create: ServiceWrite | None
    failed: list[Request]  # failed after the delete arrived, sent before traffic was served again
    back: float | None  # when the first request sent after the create and served was sent

    @property
    def gap(self) -> float | None:
        """The delete's arrival to the create's answer: how long there was no Service."""
        return None if self.create is None else seconds(self.create.at) - seconds(self.delete.received)

    @property
    def programmed(self) -> float | None:
        """The create's answer to the first request served after it: kube-proxy programming it, as a
        client sees it (to the client's 50 ms)."""
        return None if self.create is None or self.back is None else self.back - seconds(self.create.at)

    @property
    def outage(self) -> float:
        return 0.0 if not self.failed or self.back is None else self.back - self.failed[0].t


def outages(requests: list[Request], deletes: list[ServiceWrite], creates: list[ServiceWrite]) -> list[Outage]:
    out = []
    for d in deletes:
        start = seconds(d.received)
        create = next((c for c in creates if seconds(c.received) >= start), None)
        back = None if create is None else next((r.t for r in requests if r.t >= seconds(create.at) and r.ok), None)
        failed = [r for r in requests if not r.ok and r.done >= start and (back is None or r.t < back)]
        out.append(Outage(d, create, failed, back))
    return out


@dataclass
class Beside:
    api: Api
    upstream: ModuleControllerV1
    manager: App


@asynccontextmanager
async def beside_v1(cp: ControlPlane, ns: str, *, guarded: bool) -> AsyncIterator[Beside]:
    """The V1.0.0 emulator (as V1.0.0), the guard if ``guarded``, and our controller (as its own user)."""
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(api_client(str(cp.kubeconfig), KOUPLELESS.resource))
        upstream = await stack.enter_async_context(running_upstream(cp, ns, identity=V1))
        if guarded:
            await stack.enter_async_context(guard(api, ns, KOUPLELESS, [V1.username], [upstream.client]))
        config = controller_config(str(cp.user_kubeconfig(OURS)), ns, profile=KOUPLELESS.name)
        manager = await stack.enter_async_context(running_controller(config))
        yield Beside(api, upstream, manager)


@pytest.mark.parametrize("guarded", [pytest.param(True, id="guard-on"), pytest.param(False, id="guard-off")])
async def test_rollout_under_traffic(traffic_cluster: NodeCluster, traffic_ns: str, tmp_path: Path,
                                     guarded: bool) -> None:
    cp, ns = traffic_cluster.cp, traffic_ns
    started = time.monotonic()
    async with beside_v1(cp, ns, guarded=guarded) as beside:
        api, upstream, manager = beside.api, beside.upstream, beside.manager
        await start_base(api, ns)
        v1 = await api.create_md(ns, md("beta-v1", MODULE, version="1.0.0", base=BASE))
        v2 = await api.create_md(ns, md("beta-v2", MODULE, version="1.0.1", base=BASE))
        first = await api.wait_svc(ns, SERVICE, timeout=60)
        # The client from the moment the Service exists: how long kube-proxy takes to program a new one.
        with http_client(cp, node_port(first), tmp_path / "client.jsonl") as client:
            svc = await wait_right(api, ns, MODULE, [v1, v2], KOUPLELESS, timeout=60)
            assert addresses(svc) == addresses(first)
            for name in ("beta-v1", "beta-v2"):
                await wait_released(api, ns, name)
            await wait_quiet(manager)
            await wait_streak(client, 0.0, 20)
            created = min(seconds(w.at) for w in writes_of(cp, ns) if w.verb == "create" and w.succeeded)
            client_started = client.requests()[0].t
            first_ok = next(r.t for r in client.requests() if r.ok)
            since = len(writes_of(cp, ns))
            rollout = time.time()
            await api.delete_md(ns, "beta-v1")
            await wait_md_gone(api, ns, "beta-v1")
            await wait_idle(upstream)
            after = await wait_right(api, ns, MODULE, [v2], KOUPLELESS)
            await wait_quiet(manager)
            # Traffic after the last write: a second of successful requests sent after it was answered.
            writes = writes_of(cp, ns)[since:]
            last = max((seconds(w.at) for w in writes), default=rollout)
            await wait_streak(client, last, 20)
            requests = client.requests()

    during = [r for r in requests if r.t >= rollout]
    failed = [r for r in during if not r.ok]
    v1_deletes = [w for w in writes if w.user == V1.username and w.verb == "delete"]
    deleted = [w for w in v1_deletes if w.succeeded]
    creates = [w for w in writes if w.user == OURS and w.verb == "create" and w.succeeded]
    found = outages(during, deleted, creates)
    runtime = time.monotonic() - started
    print(f"\ntraffic, guard {'on' if guarded else 'off'}: {len(during)} requests through nodePort "
          f"{addresses(svc)[2]} during the rollout ({during[-1].t - during[0].t:.1f}s), {len(failed)} failed "
          f"{sorted({r.err for r in failed})}; V1.0.0's deletes {len(v1_deletes)} "
          f"(codes {sorted(w.code for w in v1_deletes)}), our creates {len(creates)}; writes "
          f"{[(short(w.user), w.verb, w.code) for w in writes]}; Service created -> first request served "
          f"{ms(first_ok - created)} (the client started {ms(client_started - created)} after it); "
          f"test {runtime:.0f}s")
    for o in found:
        print(f"  delete at {o.delete.received}: re-created after {ms(o.gap)}; {len(o.failed)} requests failed "
              f"({sorted({r.err for r in o.failed})}), outage {ms(o.outage)}; re-create -> traffic served again "
              f"(kube-proxy) {ms(o.programmed)}")
    if found:
        print(f"  delete -> create {percentiles([o.gap for o in found if o.gap is not None])}; create -> traffic "
              f"{percentiles([o.programmed for o in found if o.programmed is not None])}")

    assert addresses(after)[1:] == addresses(svc)[1:]
    assert v1_deletes, "V1.0.0 never tried to delete the Service: the scenario did not happen"
    if guarded:
        assert deleted == []
        assert addresses(after) == addresses(svc)
        assert failed == [], f"{len(failed)} requests failed with the guard on"
        return
    assert deleted, "V1.0.0's deletes all failed without the guard"
    assert len(creates) == len(deleted)
    # Every failed request falls between a delete by V1.0.0 and the first request served after our
    # re-create: nothing else broke the traffic.
    explained = {r for o in found for r in o.failed}
    assert set(failed) == explained, f"failures outside any delete -> re-create window: {set(failed) - explained}"
    # Gross regressions only (the figures are printed): back within 8 s of each delete.
    for o in found:
        assert o.back is not None, o
        assert o.back - seconds(o.delete.received) < 8.0, o
