"""Fault tests : the controller survives API-server restarts, compacted watches, throttling and
server errors, stalled watches, bad input and leader churn, and ends in exactly the right state.

They run on a control plane of their own (``fault_controlplane``), never the shared session one: they kill
the API server, stop the garbage collector, compact etcd and swap the CRD. That control plane serves
ModuleDeployment watches straight from etcd (``--watch-cache-sizes=...#0``): with the watch cache, an
etcd compaction is invisible to clients until the cache window moves past their resourceVersion (or the
cache re-initialises), so only without it does "compact while the watch is down" deterministically end
in 410 Gone. Services and Pods keep the watch cache, as in production.

Every wait is a condition with a deadline (``wait_for``); the few fixed windows are deliberate "let the
fault last N seconds" periods and say so.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import math
import random
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
import yaml

from controller.app import App
from controller.moduleservice.desired import MANAGED_BY_LABEL, MANAGED_BY_VALUE
from controller.runtime.kube.client import JsonObj
from controller.runtime.kube.errors import AlreadyExists, NotFound, ServerError, TooManyRequests, TransportError
from tests.conftest import CRD
from tests.controlplane import ControlPlane
from tests.e2e.common import log_time
from tests.e2e.procs import (
    LEASE_NAME,
    ControllerProcess,
    LeaseSettings,
    controller_processes,
    free_port,
)
from tests.faultproxy import FaultProxy
from tests.harness import (
    Api,
    api_client,
    controller_config,
    module_deployment,
    module_service,
    ready_condition,
    running_controller,
    service_problems,
    service_strategy,
    wait_for,
    wait_quiet,
)

pytestmark = pytest.mark.asyncio

CRD_NAME = "moduledeployments.koupleless.alipay.com"
WRITES = ("POST", "PATCH", "PUT", "DELETE")
INFORMER_RESOURCES = ("moduledeployments", "services", "pods")
MDS_PATH = "/apis/koupleless.alipay.com/v1alpha1/namespaces/{ns}/moduledeployments"


# ---------------------------------------------------------------------------------------------- control plane
def _apply_crd(cp: ControlPlane, manifest: str | None = None) -> None:
    if manifest is None:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    else:
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)
    cp.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}")


@pytest.fixture(scope="module")
def fault_controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    # ModuleDeployment watches from etcd, so a compaction is what makes them 410 (module docstring).
    cp = ControlPlane(tmp_path_factory.mktemp("fault-cp"), extra_apiserver_args=[f"--watch-cache-sizes={CRD_NAME}#0"])
    cp.up()
    try:
        _apply_crd(cp)
        yield cp
    finally:
        cp.down()


@pytest.fixture
def fcp(fault_controlplane: ControlPlane) -> Iterator[ControlPlane]:
    """The fault control plane with every component running (a failed test may have left one stopped)."""
    cp = fault_controlplane
    _ensure_running(cp)
    yield cp
    _ensure_running(cp)


def _ensure_running(cp: ControlPlane) -> None:
    running = cp.running()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        if not running.get(name):
            cp.stop(name)  # forget a dead pid
            cp.start(name)
            if name == "kube-apiserver":
                cp.wait_ready(120)


@pytest.fixture
def fault_ns(fcp: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"f-{request.node.name.lower().replace('_', '-')[5:30].strip('-')}-{random.randrange(16**6):06x}"
    fcp.request("/api/v1/namespaces", "POST", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    with contextlib.suppress(Exception):
        fcp.request(f"/api/v1/namespaces/{name}", "DELETE")


# ---------------------------------------------------------------------------------------------- helpers
def _etcd(cp: ControlPlane, path: str, body: JsonObj) -> JsonObj:
    req = urllib.request.Request(cp.etcd_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: JsonObj = json.loads(resp.read())
    return out


def etcd_revision(cp: ControlPlane) -> int:
    """etcd's current revision, from a range request's response header (etcd's v3 JSON gateway)."""
    return int(_etcd(cp, "/v3/kv/range", {"key": base64.b64encode(b"\0").decode()})["header"]["revision"])


def compact_etcd(cp: ControlPlane) -> int:
    """Compacts etcd's history up to its current revision (physically); returns that revision."""
    revision = etcd_revision(cp)
    _etcd(cp, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
    return revision


def raw_request(cp: ControlPlane, method: str, path: str, body: JsonObj,
                content_type: str = "application/json") -> tuple[int, JsonObj]:
    """(status, decoded body) of one request with a large body (KubeClient's aiohttp warns about bodies over
    1 MiB, which the suite turns into errors; the controller itself never sends one)."""
    req = urllib.request.Request(cp.server + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, context=cp.ssl_context(), timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def metric(manager: App, name: str, **labels: str) -> float:
    """Sum of every sample ``name`` in the manager's registry whose labels include ``labels``."""
    return sum(s.value for fam in manager.registry.collect() for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def http_get(url: str) -> tuple[int, str] | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=5)
        ) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


def _module(md: Mapping[str, Any]) -> str:
    return str(md["spec"]["template"]["spec"]["module"]["name"])


def _enabled(md: Mapping[str, Any]) -> bool:
    strategy = (md.get("spec") or {}).get("operationStrategy", {}).get("serviceStrategy") or {}
    return strategy.get("enableModuleService") is True and not (md.get("metadata") or {}).get("deletionTimestamp")


async def exact_state_problems(api: Api, ns: str) -> list[str]:
    """Everything that differs from exactly-right: each live, enabled ModuleDeployment (one per module in these
    tests) has its correct Service owned by exactly it and a Ready status for its current spec; no other
    Service exists; no ModuleDeployment owns two Services and no Service lists an owner twice."""
    mds = await api.list_mds(ns)
    wanted = [md for md in mds if _enabled(md)]
    problems = await api.converged_problems(ns, wanted)
    for md in wanted:  # the status describes the current spec, not an older one
        ms = module_service(md)
        strategy = md["spec"]["operationStrategy"]["serviceStrategy"]
        if (ms.get("observedGeneration"), ms.get("port")) != (md["metadata"]["generation"], strategy["port"]):
            problems.append(f"{md['metadata']['name']}: stale status {ms}")
    wanted_names = {f"{_module(md)}-service" for md in wanted}
    owned_by: Counter[str] = Counter()
    for svc in await api.list_svcs(ns):
        meta = svc["metadata"]
        uids = [r.get("uid") for r in meta.get("ownerReferences") or ()]
        owned_by.update(str(u) for u in uids)
        if len(uids) != len(set(uids)):
            problems.append(f"Service {meta['name']} lists an owner twice: {uids}")
        if meta["name"] not in wanted_names:
            managed = (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
            problems.append(f"unwanted Service {meta['name']} (managed: {managed}, owners {uids})")
    problems += [f"{uid} owns {n} Services" for uid, n in owned_by.items() if n > 1]
    return problems


async def wait_exact_state(api: Api, ns: str, *, timeout: float) -> None:
    last: list[str] = []

    async def done() -> bool:
        nonlocal last
        last = await exact_state_problems(api, ns)
        return not last

    try:
        await wait_for(done, timeout=timeout, what="the exactly-right final state", interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(last)} problems, e.g. {last[:5]}") from None


async def restart_apiserver(cp: ControlPlane, *, attempts: int = 4, ready_within: float = 25.0) -> int:
    """Starts kube-apiserver and waits until it is ready, restarting it as a supervisor (kubelet) would if it
    exits or is not ready in time; returns the number of starts. kube-apiserver's start-up check of Service
    IP/node-port allocations can hit a conflict when Services are written meanwhile; it retries only after
    3 minutes but fails start-up after 1, so a wedged start is cut short here instead of waiting for that."""
    for attempt in range(1, attempts + 1):
        cp.start("kube-apiserver")
        try:
            await anyio.to_thread.run_sync(cp.wait_ready, ready_within)
        except (TimeoutError, RuntimeError) as exc:
            print(f"kube-apiserver start {attempt} failed, restarting: {str(exc)[:200]}")
            await anyio.to_thread.run_sync(lambda: cp.stop("kube-apiserver", sig=signal.SIGKILL))
            continue
        return attempt
    raise AssertionError(f"kube-apiserver did not become ready in {attempts} starts")


async def wait_fault_window(seconds: float) -> None:
    """A deliberate fault window: the fault stays on for ``seconds`` while the controller copes with it."""
    await anyio.sleep(seconds)


# ---------------------------------------------------------------------------------------------- (c) 429 / 500
async def fault_window(proxy: FaultProxy, status: int, at_least: int, seconds: float, since: float) -> float:
    """Waits until the proxy has injected ``at_least`` responses of ``status`` (the fault has met the
    controller), keeps the fault on for ``seconds`` more, then resumes. Returns an upper bound of how long
    the controller was exposed: from ``since`` (the fault was switched on) to the last injection."""
    async def met() -> bool:
        return proxy.stats.injected[status] >= at_least

    await wait_for(met, timeout=30, what=f"{at_least} injected {status}s", interval=0.01)
    await wait_fault_window(seconds)
    proxy.resume()
    return proxy.stats.last_injected_at[status] - since


class TestThrottlingAndServerErrors:
    """(c) The proxy answers writes with 429 (Retry-After: 1 s) and then with 500 for a few seconds each: the
    controller retries with backoff (Retry-After honoured, attempts per key bounded: no hot loop),
    converges, and its metrics count every injected failure."""

    WINDOW = 4.0
    RETRY_AFTER = 1

    async def test_429_then_500_on_writes(self, fcp: ControlPlane, fault_ns: str, tmp_path: Path) -> None:
        ns = fault_ns
        async with FaultProxy.for_controlplane(fcp) as proxy, api_client(str(fcp.kubeconfig)) as api:
            kubeconfig = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
            async with running_controller(controller_config(kubeconfig, ns, log_level="info")) as manager:
                # Phase 1: 429 on every write while 10 ModuleDeployments appear.
                since = time.monotonic()
                proxy.fail_with(429, duration=120, methods=WRITES, retry_after=self.RETRY_AFTER)
                first = await api.create_mds(ns, [module_deployment(f"c{i}", f"c{i}") for i in range(10)])
                lasted = await fault_window(proxy, 429, 10, self.WINDOW, since)
                throttled = proxy.stats.injected[429]
                # Each key retried, but no sooner than Retry-After: per key one attempt per second, plus
                # the few that watch events trigger at once (a rate-limited retry never is).
                assert 20 <= throttled <= 10 * (lasted / self.RETRY_AFTER + 3), (throttled, lasted)
                await wait_exact_state(api, ns, timeout=30)

                # Phase 2: 429 on status writes only, while every port changes (Service patches pass).
                before, since = proxy.stats.injected[429], time.monotonic()
                proxy.fail_with(429, duration=120, methods=("PATCH",), path_contains="/status",
                                retry_after=self.RETRY_AFTER)
                for md in first:
                    await api.patch_md(ns, md["metadata"]["name"], service_strategy(port=8081))
                lasted = await fault_window(proxy, 429, before + 10, self.WINDOW, since)
                throttled = proxy.stats.injected[429] - before
                # (5 ms exponential backoff instead of Retry-After would make it ~11 per key in 4 s)
                assert 20 <= throttled <= 10 * (lasted / self.RETRY_AFTER + 3), (throttled, lasted)
                await wait_exact_state(api, ns, timeout=30)

                # Phase 3: 500 on every write while ports change, some go and new ones come.
                retries_before, since = metric(manager, "workqueue_retries_total"), time.monotonic()
                proxy.fail_with(500, duration=120, methods=WRITES)
                for md in first[:5]:
                    await api.patch_md(ns, md["metadata"]["name"], service_strategy(port=9000))
                for md in first[5:8]:
                    await api.delete_md(ns, md["metadata"]["name"])
                await api.create_mds(ns, [module_deployment(f"c{i}", f"c{i}") for i in range(10, 20)])
                lasted = await fault_window(proxy, 500, 15, self.WINDOW, since)
                failed = proxy.stats.injected_by_resource[("services", 500)]
                # Per-key exponential backoff from 5 ms: about log2(window / 5 ms) + 1 attempts per key
                # (18 keys; the garbage collector may delete the 3 orphaned Services first).
                attempts_per_key = math.log2(lasted / 0.005) + 2
                assert 2 * 15 <= failed <= 18 * attempts_per_key, (failed, lasted, proxy.stats.injected_by_resource)
                # A refused Service write is also shown on the status (its own lane and backoff, fed once
                # per new error) and as a Warning Event (at most one per failed attempt, coalesced): each
                # of those is bounded like the Service writes, never a loop of its own.
                for resource in ("moduledeployments/status", "events"):
                    extra = proxy.stats.injected_by_resource[(resource, 500)]
                    assert extra <= 18 * attempts_per_key, (resource, extra, lasted)
                await wait_exact_state(api, ns, timeout=40)
                await wait_quiet(manager, timeout=30)

                print(f"proxy: {proxy.stats}; workqueue retries {metric(manager, 'workqueue_retries_total'):g}")
                assert metric(manager, "workqueue_retries_total") > retries_before > 0
                # Every injected failure reached the controller's request metrics, labelled with its code.
                assert metric(manager, "rest_client_requests_total", code="429") == proxy.stats.injected[429]
                assert metric(manager, "rest_client_requests_total", code="500") == proxy.stats.injected[500]
                assert metric(manager, "controller_runtime_reconcile_errors_total") > 0
                for port, mds in ((9000, first[:5]), (8081, first[8:])):
                    for md in mds:
                        svc = await api.get_svc(ns, f"{_module(md)}-service")
                        assert svc is not None
                        assert svc["spec"]["ports"][0]["port"] == port


# ---------------------------------------------------------------------------------------------- (d) stalled watch
class TestStalledWatch:
    """(d) The proxy keeps watches open without a byte of data: each informer detects the stall within its
    inactivity timeout and re-watches; after two silent watches in a row it relists (liveness
    follows controller-runtime), so changes made while the watches are stuck still converge and /healthz
    stays 200 (the process is not wedged; a restart could not help). After the proxy resumes, the watches
    carry the changes again."""

    IDLE = 2.0

    async def test_stall_detected_restarted_and_reported(self, fcp: ControlPlane, fault_ns: str,
                                                        tmp_path: Path) -> None:
        ns, idle = fault_ns, self.IDLE
        probe = f"127.0.0.1:{free_port()}"
        healthz = f"http://{probe}/healthz?verbose"
        async with FaultProxy.for_controlplane(fcp) as proxy, api_client(str(fcp.kubeconfig)) as api:
            kubeconfig = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
            config = controller_config(kubeconfig, ns, log_level="info", watch_idle_timeout=idle,
                                       health_probe_bind_address=probe)
            async with running_controller(config) as manager:
                first = await api.create_md(ns, module_deployment("d1", "d1"))
                await api.wait_converged(ns, [first], timeout=30)

                def counts(name: str, **labels: str) -> dict[str, float]:
                    return {r: metric(manager, name, resource=r, **labels) for r in INFORMER_RESOURCES}

                def stalls() -> dict[str, float]:
                    return counts("informer_watch_errors_total", kind="stall")

                async def stalled_since(before: dict[str, float]) -> bool:
                    now = stalls()
                    return all(now[r] > before[r] for r in INFORMER_RESOURCES)

                # Phase 1: headers, then silence, on every watch (also the ones already streaming).
                before, held_before = stalls(), proxy.stats.stalled_watches
                relists_before = counts("informer_relists_total", reason="stall")
                started = time.monotonic()
                proxy.stall_watches(existing=True)
                await wait_for(lambda: stalled_since(before), timeout=idle + 10, what="every informer to see a stall")
                detected_after = time.monotonic() - started
                assert detected_after <= idle + 3, f"stall detected only after {detected_after:.1f}s"

                async def rewatched() -> bool:  # each informer opened a new watch, which the proxy holds
                    return proxy.stats.stalled_watches >= held_before + len(INFORMER_RESOURCES)

                await wait_for(rewatched, timeout=idle + 10, what="the informers to re-watch")

                # Changes made while the watches are stuck reach the controller through the relist that
                # follows the second silent watch (LISTs pass the proxy; only watches are held).
                second = await api.create_md(ns, module_deployment("d2", "d2"))
                await api.create_pod(ns, "d2-pod", {"module.koupleless.alipay.com/d2": "true"})

                async def relisted() -> bool:
                    now = counts("informer_relists_total", reason="stall")
                    return all(now[r] > relists_before[r] for r in INFORMER_RESOURCES)

                await wait_for(relisted, timeout=4 * idle + 20, what="every informer to relist after two stalls")
                await api.wait_converged(ns, [first, second], timeout=4 * idle + 30)
                # Liveness is not tied to the API server: 200 for longer than the old 2 x idle + 5 s limit.
                window_end = started + 2 * idle + 5 + 5
                while time.monotonic() < window_end:
                    got = await http_get(healthz)
                    assert got is not None
                    assert got[0] == 200, got
                    await anyio.sleep(0.2)
                assert proxy.stats.stalled_watches > held_before + len(INFORMER_RESOURCES), \
                    "the informers stopped re-watching while stuck"

                proxy.resume()

                async def healthy() -> bool:
                    got = await http_get(healthz)
                    return got is not None and got[0] == 200

                # The held changes arrive on every watch (a new MD, its Service, a Pod): all fresh again.
                await wait_for(healthy, timeout=15, what="/healthz 200 after the resume", interval=0.1)
                await api.wait_converged(ns, [first, second], timeout=30)
                await api.wait_reason(ns, "d2", "ServiceReady", check=lambda ms: ms.get("pods") == 1)

                # Phase 2: a watch whose response headers never come is a stall too.
                before = stalls()
                proxy.stall_watches(existing=True, send_headers=False)
                await wait_for(lambda: stalled_since(before), timeout=idle + 10,
                               what="every informer to see a header-less stall")
                proxy.resume()
                third = await api.create_md(ns, module_deployment("d3", "d3"))
                await api.wait_converged(ns, [first, second, third], timeout=30)


# ---------------------------------------------------------------------------------------------- (b) 410 -> relist
class TestCompactedWatch:
    """(b) While the controller's watches are down (the proxy cuts them and holds every re-watch), a
    ModuleDeployment is deleted, another changes, and etcd is compacted past the controller's
    resourceVersion. When the watches come back, the ModuleDeployment watch gets 410 Gone, the informer
    relists, and the controller itself deletes the orphaned Service (the garbage collector is stopped, so
    nothing else could) and updates the changed one."""

    async def test_compaction_while_watch_down_relists(self, fcp: ControlPlane, fault_ns: str,
                                                      tmp_path: Path) -> None:
        ns = fault_ns
        fcp.stop("kube-controller-manager")  # no garbage collector: only our relist can remove the Service
        try:
            async with FaultProxy.for_controlplane(fcp) as proxy, api_client(str(fcp.kubeconfig)) as api:
                kubeconfig = proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig")
                config = controller_config(kubeconfig, ns, log_level="info", watch_idle_timeout=3.0)
                async with running_controller(config) as manager:
                    mds = await api.create_mds(ns, [module_deployment(f"b{i}", f"b{i}") for i in range(5)])
                    await api.wait_converged(ns, mds, timeout=30)
                    gone = metric(manager, "informer_watch_gone_total", resource="moduledeployments")
                    relists = metric(manager, "informer_relists_total", resource="moduledeployments",
                                     reason="gone")

                    proxy.stall_watches(existing=True)
                    assert proxy.stats.cut_watches >= 1, proxy.stats  # (one may be between two watches)
                    await api.delete_md(ns, "b0")
                    await api.patch_md(ns, "b1", service_strategy(port=9100))
                    for i in range(20):  # more history for the compaction to drop
                        await api.client.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body={
                            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"churn-{i}"}})
                        await api.client.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/churn-{i}")
                    held = proxy.stats.stalled_watches
                    compacted_at = compact_etcd(fcp)
                    md_informer = next(i for i in manager.informers if i.resource.plural == "moduledeployments")
                    assert int(md_informer.resource_version) < compacted_at
                    assert await api.get_svc(ns, "b0-service") is not None, "the watch was not down"

                    # The controller has tried to re-watch during the outage, and is now let through.
                    async def rewatched() -> bool:
                        return proxy.stats.stalled_watches > held

                    await wait_for(rewatched, timeout=15, what="a re-watch during the outage")
                    proxy.resume()

                    async def relisted() -> bool:
                        return (metric(manager, "informer_watch_gone_total", resource="moduledeployments") > gone
                                and metric(manager, "informer_relists_total", resource="moduledeployments",
                                           reason="gone") > relists)

                    await wait_for(relisted, timeout=30, what="410 Gone and a relist of ModuleDeployments")
                    await api.wait_svc_gone(ns, "b0-service", timeout=30)
                    await wait_exact_state(api, ns, timeout=30)
                    svc = await api.get_svc(ns, "b1-service")
                    assert svc is not None
                    assert svc["spec"]["ports"][0]["port"] == 9100
                    assert metric(manager, "rest_client_requests_total", method="DELETE", code="200") >= 1
        finally:
            fcp.start("kube-controller-manager")


# ---------------------------------------------------------------------------------------------- (e) bad input
def crd_without_cel() -> str:
    """The ModuleDeployment CRD with every CEL rule removed, the module name's length limits dropped and
    unknown fields kept under serviceStrategy: what a cluster with an older or hand-edited CRD admits."""
    crd = yaml.safe_load(CRD.read_text())

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            node.pop("x-kubernetes-validations", None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(crd)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    name = spec["template"]["properties"]["spec"]["properties"]["module"]["properties"]["name"]
    name.pop("minLength", None)
    name.pop("maxLength", None)
    spec["operationStrategy"]["properties"]["serviceStrategy"]["x-kubernetes-preserve-unknown-fields"] = True
    assert "x-kubernetes-validations" not in json.dumps(crd)
    return json.dumps(crd)


class TestBadInput:
    """(e) Under a CRD without the CEL rules, ModuleDeployments that cannot be served get past admission:
    each gets status reason InvalidSpec and a Warning Event, the controller keeps running, and the valid
    ModuleDeployments beside them (one sharing a module with a bad one) get their Services. Objects at the
    annotation size limit, a 1 MiB status written by another controller, and unknown fields are handled."""

    MIB = 1024 * 1024
    MAX_ANNOTATIONS = 256 * 1024 - 1024  # the API server's limit for all annotations of an object, minus slack

    async def test_invalid_specs_big_objects_unknown_fields(self, fcp: ControlPlane, fault_ns: str) -> None:
        ns = fault_ns
        _apply_crd(fcp, crd_without_cel())
        try:
            async with api_client(str(fcp.kubeconfig)) as api:
                await self._run(api, ns, fcp)
        finally:
            _apply_crd(fcp)

    async def test_typo_keeps_the_live_service(self, fcp: ControlPlane, fault_ns: str) -> None:
        """a served ModuleDeployment gets a typo (``targetPort: http_port``): its Service
        stays exactly as it was (not deleted, not changed), status says InvalidSpec; the fix converges."""
        ns = fault_ns
        _apply_crd(fcp, crd_without_cel())
        try:
            async with api_client(str(fcp.kubeconfig)) as api, \
                    running_controller(controller_config(str(fcp.kubeconfig), ns, log_level="info")) as manager:
                md = await api.create_md(ns, module_deployment("e-typo", "e-typo", port=8080, target_port=8080))
                await api.wait_converged(ns, [md], timeout=30)
                before = await api.get_svc(ns, "e-typo-service")
                assert before is not None

                await api.patch_md(ns, "e-typo", service_strategy(targetPort="http_port"))
                ms = await api.wait_reason(ns, "e-typo", "InvalidSpec", timeout=30)
                assert "http_port" in ready_condition(ms)["message"]
                await api.wait_event(ns, reason="InvalidSpec", involved="e-typo", type_="Warning", timeout=30)
                await wait_quiet(manager)
                after = await api.get_svc(ns, "e-typo-service")
                assert after is not None, "the invalid spec deleted the live Service"
                assert after["metadata"]["uid"] == before["metadata"]["uid"]
                assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], \
                    "the Service was changed while the spec was invalid"

                await api.patch_md(ns, "e-typo", service_strategy(targetPort=9090))
                svc = await api.wait_svc(ns, "e-typo-service", lambda s: not service_problems(
                    s, module="e-typo", port=8080, target_port=9090, owners=[md]))
                assert svc["metadata"]["uid"] == before["metadata"]["uid"]
                await api.wait_reason(ns, "e-typo", "ServiceReady", timeout=30)
                assert metric(manager, "rest_client_requests_total", method="DELETE", code="200") == 0
        finally:
            _apply_crd(fcp)

    async def _run(self, api: Api, ns: str, cp: ControlPlane) -> None:
        kubeconfig = str(cp.kubeconfig)
        bad = {
            "e-long": module_deployment("e-long", "m" + "x" * 69),  # "<name>-service" > 63 characters
            "e-chars": module_deployment("e-chars", "Bad_Module"),
            "e-empty": module_deployment("e-empty", ""),
            "e-noport": module_deployment("e-noport", "e-noport", port=None),
            "e-port0": module_deployment("e-port0", "e-port0", port=0),
            "e-shared-bad": module_deployment("e-shared-bad", "e-shared", port=0),
        }
        async with running_controller(controller_config(kubeconfig, ns, log_level="info")) as manager:
            for md in bad.values():
                await api.create_md(ns, md)
            shared_ok = await api.create_md(ns, module_deployment("e-shared-ok", "e-shared", port=8080))
            ok = await api.create_md(ns, module_deployment("e-ok", "e-ok"))

            unknown_md = module_deployment("e-unknown", "e-unknown")
            unknown_md["spec"]["bogusTopLevel"] = {"x": 1}  # pruned by the structural schema
            unknown_md["spec"]["operationStrategy"]["serviceStrategy"]["sessionAffinity"] = "ClientIP"  # kept
            unknown = await api.create_md(ns, unknown_md)
            assert "bogusTopLevel" not in unknown["spec"]
            assert unknown["spec"]["operationStrategy"]["serviceStrategy"]["sessionAffinity"] == "ClientIP"

            # 1 MiB of annotations cannot exist: the API server caps an object's annotations at 256 KiB...
            huge = module_deployment("e-huge-ann", "e-huge-ann")
            huge["metadata"]["annotations"] = {"example.com/blob": "a" * self.MIB}
            code, answer = await anyio.to_thread.run_sync(
                lambda: raw_request(cp, "POST", f"{MDS_PATH.format(ns=ns)}", huge))
            assert code == 422, answer
            assert "annotations: Too long" in answer["message"], answer
            # ...so the biggest annotations an object can carry, on a ModuleDeployment and on its Pod...
            big_ann = module_deployment("e-big-ann", "e-big-ann")
            big_ann["metadata"]["annotations"] = {"example.com/blob": "a" * self.MAX_ANNOTATIONS}
            big = await api.create_md(ns, big_ann)
            await api.client.request("POST", f"/api/v1/namespaces/{ns}/pods", body={
                "apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": "e-big-pod", "labels": {"module.koupleless.alipay.com/e-big-ann": "true"},
                    "annotations": {"example.com/blob": "b" * self.MAX_ANNOTATIONS}},
                "spec": {"containers": [{"name": "base", "image": "example.invalid/base:1"}]}})
            # ...and a 1 MiB status another controller owns (one watch event of more than 1 MiB).
            big_status = await api.create_md(ns, module_deployment("e-big-status", "e-big-status"))
            code, answer = await anyio.to_thread.run_sync(lambda: raw_request(
                cp, "PATCH", f"{MDS_PATH.format(ns=ns)}/e-big-status/status",
                {"status": {"releaseStatus": {"blob": "c" * self.MIB}}}, "application/merge-patch+json"))
            assert code == 200, answer

            for name in bad:
                ms = await api.wait_reason(ns, name, "InvalidSpec", timeout=30)
                assert ready_condition(ms)["status"] == "False"
                assert ready_condition(ms)["message"], ms
                await api.wait_event(ns, reason="InvalidSpec", involved=name, type_="Warning", timeout=30)
            messages = {name: ready_condition(await api.module_service(ns, name))["message"] for name in bad}
            assert "port is required" in messages["e-noport"]
            assert "port 0 is out of range" in messages["e-port0"]
            assert "does not make a valid Service name" in messages["e-long"]

            valid = [ok, unknown, big, big_status]
            await api.wait_converged(ns, valid, timeout=30)
            shared = await api.wait_svc(ns, "e-shared-service")
            assert not service_problems(shared, module="e-shared", port=8080, owners=[shared_ok]), shared
            await api.wait_reason(ns, "e-big-ann", "ServiceReady", check=lambda ms: ms.get("pods") == 1)
            svc_names = {s["metadata"]["name"] for s in await api.list_svcs(ns)}
            assert svc_names == {f"{_module(md)}-service" for md in valid} | {"e-shared-service"}, svc_names
            status = (await api.get_md(ns, "e-big-status") or {}).get("status") or {}
            assert len(status["releaseStatus"]["blob"]) == self.MIB, "the foreign status was clobbered"

            # Still alive and well: no reconcile failed or panicked, and new work is served.
            assert metric(manager, "controller_runtime_reconcile_panics_total") == 0
            assert metric(manager, "controller_runtime_reconcile_errors_total") == 0
            late = await api.create_md(ns, module_deployment("e-late", "e-late"))
            await api.wait_converged(ns, [late], timeout=30)




