"""What a restart has to catch up on (bench 8): a ModuleDeployment created while the process was down, and
statuses that went stale meanwhile.

- :class:`LateModuleDeployment`: created just before the contender starts, in the namespace and with a name
  that a list returns last (the worst case for a controller that works through its start-up pass in list
  order); the figure is the time from the spawn to its Service being right on the benchmark's watch.
- :class:`PodChurn`: every ``every``-th module Pod is deleted (or created again, on alternate restarts)
  while this controller is down, so the ``pods`` count in the status of about 3/``every`` of the
  ModuleDeployments is stale when it starts.
- :class:`StatusWatch`: a cluster-wide watch of the ModuleDeployments that stamps when every
  ``status.moduleService`` is right (Ready, the Service's name, the Pod count the cluster has).
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from anyio.abc import TaskStatus

from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.errors import NotFound
from controller.runtime.kube.resources import PODS, SERVICES
from tests.harness import module_deployment

from .common import BenchError, Watch, bounded, create, create_pods_in, pod, service_ok

__all__ = ["LateModuleDeployment", "PodChurn", "StatusWatch", "pod_modules_of"]


def pod_modules_of(j: int, modules_per_ns: int, k: int) -> list[str]:
    """The modules of Pod ``base-j`` in every namespace (bench 4 and 8 build Pods this way)."""
    return [f"m{(j + x) % modules_per_ns}" for x in range(k)]


class LateModuleDeployment:
    def __init__(self, client: KubeClient, namespace: str, tag: str) -> None:
        self.client = client
        self.namespace = namespace
        self.module = f"zz-late-{tag}"
        self.name = f"md-{self.module}"
        self.service = f"{self.module}-service"
        self.watch = Watch(client, SERVICES.path(namespace),
                           lambda name, svc: name == self.service and service_ok(svc, self.module, self.name))

    async def start(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watches, then creates the ModuleDeployment (before the contender starts)."""
        async with anyio.create_task_group() as tg:
            await tg.start(self.watch.run)
            await create(self.client, MODULE_DEPLOYMENTS.path(self.namespace),
                         module_deployment(self.name, self.module))
            task_status.started()

    async def service_at(self, timeout: float) -> float:
        """perf_counter time its Service was first right."""
        return await self.watch.wait(self.service, timeout)

    async def delete(self, timeout: float = 120.0) -> None:
        """Gone again after the run, and its Service with it (the garbage collector's delete must not count
        as the next contender's write)."""
        await self.client.request("DELETE", MODULE_DEPLOYMENTS.path(self.namespace, self.name))
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            try:
                await self.client.request("GET", SERVICES.path(self.namespace, self.service))
            except NotFound:
                return
            await anyio.sleep(0.2)
        raise BenchError(f"{self.service} still there {timeout:.0f}s after its ModuleDeployment was deleted")


class PodChurn:
    """Toggles every ``every``-th Pod of each namespace; knows the Pod count each module should report."""

    def __init__(self, client: KubeClient, namespaces: list[str], pods_per_ns: int, modules_per_ns: int, k: int,
                 every: int, concurrency: int) -> None:
        self.client = client
        self.namespaces = namespaces
        self.pods_per_ns = pods_per_ns
        self.modules_per_ns = modules_per_ns
        self.k = k
        self.churned = [j for j in range(pods_per_ns) if j % every == 0]
        self.concurrency = concurrency
        self.present = True

    async def toggle(self) -> None:
        if self.present:
            async def delete(item: tuple[str, int]) -> None:
                await self.client.request("DELETE", PODS.path(item[0], f"base-{item[1]}"),
                                          body={"gracePeriodSeconds": 0})
            await bounded(self.concurrency, [(ns, j) for ns in self.namespaces for j in self.churned], delete)
        else:
            await create_pods_in(self.client, [(ns, pod(f"base-{j}", pod_modules_of(j, self.modules_per_ns, self.k)))
                                               for ns in self.namespaces for j in self.churned], self.concurrency)
        self.present = not self.present

    @property
    def stale(self) -> int:
        """ModuleDeployments whose Pod count each toggle changes."""
        return len({m for j in self.churned for m in pod_modules_of(j, self.modules_per_ns, self.k)}) \
            * len(self.namespaces)

    def expected_pods(self) -> dict[tuple[str, str], int]:
        """(namespace, module) -> Pods with its label now."""
        out: dict[tuple[str, str], int] = {}
        gone = set() if self.present else set(self.churned)
        for ns in self.namespaces:
            for j in range(self.pods_per_ns):
                if j in gone:
                    continue
                for m in pod_modules_of(j, self.modules_per_ns, self.k):
                    out[(ns, m)] = out.get((ns, m), 0) + 1
        return out


class StatusWatch:
    """Stamps the moment every ModuleDeployment's status.moduleService is right, from a list and a watch."""

    def __init__(self, client: KubeClient, pods: dict[tuple[str, str], int]) -> None:
        self.client = client
        self.pods = pods
        self.wrong: set[tuple[str, str]] = set()
        self.all_right_at: float | None = None
        self._done = anyio.Event()
        self._rv = ""

    def _right(self, md: JsonObj) -> bool:
        meta = md.get("metadata") or {}
        module = md["spec"]["template"]["spec"]["module"]["name"]
        status: Any = ((md.get("status") or {}).get("moduleService")) or {}
        conditions = status.get("conditions") or [{}]
        return (conditions[0].get("reason") == "ServiceReady" and status.get("serviceName") == f"{module}-service"
                and status.get("pods") == self.pods.get((str(meta.get("namespace")), module), 0)
                and isinstance(status.get("nodePort"), int))

    def _see(self, md: JsonObj, deleted: bool = False) -> None:
        meta = md.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if deleted or self._right(md):
            self.wrong.discard(key)
        else:
            self.wrong.add(key)
        if not self.wrong and self.all_right_at is None:
            self.all_right_at = time.perf_counter()
            self._done.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        path = MODULE_DEPLOYMENTS.path()
        params: dict[str, str | int | bool] = {"limit": 500}
        items: list[JsonObj] = []
        while True:
            page = await self.client.request("GET", path, params=params, timeout=120)
            items += page.get("items") or []
            self._rv = str((page.get("metadata") or {}).get("resourceVersion") or self._rv)
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            params["continue"] = token
        self.wrong = {(md["metadata"]["namespace"], md["metadata"]["name"]) for md in items if not self._right(md)}
        task_status.started()
        while True:
            await self.client.watch(path, params={"resourceVersion": self._rv, "allowWatchBookmarks": True,
                                                  "timeoutSeconds": 3600}, on_event=self._on_event, idle_timeout=3600)

    def _on_event(self, event: JsonObj) -> None:
        obj = event.get("object") or {}
        self._rv = str((obj.get("metadata") or {}).get("resourceVersion") or self._rv)
        if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
            self._see(obj, deleted=event.get("type") == "DELETED")

    async def wait(self, timeout: float) -> float:
        """perf_counter time every status was right (at once if they already were)."""
        if not self.wrong and self.all_right_at is None:
            self.all_right_at = time.perf_counter()
        if self.all_right_at is None:
            with anyio.move_on_after(timeout):
                await self._done.wait()
        if self.all_right_at is None:
            raise BenchError(f"{len(self.wrong)} statuses still wrong after {timeout:.0f}s, e.g. "
                             f"{sorted(self.wrong)[:3]}")
        return self.all_right_at
