"""The dashboard and the alerts, proven in a real Prometheus.

Controller processes run with ``--metrics-secure``; a Prometheus on loopback (tests/e2e/prometheus.py)
scrapes them every second with the bound token of a ServiceAccount that holds the install's
``module-service-controller-metrics-reader`` ClusterRole (manifests/rbac/metrics_reader_role.yaml), and
evaluates the alert rules every second. The job and the ``namespace``/``pod`` target labels are what the
kustomize install's ServiceMonitor produces, so the rules and the dashboard run with their default
selectors, unchanged.

- Dashboard: a workload runs (ModuleDeployments created, changed, deleted; module Pods, ready and not),
  then every PromQL expression of every panel of observability/grafana-dashboard.json, with Grafana's
  variables filled in as a user of the default install would see them, returns at least one series with a
  finite value over the test's time range (what a panel draws), and the variables list what they should.
- Alerts: faults are injected one after another (tests/faultproxy.py sits between the controllers and
  the API server) and each of the eight alerts goes pending or firing in ``/api/v1/alerts``; none of them
  is active before the first fault; WatchSilent and NoLeader also resolve once their fault is lifted.
  The rules are observability/alerts.yaml rendered by observability/render_prometheusrule.py with one
  test value: ``--watch-silent-seconds 15`` instead of 300 (a test cannot wait 5 minutes for a silent
  watch). Every other threshold, window and ``for:`` is
  the shipped one: "pending" is the state an alert is in from its first true evaluation, so it proves the
  expression catches the fault without waiting out ``for:``.

A heartbeat touches one ModuleDeployment, one module Service and one Pod every 2 s, so every
informer sees events all the time; without it a quiet watch would trip the 15 s silence threshold.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from controller.runtime.kube.errors import AlreadyExists, NotFound
from tests.controlplane import ControlPlane
from tests.e2e.common import Wanted, wait_services_exact
from tests.e2e.procs import (
    SHORT_LEASE,
    ControllerGroup,
    ControllerProcess,
    controller_processes,
    create_service_account,
    request_token,
    unique,
)
from tests.e2e.prometheus import PROMETHEUS, Alert, Prometheus, Target, finite_series, prometheus_server
from tests.faultproxy import FaultProxy
from tests.harness import Api, api_client, module_deployment, wait_for

# make test sets MSC_REQUIRE_PROMETHEUS: there a missing server is a failure (in Prometheus()), not a skip.
pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.skipif(PROMETHEUS is None and not os.environ.get("MSC_REQUIRE_PROMETHEUS"),
                       reason="prometheus is not installed: bash .ci/install-prometheus.sh"),
]

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "observability" / "render_prometheusrule.py"
DASHBOARD = ROOT / "observability" / "grafana-dashboard.json"
METRICS_READER = ROOT / "manifests" / "rbac" / "metrics_reader_role.yaml"
RBAC = "/apis/rbac.authorization.k8s.io/v1"

# The defaults of the render (what the kustomize install's ServiceMonitor produces).
JOB = "module-service-controller-metrics"
INSTALL_NAMESPACE = "module-service-system"
WATCH_SILENT_SECONDS = 15
RATE_INTERVAL = "15s"  # Grafana's $__rate_interval for a 1 s scrape, with room for a slow scrape


# ---------------------------------------------------------------------------------------------------- set-up


def render_rules(out: Path) -> Path:
    """observability/alerts.yaml with the test's silence threshold, through the render's CLI."""
    subprocess.run([sys.executable, str(RENDER), "--watch-silent-seconds", str(WATCH_SILENT_SECONDS),
                    "--output-dir", str(out)], check=True)
    return out / "alerts.yaml"


@asynccontextmanager
async def metrics_reader_token(api: Api, namespace: str) -> AsyncIterator[str]:
    """A bound token of a ServiceAccount ``prometheus`` in ``namespace``, bound to the install's
    metrics-reader ClusterRole (created from the manifest when the cluster does not have it)."""
    role = yaml.safe_load(METRICS_READER.read_text())
    created_role = False
    binding = unique("msc-e2e-prometheus")
    try:
        with contextlib.suppress(AlreadyExists):
            await api.client.request("POST", f"{RBAC}/clusterroles", body=role)
            created_role = True
        await create_service_account(api, namespace, "prometheus")
        await api.client.request("POST", f"{RBAC}/clusterrolebindings", body={
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": binding},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": role["metadata"]["name"]},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}]})
        yield await request_token(api, namespace, "prometheus")
    finally:
        names = [("clusterrolebindings", binding)]
        if created_role:
            names.append(("clusterroles", role["metadata"]["name"]))
        for kind, name in names:
            with contextlib.suppress(NotFound):
                await api.client.request("DELETE", f"{RBAC}/{kind}/{name}")


def targets(procs: list[ControllerProcess]) -> list[Target]:
    return [Target(p.name, p.metrics_port) for p in procs if p.alive]


async def start_scraped(group: ControllerGroup, prom: Prometheus, n: int, *extra: str) -> list[ControllerProcess]:
    procs = [await group.start_ready(*extra, secure_metrics=True) for _ in range(n)]
    prom.set_targets(targets(group.processes))
    await prom.wait_up([p.name for p in procs])
    return procs


# ---------------------------------------------------------------------------------------------------- workload


@dataclass
class Workload:
    api: Api
    namespace: str
    wanted: dict[str, Wanted]

    @classmethod
    async def start(cls, api: Api, namespace: str, *, mds: int = 4) -> Workload:
        """``mds`` ModuleDeployments with two module Pods each (one ready), one port change and one
        delete; returns once the Services are exactly right."""
        w = cls(api, namespace, {})
        for i in range(mds):
            md = await api.create_md(namespace, module_deployment(f"md-prom-{i}", f"prom{i}", port=8000 + i))
            w.wanted[f"prom{i}"] = Wanted.of(md, 8000 + i)
            for j in range(2):
                name = f"base-{i}-{j}"
                await api.create_pod(namespace, name, {f"module.koupleless.alipay.com/prom{i}": "true"})
                await api.set_pod_ready(namespace, name, j == 0)
        await wait_services_exact(api, namespace, w.wanted, timeout=60)
        await api.patch_md(namespace, "md-prom-0", {"spec": {"operationStrategy": {"serviceStrategy": {"port": 9000}}}})
        w.wanted["prom0"] = Wanted(9000, "md-prom-0", w.wanted["prom0"].md_uid)
        last = f"prom{mds - 1}"
        await api.delete_md(namespace, f"md-prom-{mds - 1}")
        del w.wanted[last]
        await wait_services_exact(api, namespace, w.wanted, timeout=60)
        return w

    async def heartbeat(self) -> None:
        """Touches one ModuleDeployment, one module Service and one Pod every 2 s (annotations only: the
        controller reconciles, finds nothing to change and writes nothing). Well inside the 15 s silence
        threshold, and few enough successful reconciles not to dilute the error ratio of phase 2."""
        for beat in range(10**9):
            patch = {"metadata": {"annotations": {"e2e.test/heartbeat": str(beat)}}}
            with contextlib.suppress(NotFound):
                await self.api.patch_md(self.namespace, "md-prom-1", patch)
                await self.api.patch_svc(self.namespace, "prom1-service", patch)
                await self.api.patch_pod(self.namespace, "base-1-0", patch)
            await anyio.sleep(2.0)  # the heartbeat's period, not a synchronisation


@asynccontextmanager
async def heartbeat(workload: Workload) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(workload.heartbeat)
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------------- dashboard


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out += _panels(panel.get("panels", []))
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], str(t["expr"])) for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]


def fill_variables(expr: str) -> str:
    """Grafana's variables as a user of the default install sees them: one Prometheus without a cluster
    label (``$cluster`` is All), the install's namespace and job, every pod."""
    values = {"$__rate_interval": RATE_INTERVAL, "$cluster": ".*", "$namespace": INSTALL_NAMESPACE,
              "$job": JOB, "$pod": ".*"}
    for var, value in values.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unfilled variable in {expr!r}"
    return expr


