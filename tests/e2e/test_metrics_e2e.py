"""Metrics of real controller processes: every name of docs/contracts.md with
plausible values after a scenario, and the secure endpoint's authentication and authorization."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from controller.moduleservice.desired import service_name
from controller.runtime.kube.errors import NotFound
from tests.e2e.common import Wanted, wait_services_exact
from tests.e2e.procs import LEASE_NAME, Metrics, controller_processes, create_service_account, request_token, unique
from tests.harness import Api, api_client, module_deployment, wait_for

pytestmark = pytest.mark.asyncio

CONTROLLER = "moduleservice"
RESOURCES = ("moduledeployments", "services", "pods")

# docs/contracts.md's metrics, as sample names (histograms by their _count; process_* from prometheus_client).
SECTION_8 = (
    "controller_runtime_reconcile_total",
    "controller_runtime_reconcile_errors_total",
    "controller_runtime_reconcile_time_seconds_count",
    "controller_runtime_active_workers",
    "controller_runtime_max_concurrent_reconciles",
    "workqueue_depth",
    "workqueue_adds_total",
    "workqueue_queue_duration_seconds_count",
    "workqueue_work_duration_seconds_count",
    "workqueue_unfinished_work_seconds",
    "workqueue_longest_running_processor_seconds",
    "workqueue_retries_total",
    "rest_client_requests_total",
    "rest_client_request_duration_seconds_count",
    "leader_election_master_status",
    "informer_list_total",
    "informer_watch_starts_total",
    "informer_relists_total",
    "informer_watch_gone_total",
    "informer_watch_errors_total",
    "informer_events_total",
    "informer_last_event_timestamp_seconds",
    "informer_objects",
    "informer_synced",
    "moduleservice_convergence_seconds_count",
    "moduleservice_asyncio_tasks",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_start_time_seconds",
    "process_open_fds",
)


async def _scenario(api: Api, namespace: str) -> dict[str, Wanted]:
    """Three MDs created, one port changed, one deleted; returns the Services that must remain."""
    wanted: dict[str, Wanted] = {}
    for i in range(3):
        md = await api.create_md(namespace, module_deployment(f"md-metrics-{i}", f"metrics{i}", port=8000 + i))
        wanted[f"metrics{i}"] = Wanted.of(md, 8000 + i)
    await wait_services_exact(api, namespace, wanted, timeout=30)
    await api.patch_md(namespace, "md-metrics-0", {"spec": {"operationStrategy": {"serviceStrategy": {"port": 9000}}}})
    wanted["metrics0"] = Wanted(9000, "md-metrics-0", wanted["metrics0"].md_uid)
    await api.delete_md(namespace, "md-metrics-2")
    del wanted["metrics2"]
    await wait_services_exact(api, namespace, wanted, timeout=30)
    return wanted


class TestMetrics:
    async def test_f_every_section_8_metric_after_a_scenario(self, kubeconfig: str, namespace: str,
                                                             tmp_path: Path) -> None:
        async with api_client(kubeconfig) as api, controller_processes(kubeconfig, namespace, tmp_path) as group:
            procs = await group.start_many(2)
            leader = await group.leader(api)
            standby = next(p for p in procs if p is not leader)
            scenario_started = time.time()
            wanted = await _scenario(api, namespace)
            c = {"controller": CONTROLLER}
            q = {"name": CONTROLLER, "controller": CONTROLLER}

            # Status writes and their watch events trail the Services: scrape once the leader is idle.
            async def idle() -> Metrics | None:
                got = await group.scrape(leader)
                busy = got.value("workqueue_depth", **q) or got.value("controller_runtime_active_workers", **c)
                return None if busy else got

            m = await wait_for(idle, timeout=30, what="the leader to be idle", interval=0.2)
            missing = [name for name in SECTION_8 if name not in m.names()]
            assert missing == []

            # Reconciles: every result initialised, successes counted, one time observation per outcome.
            for result in ("success", "error", "requeue", "requeue_after"):
                assert m.series("controller_runtime_reconcile_total", result=result, **c), result
            assert (m.value("controller_runtime_reconcile_total", result="success", **c) or 0) >= 3
            assert m.value("controller_runtime_reconcile_time_seconds_count", **c) == \
                m.value("controller_runtime_reconcile_total", **c)
            assert m.value("controller_runtime_max_concurrent_reconciles", **c) == 4
            assert m.value("controller_runtime_active_workers", **c) == 0
            # Queue: adds seen, items waited and were worked on; idle now.
            assert (m.value("workqueue_adds_total", **q) or 0) >= 3
            assert (m.value("workqueue_queue_duration_seconds_count", **q) or 0) > 0
            assert (m.value("workqueue_work_duration_seconds_count", **q) or 0) > 0
            assert m.value("workqueue_depth", **q) == 0
            # REST: at least the three Service creations (POST 201) and a PATCH. (The deleted MD's Service
            # may be removed by the controller or first by the garbage collector: no DELETE assertion.)
            host = m.series("rest_client_requests_total", method="POST", code="201")[0].labels["host"]
            assert host.startswith("127.0.0.1:")
            assert (m.value("rest_client_requests_total", method="POST", code="201") or 0) >= 3
            assert (m.value("rest_client_requests_total", method="PATCH", code="200") or 0) >= 1
            assert (m.value("rest_client_request_duration_seconds_count", verb="GET") or 0) >= 3  # the lists
            # One watch per informer at least: counted, never timed (a watch lives for minutes).
            assert (m.value("rest_client_requests_total", method="WATCH", code="200") or 0) >= 3
            assert m.value("rest_client_request_duration_seconds_count", verb="WATCH") is None
            assert m.value("leader_election_master_status", name=LEASE_NAME) == 1
            # Informers: synced, one list and at least one watch each; the MD events of the scenario.
            for resource in RESOURCES:
                r = {"resource": resource}
                assert m.value("informer_synced", **r) == 1, resource
                assert (m.value("informer_list_total", **r) or 0) >= 1, resource
                assert (m.value("informer_watch_starts_total", **r) or 0) >= 1, resource
                # A calm scenario: the first list, no relist of any cause (each series exists from start-up).
                assert m.value("informer_list_total", **r) == 1, resource
                for reason in ("gone", "error", "stall"):
                    assert m.value("informer_relists_total", reason=reason, **r) == 0, (resource, reason)
            md = {"resource": "moduledeployments"}
            # Set at creation, then moved by the scenario's events: later than the scenario's start.
            assert (m.value("informer_last_event_timestamp_seconds", **md) or 0) >= scenario_started, md
            assert (m.value("informer_events_total", type="ADDED", **md) or 0) >= 3
            assert (m.value("informer_events_total", type="DELETED", **md) or 0) >= 1
            assert m.value("informer_objects", **md) == 2
            assert m.value("informer_objects", resource="services") == len(wanted)
            # End to end: the watch-to-converged histogram saw the scenario.
            assert (m.value("moduleservice_convergence_seconds_count", **c) or 0) >= 3
            assert (m.value("process_resident_memory_bytes") or 0) > 10_000_000
            assert (m.value("moduleservice_asyncio_tasks") or 0) > 5
            # No object name ever becomes a label value.
            names = {f"md-metrics-{i}" for i in range(3)} | {f"metrics{i}" for i in range(3)} | \
                {service_name(f"metrics{i}") for i in range(3)} | {namespace}
            assert not names & m.label_values()

            # The warm standby: caches full, leader gauge 0, no reconciles, no writes.
            s = await group.scrape(standby)
            assert s.value("leader_election_master_status", name=LEASE_NAME) == 0
            assert s.value("controller_runtime_reconcile_total", **c) == 0
            assert s.value("informer_objects", **md) == 2
            assert all(s.value("informer_synced", resource=r) == 1 for r in RESOURCES)
            assert s.value("rest_client_requests_total", method="POST", code="201") is None
            print(f"\n[e2e f] {len(m.samples)} samples on the leader; "
                  f"reconciles {m.value('controller_runtime_reconcile_total', **c):g}, "
                  f"adds {m.value('workqueue_adds_total', **q):g}, "
                  f"convergence observations {m.value('moduleservice_convergence_seconds_count', **c):g}")

    async def test_f_secure_metrics_need_a_token_allowed_to_get_metrics(self, kubeconfig: str, namespace: str,
                                                                       tmp_path: Path) -> None:
        role, binding = unique("msc-e2e-metrics-reader"), unique("msc-e2e-metrics-reader")
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        async with api_client(kubeconfig) as api, controller_processes(kubeconfig, namespace, tmp_path) as group:
            try:
                for sa in ("scraper-denied", "scraper-allowed"):
                    await create_service_account(api, namespace, sa)
                await api.client.request("POST", f"{rbac}/clusterroles", body={
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": role},
                    "rules": [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]})
                await api.client.request("POST", f"{rbac}/clusterrolebindings", body={
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                    "subjects": [{"kind": "ServiceAccount", "name": "scraper-allowed", "namespace": namespace}]})
                denied = await request_token(api, namespace, "scraper-denied")
                allowed = await request_token(api, namespace, "scraper-allowed")

                proc = await group.start_ready(secure_metrics=True)
                assert proc.metrics_url.startswith("https://")
                assert await group.get(proc.metrics_url) == (401, "Unauthorized\n")
                assert await group.get(proc.metrics_url, token="not-a-token") == (401, "Unauthorized\n")
                assert await group.get(proc.metrics_url, token=denied) == (403, "Forbidden\n")
                m = await group.scrape(proc, token=allowed)
                assert "leader_election_master_status" in m.names()
                assert "controller_runtime_reconcile_total" in m.names()
                # The reviews were made with the controller's own credentials.
                assert (m.value("rest_client_requests_total", method="POST", code="201") or 0) >= 2
                # Plain HTTP on the TLS port gets nothing useful.
                plain = await group.get(proc.metrics_url.replace("https://", "http://"))
                assert plain is None or plain[0] == 400
            finally:
                for kind, name in (("clusterrolebindings", binding), ("clusterroles", role)):
                    with contextlib.suppress(NotFound):
                        await api.client.request("DELETE", f"{rbac}/{kind}/{name}")