# ---------------------------------------------------------------------------------------------- (a) API server kill
class TestApiServerKilled:
    """(a) kube-apiserver is SIGKILLed and restarted twice while 200 ModuleDeployments are created and then
    churned (ports patched, some deleted, more created): the controller converges to exactly the right
    Services, none lost, none unwanted, none duplicated."""

    OUTAGE = 2.0  # seconds the API server stays dead each time, on top of its restart time

    async def test_kill_and_restart_during_churn(self, fcp: ControlPlane, fault_ns: str, seed: int) -> None:
        ns = fault_ns
        rng = random.Random(seed)
        names = [f"a{i}" for i in range(200)]
        ops: list[tuple[str, str, int]] = [("create", n, 8080) for n in names]
        tail = [("patch", n, 9000 + i) for i, n in enumerate(rng.sample(names[:100], 60))]
        tail += [("delete", n, 0) for n in rng.sample(names[100:], 40)]
        tail += [("create", f"n{i}", 8080) for i in range(20)]
        rng.shuffle(tail)
        ops += tail
        kill_after = (rng.randrange(60, 140), rng.randrange(220, 280))  # completed ops before each kill
        completed = 0
        kills: list[float] = []
        starts: list[int] = []  # kube-apiserver starts needed after each kill

        async with api_client(str(fcp.kubeconfig)) as api:
            config = controller_config(str(fcp.kubeconfig), ns, log_level="info")
            async with running_controller(config) as manager:

                async def run_op(op: tuple[str, str, int]) -> None:
                    nonlocal completed
                    verb, name, port = op
                    deadline = time.monotonic() + 120
                    while True:
                        try:
                            if verb == "create":
                                await api.create_md(ns, module_deployment(name, name, port=port))
                            elif verb == "patch":
                                await api.patch_md(ns, name, service_strategy(port=port))
                            else:
                                await api.client.request("DELETE", MDS_PATH.format(ns=ns) + f"/{name}")
                            break
                        except AlreadyExists:
                            break  # the create landed before the connection died
                        except NotFound:
                            if verb == "delete" and await api.get_md(ns, name) is None:
                                break  # the delete landed before the connection died
                            await anyio.sleep(0.2)  # the restarted server has not served the CRD yet
                        except (TransportError, ServerError, TooManyRequests):
                            await anyio.sleep(0.2)  # the API server is down or still starting
                        if time.monotonic() > deadline:
                            raise AssertionError(f"{verb} {name} did not succeed within 120s")
                    completed += 1

                async def churn() -> None:
                    limiter = anyio.CapacityLimiter(10)

                    async def one(op: tuple[str, str, int]) -> None:
                        async with limiter:
                            await run_op(op)

                    async with anyio.create_task_group() as tg:
                        for op in ops:
                            tg.start_soon(one, op)

                async def killer() -> None:
                    for threshold in kill_after:
                        async def reached(threshold: int = threshold) -> bool:
                            return completed >= threshold

                        await wait_for(reached, timeout=120, what=f"{threshold} churn operations")
                        await anyio.to_thread.run_sync(lambda: fcp.stop("kube-apiserver", sig=signal.SIGKILL))
                        kills.append(time.monotonic())
                        await wait_fault_window(self.OUTAGE)
                        starts.append(await restart_apiserver(fcp))

                async with anyio.create_task_group() as tg:
                    tg.start_soon(churn)
                    tg.start_soon(killer)

                assert len(kills) == 2
                await wait_exact_state(api, ns, timeout=120)
                await wait_quiet(manager, timeout=60)
                live = await api.list_mds(ns)
                assert len(live) == 200 - 40 + 20
                transport = sum(metric(manager, "informer_watch_errors_total", resource=r, kind="transport")
                                for r in INFORMER_RESOURCES)
                assert transport > 0, "the watches never noticed the API server dying"
                assert metric(manager, "controller_runtime_reconcile_panics_total") == 0
                relists = {r: metric(manager, "informer_relists_total", resource=r) for r in INFORMER_RESOURCES}
                print(f"kills after {kill_after} operations (apiserver starts {starts}); watch transport errors "
                      f"{transport:g}; "
                      f"relists {relists}; reconcile errors "
                      f"{metric(manager, 'controller_runtime_reconcile_errors_total'):g}")