class TestDashboard:
    async def test_every_panel_query_returns_series(self, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
        started = time.time()
        rules = render_rules(tmp_path / "rules")
        async with api_client(kubeconfig) as api, metrics_reader_token(api, namespace) as token, \
                prometheus_server(tmp_path / "prometheus", job=JOB, namespace=INSTALL_NAMESPACE, rules=rules,
                                  token=token) as prom, \
                controller_processes(kubeconfig, namespace, tmp_path / "controllers") as group:
            procs = await start_scraped(group, prom, 2)
            leader = await group.leader(api)
            workload = await Workload.start(api, namespace)
            queries = dashboard_queries()
            assert len(queries) >= 30
            empty: list[str] = []

            async def every_query_has_data() -> bool:
                empty.clear()
                end = time.time()
                for title, expr in queries:
                    if not finite_series(await prom.query_range(fill_variables(expr), started, end)):
                        empty.append(f"{title}: {expr}")
                return not empty

            async with heartbeat(workload):
                try:
                    await wait_for(every_query_has_data, timeout=90, what="data for every panel", interval=1.0)
                except AssertionError:
                    raise AssertionError("panels without data:\n" + "\n".join(empty)) from None

            # The variables list what the panels need: the install's namespace and job, both pods.
            end = time.time()
            variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
            for var in variables:
                if var["type"] != "query":
                    continue
                match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["query"]["query"])
                assert match, var["name"]
                values = await prom.label_values(fill_variables(match.group(1)), match.group(2), started, end)
                want = {"cluster": set(), "namespace": {INSTALL_NAMESPACE}, "job": {JOB},
                        "pod": {p.name for p in procs}}[var["name"]]
                assert values == want, (var["name"], values)
            # The leader stat counts exactly one leader.
            leaders = await prom.query(fill_variables('sum(leader_election_master_status{namespace=~"$namespace", '
                                                      'job=~"$job", name="module-service-controller"})'))
            assert [float(s["value"][1]) for s in leaders] == [1.0]
            assert leader in procs
            print(f"\n[prometheus dashboard] {len(queries)} panel queries with data after "
                  f"{time.time() - started:.1f}s")


# ---------------------------------------------------------------------------------------------------- alerts

PROVOKED = (
    "ModuleServiceControllerWatchSilent",
    "ModuleServiceControllerAPIServerErrors",
    "ModuleServiceControllerReconcileErrorRatioHigh",
    "ModuleServiceControllerReconcileLatencyP99High",
    "ModuleServiceControllerNoLeader",
    "ModuleServiceControllerMultipleLeaders",
    "ModuleServiceControllerQueueDepthGrowing",
    "ModuleServiceControllerDown",
)


class AlertWatch:
    """Waits for alerts in /api/v1/alerts and records when each one became active."""

    def __init__(self, prom: Prometheus) -> None:
        self.prom = prom
        self.seen: dict[str, tuple[str, float]] = {}  # alert -> (state, seconds from its fault)

    async def active(self, name: str) -> list[Alert]:
        return [a for a in await self.prom.alerts() if a.name == name]

    async def wait_active(self, name: str, fault_at: float, *, timeout: float,
                          where: Callable[[Alert], bool] = lambda a: True) -> list[Alert]:
        async def found() -> list[Alert]:
            return [a for a in await self.active(name) if where(a)]

        alerts = await wait_for(found, timeout=timeout, what=f"{name} pending or firing", interval=0.25)
        assert {a.state for a in alerts} <= {"pending", "firing"}
        self.seen[name] = (alerts[0].state, time.monotonic() - fault_at)
        return alerts

    async def wait_inactive(self, name: str, *, timeout: float) -> None:
        async def gone() -> bool:
            return not await self.active(name)

        await wait_for(gone, timeout=timeout, what=f"{name} to resolve", interval=0.25)

    async def wait_none_of(self, names: tuple[str, ...], *, timeout: float) -> None:
        active: list[str] = []

        async def quiet() -> bool:
            active[:] = sorted({a.name for a in await self.prom.alerts() if a.name in names})
            return not active

        try:
            await wait_for(quiet, timeout=timeout, what="no provoked alert active", interval=0.25)
        except AssertionError:
            raise AssertionError(f"still active before any fault: {active}") from None


async def phase(label: str, body: Callable[[], Awaitable[None]]) -> float:
    started = time.monotonic()
    await body()
    took = time.monotonic() - started
    print(f"[prometheus alerts] {label}: {took:.1f}s")
    return took