# ---------------------------------------------------------------------------------------------- (f) leader churn
@dataclass
class Tenure:
    """One leadership term of one process, from its logs: ``lease_acquired`` until it stopped writing
    (``workers_stopped``, ``lease_lost`` or ``lease_released``, whichever came first) or died."""

    process: str
    identity: str
    start: float
    end: float
    ended_by: str


@dataclass
class Write:
    process: str
    at: float  # the log line: after the write returned
    began: float  # the reconcile began (at - duration)
    what: str


def tenures_and_writes(proc: ControllerProcess, died_at: float | None) -> tuple[list[Tenure], list[Write]]:
    tenures: list[Tenure] = []
    writes: list[Write] = []
    current: Tenure | None = None
    for rec in proc.records():
        event, at = rec.get("event"), log_time(rec)
        if event == "lease_acquired":
            current = Tenure(proc.name, str(rec.get("identity")), at, float("inf"), "alive")
            tenures.append(current)
        elif event in ("workers_stopped", "lease_lost", "lease_released") and current is not None:
            current.end, current.ended_by, current = at, str(event), None
        if rec.get("actions"):
            duration = float(rec.get("duration_ms") or 0.0) / 1000
            writes.append(Write(proc.name, at, at - duration, f"{event} {rec.get('key')} {rec.get('actions')}"))
    if current is not None and died_at is not None:
        current.end, current.ended_by = died_at, "died"
    return tenures, writes


class TestLeaderChurn:
    """(f) Three replicas with short leases; a seeded random schedule SIGKILLs (or now and then SIGTERMs) the
    leader and starts a replacement, while ModuleDeployments are created, re-ported and deleted. The final
    state is exactly right, and the leadership history from the processes' logs (cross-checked with the
    Lease) shows that no two holders' terms overlap and no process wrote outside its own term."""

    DURATION = 60.0  # seconds of faults and churn
    LEASE = LeaseSettings(lease_duration=4.0, renew_deadline=3.0, retry_period=1.0)

    async def test_random_leader_kills_during_churn(self, fcp: ControlPlane, fault_ns: str, tmp_path: Path,
                                                    seed: int) -> None:
        ns, kubeconfig = fault_ns, str(fcp.kubeconfig)
        faults, changes = random.Random(seed), random.Random(seed + 1)
        died_at: dict[str, float] = {}
        kills: list[str] = []
        holders: list[str] = []  # Lease holders in the order the API server showed them
        stop = anyio.Event()

        async with api_client(kubeconfig) as api, controller_processes(
            kubeconfig, ns, tmp_path, args=[*self.LEASE.args(), "--shutdown-timeout", "5s"]
        ) as group:

            async def churn() -> None:
                live: list[str] = []
                n = 0
                while not stop.is_set():
                    roll = changes.random()
                    if roll < 0.5 or len(live) < 5:
                        name = f"f{n}"
                        n += 1
                        await api.create_md(ns, module_deployment(name, name, port=changes.randrange(1000, 9000)))
                        live.append(name)
                    elif roll < 0.8:
                        port = changes.randrange(1000, 9000)
                        await api.patch_md(ns, changes.choice(live), service_strategy(port=port))
                    else:
                        name = live.pop(changes.randrange(len(live)))
                        await api.delete_md(ns, name)
                    await anyio.sleep(changes.uniform(0.05, 0.3))  # pacing of the churn, not synchronisation

            leases = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
            listed = await api.client.request("GET", leases)

            def on_lease(event: JsonObj) -> None:
                holder = ((event.get("object") or {}).get("spec") or {}).get("holderIdentity")
                if event.get("type") in ("ADDED", "MODIFIED") and holder and (not holders or holders[-1] != holder):
                    holders.append(str(holder))

            async def watch_lease() -> None:  # every version of the Lease, in order: the server's history
                await api.client.watch(leases, params={
                    "resourceVersion": listed["metadata"]["resourceVersion"], "timeoutSeconds": 600,
                    "fieldSelector": f"metadata.name={LEASE_NAME}"}, on_event=on_lease, idle_timeout=600)
                raise AssertionError("the Lease watch ended early")

            async def fault_schedule() -> None:
                deadline = time.monotonic() + self.DURATION
                while time.monotonic() < deadline:
                    await wait_fault_window(faults.uniform(0.5, 3.0))  # random gap between faults
                    leader = await group.leader(api, timeout=30)
                    sig = signal.SIGKILL if faults.random() < 0.75 else signal.SIGTERM
                    leader.send(sig)
                    await leader.wait_exit(timeout=15)
                    died_at[leader.name] = time.time()
                    kills.append(f"{leader.name}:{signal.Signals(sig).name}")
                    for _ in range(3 - len(group.alive)):
                        group.start()  # the Deployment's replacement
                stop.set()

            await group.start_many(3)
            async with anyio.create_task_group() as watcher:
                watcher.start_soon(watch_lease)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(churn)
                    tg.start_soon(fault_schedule)

                await wait_exact_state(api, ns, timeout=90)
                final_leader = await group.leader(api, timeout=30)
                lease = await group.lease(api)
                assert lease is not None
                lease_spec = lease["spec"]
                watcher.cancel_scope.cancel()

            tenures: list[Tenure] = []
            writes: list[Write] = []
            for proc in group.processes:
                t, w = tenures_and_writes(proc, died_at.get(proc.name))
                tenures += t
                writes += w
            print(f"kills: {kills}; {len(tenures)} terms, {len(writes)} logged writes; Lease holders seen "
                  f"{len(holders)}; final leader {final_leader.name}")

        assert len(kills) >= 3, f"too few leader faults in {self.DURATION}s: {kills}"
        # Killed (-9), drained on SIGTERM (0), still running (None), or exited 1 after logging a lost lease.
        crashed = [(p.name, p.returncode) for p in group.processes if p.returncode not in (0, -signal.SIGKILL, None)
                   and not (p.returncode == 1 and p.events("lease_lost"))]
        assert not crashed, crashed
        tenures.sort(key=lambda t: t.start)
        for earlier, later in itertools.pairwise(tenures):
            assert earlier.end <= later.start, f"overlapping leadership: {earlier} and {later}"
        for write in writes:
            own = [t for t in tenures if t.process == write.process and t.start <= write.began and write.at <= t.end]
            assert own, f"{write.process} wrote outside its leadership: {write}"
        acquisitions = [t.identity for t in tenures]
        assert lease_spec["leaseTransitions"] == len(acquisitions) - 1, (lease_spec, acquisitions)
        assert lease_spec["holderIdentity"] == acquisitions[-1] == final_leader.identity
        # The Lease's own history names exactly the logged terms, in the same order.
        assert holders == acquisitions, (holders, acquisitions)
        assert writes, "no writes were logged"