class TestAlerts:
    @pytest.mark.timeout(900)
    async def test_each_alert_goes_active_when_its_fault_is_injected(
            self, controlplane: ControlPlane, kubeconfig: str, namespace: str, tmp_path: Path) -> None:
        started = time.monotonic()
        rules = render_rules(tmp_path / "rules")
        assert f"> {WATCH_SILENT_SECONDS}" in rules.read_text()
        other_ns = unique("msc-prom-other")
        async with api_client(kubeconfig) as api, metrics_reader_token(api, namespace) as token, \
                FaultProxy.for_controlplane(controlplane) as proxy, \
                prometheus_server(tmp_path / "prometheus", job=JOB, namespace=INSTALL_NAMESPACE, rules=rules,
                                  token=token) as prom, \
                controller_processes(proxy.write_kubeconfig(tmp_path / "proxy.kubeconfig"), namespace,
                                     tmp_path / "controllers", args=SHORT_LEASE.args()) as group:
            watch = AlertWatch(prom)
            assert set(PROVOKED) <= await prom.rule_names()
            c1, c2 = await start_scraped(group, prom, 2)
            leader = await group.leader(api)
            standby = c2 if leader is c1 else c1
            workload = await Workload.start(api, namespace)
            async with heartbeat(workload):
                # Healthy: scrapes arrive, a leader leads, watches are busy; nothing provoked is active.
                await watch.wait_none_of(PROVOKED, timeout=60)

                # 1. Stalled watches: every open watch goes silent (headers sent, then not a byte), and so
                #    does every new one. The controller's own 70 s watchdog has not fired yet.
                async def stalled_watch() -> None:
                    fault_at = time.monotonic()
                    proxy.stall_watches(existing=True)
                    alerts = await watch.wait_active("ModuleServiceControllerWatchSilent", fault_at,
                                                      timeout=WATCH_SILENT_SECONDS + 60)
                    assert {a.labels["resource"] for a in alerts} <= {"moduledeployments", "services", "pods"}
                    proxy.resume()  # held watches end cleanly; the informers rewatch and events flow again
                    await watch.wait_inactive("ModuleServiceControllerWatchSilent", timeout=60)

                await phase("stalled watch -> WatchSilent", stalled_watch)

                # 2. The API server answers 503 to everything about Services: the leader's creates fail,
                #    its reconciles fail and are retried with backoff.
                async def server_errors() -> None:
                    fault_at = time.monotonic()
                    proxy.fail_with(503, duration=600, path_contains="/services")
                    for i in range(10, 20):
                        md = await api.create_md(namespace, module_deployment(f"md-prom-{i}", f"prom{i}",
                                                                              port=8100 + i))
                        workload.wanted[f"prom{i}"] = Wanted.of(md, 8100 + i)
                    leader_instance = Target(leader.name, leader.metrics_port).instance
                    await watch.wait_active("ModuleServiceControllerAPIServerErrors", fault_at, timeout=120,
                                            where=lambda a: a.labels.get("instance") == leader_instance)
                    await watch.wait_active("ModuleServiceControllerReconcileErrorRatioHigh", fault_at, timeout=120)
                    assert proxy.stats.injected_total(503) > 0
                    proxy.resume()
                    await wait_services_exact(api, namespace, workload.wanted, timeout=120)

                await phase("503 on Services -> APIServerErrors, ReconcileErrorRatioHigh", server_errors)

                # 3. A slow API server: Service creates take 2 s, so do the reconciles that make them; a
                #    few percent of the window's reconciles are enough to lift p99 over the 1 s objective.
                async def slow_writes() -> None:
                    fault_at = time.monotonic()
                    proxy.slow_down(2.0, duration=600, methods=("POST",), path_contains="/services")
                    for i in range(20, 30):
                        md = await api.create_md(namespace, module_deployment(f"md-prom-{i}", f"prom{i}",
                                                                              port=8100 + i))
                        workload.wanted[f"prom{i}"] = Wanted.of(md, 8100 + i)
                    await watch.wait_active("ModuleServiceControllerReconcileLatencyP99High", fault_at, timeout=120)
                    assert proxy.stats.delayed > 0
                    proxy.resume()
                    await wait_services_exact(api, namespace, workload.wanted, timeout=120)

                await phase("2 s Service creates -> ReconcileLatencyP99High", slow_writes)

                # 4. No leader: the Lease cannot be read or renewed. The leader stops at its renew
                #    deadline and exits; the standby cannot acquire.
                async def no_leader() -> None:
                    fault_at = time.monotonic()
                    proxy.fail_with(503, duration=600, path_contains="/leases")
                    rc = await leader.wait_exit(timeout=60)
                    assert rc != 0
                    await watch.wait_active("ModuleServiceControllerNoLeader", fault_at, timeout=120)
                    proxy.resume()
                    assert await group.leader(api, timeout=60) is standby
                    await watch.wait_inactive("ModuleServiceControllerNoLeader", timeout=60)

                await phase("Lease unreachable -> NoLeader", no_leader)

                # 5. Two leaders: a second install whose Lease lives in another namespace but serves the
                #    same namespace (a misconfiguration: both write the same Services).
                async def two_leaders() -> None:
                    await api.create_namespace(other_ns)
                    fault_at = time.monotonic()
                    await start_scraped(group, prom, 1, "--leader-elect-namespace", other_ns)
                    await watch.wait_active("ModuleServiceControllerMultipleLeaders", fault_at, timeout=120)

                await phase("a second Lease -> MultipleLeaders", two_leaders)

                # 6. A backlog that grows: Service creates hang (held by the proxy), 120 new
                #    ModuleDeployments arrive, a fresh replica takes over the leadership with all of them
                #    queued, its workers hang too, and more keep arriving. (The rule's 15 min window holds
                #    only this replica's short history here, all of it above 100 keys.)
                async def stuck_queue() -> None:
                    for proc in group.alive:
                        if proc is not standby:  # the leader since phase 4 stays; phase 5's second install goes
                            proc.kill()
                    proxy.slow_down(600, duration=600, methods=("POST",), path_contains="/services")
                    fault_at = time.monotonic()
                    mds = [module_deployment(f"md-q-{i}", f"q{i}", port=8080) for i in range(120)]
                    created = await api.create_mds(namespace, mds)
                    for md in created:
                        workload.wanted[md["spec"]["template"]["spec"]["module"]["name"]] = Wanted.of(md, 8080)
                    (fresh,) = await start_scraped(group, prom, 1)
                    standby.kill()
                    await standby.wait_exit(timeout=30)
                    assert await group.leader(api, timeout=60) is fresh
                    fresh_instance = Target(fresh.name, fresh.metrics_port).instance

                    async def trickle() -> None:
                        # More arrive while the leader is stuck: the queue grows (a flat queue minus the
                        # keys the hung workers took would have a slightly negative slope).
                        for i in range(120, 400):
                            md = await api.create_md(namespace, module_deployment(f"md-q-{i}", f"q{i}", port=8080))
                            workload.wanted[f"q{i}"] = Wanted.of(md, 8080)
                            await anyio.sleep(0.2)  # the arrival rate, not a synchronisation

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(trickle)
                        await watch.wait_active("ModuleServiceControllerQueueDepthGrowing", fault_at, timeout=120,
                                                where=lambda a: a.labels.get("instance") == fresh_instance)
                        tg.cancel_scope.cancel()
                    proxy.resume()
                    await wait_services_exact(api, namespace, workload.wanted, timeout=180)

                await phase("hung Service creates, 120 keys, a new leader -> QueueDepthGrowing", stuck_queue)

                # 7. Down: every replica gone.
                async def down() -> None:
                    fault_at = time.monotonic()
                    for proc in group.alive:
                        proc.kill()
                    await watch.wait_active("ModuleServiceControllerDown", fault_at, timeout=120)

                await phase("every replica killed -> Down", down)
            with contextlib.suppress(NotFound):
                await api.delete_namespace(other_ns)

            assert set(watch.seen) == set(PROVOKED)
            summary = ", ".join(f"{name.removeprefix('ModuleServiceController')} {state} after {secs:.1f}s"
                                for name, (state, secs) in watch.seen.items())
            print(f"[prometheus alerts] {summary}; whole test {time.monotonic() - started:.1f}s")
