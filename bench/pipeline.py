"""The controller's own CPU per ModuleDeployment in a burst, without an API server.

``python -m bench.pipeline [--n 1000] [--reps 5]``: N ModuleDeployment ADDED events (JSON bytes as a v1.36
API server sends them, bench/data/) go through the informers' event handling, the two lanes, the
reconciler, the status writer and the Event recorder, as in the process (4 workers). A fake client answers
every write at once and sends it back on the "watch" (the created Service, the ModuleDeployment with its
new status), as the API server would. The figure is the process CPU from the first event until the lanes
are quiet and every Event is sent, divided by N; the minimum of ``--reps`` repetitions (the least disturbed
by other work on the machine), with the median beside it.

What it leaves out is measured apart: the HTTP client and the TLS and socket work of the requests and watch
streams (about half of the controller's CPU in a real burst), and the API server. Run it with another tree
first on ``PYTHONPATH`` (``PYTHONPATH=DIR:. python -m bench.pipeline``) for a before/after: the noise of a
shared machine is much smaller here than in a burst against a real API server.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import orjson
from prometheus_client import CollectorRegistry

from controller.moduleservice.lanes import Lanes
from controller.moduleservice.mapping import md_module, pod_modules, service_in_scope
from controller.moduleservice.profiles import PROFILES
from controller.moduleservice.reconcile import MD_MODULE_INDEX, POD_MODULE_INDEX, Reconciler
from controller.moduleservice.resources import MODULE_DEPLOYMENTS
from controller.moduleservice.statuswriter import StatusWriter
from controller.moduleservice.transforms import slim_md, slim_service
from controller.runtime.controller import Notifier
from controller.runtime.events import EventRecorder
from controller.runtime.informer import Informer
from controller.runtime.kube.client import JsonObj, KubeClient
from controller.runtime.kube.resources import SERVICES
from controller.runtime.logging import configure
from controller.runtime.metrics import Metrics
from controller.runtime.store import Store

DATA = Path(__file__).resolve().parent / "data"
PROFILE = PROFILES["seed"]
NS = "bench"
WORKERS = 4


def _template(name: str) -> JsonObj:
    obj: JsonObj = orjson.loads((DATA / name).read_bytes())
    return obj


MD = _template("moduledeployment.json")
SVC = _template("service.json")


def md_event(i: int) -> bytes:
    meta = {**MD["metadata"], "name": f"md-b-m{i}", "uid": f"uid-{i}", "resourceVersion": str(1000 + i)}
    return orjson.dumps({"type": "ADDED", "object": {**MD, "metadata": meta, "spec": _with_module(f"b-m{i}")}})


def _with_module(module: str) -> JsonObj:
    spec = MD["spec"]
    tspec = spec["template"]["spec"]
    return {**spec, "template": {**spec["template"], "spec": {**tspec, "module": {**tspec["module"], "name": module}}}}


class FakeApi:
    """Answers every write at once, and sends it back on the watch (``deliver``) as the API server does."""

    def __init__(self, deliver: Callable[[str, bytes], None], mds: Store) -> None:
        self.deliver = deliver
        self.mds = mds
        self.rv = 10**6
        self.requests = 0

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                      content_type: str = "", timeout: float | None = None) -> JsonObj:
        self.requests += 1
        await anyio.lowlevel.checkpoint()
        self.rv += 1
        meta = body.get("metadata") or {} if isinstance(body, dict) else {}
        if method == "POST" and path.endswith("/services"):
            svc = {**SVC, "metadata": {**SVC["metadata"], "name": meta["name"], "uid": f"s{self.rv}",
                                       "resourceVersion": str(self.rv), "labels": meta["labels"],
                                       "ownerReferences": meta["ownerReferences"]},
                   "spec": {**SVC["spec"], "selector": body["spec"]["selector"]}}
            return self._echo("services", "ADDED", svc)
        if method == "PATCH" and path.endswith("/status"):
            name = path.rsplit("/", 2)[1]
            cached = self.mds.get(f"{NS}/{name}") or {}
            md = {**MD, "metadata": {**MD["metadata"], "name": name, "uid": cached["metadata"]["uid"],
                                     "resourceVersion": str(self.rv)},
                  "spec": _with_module(md_module(cached)), "status": body["status"]}
            return self._echo("moduledeployments", "MODIFIED", md)
        return dict(body) if isinstance(body, dict) else {}

    def _echo(self, resource: str, etype: str, obj: JsonObj) -> JsonObj:
        raw = orjson.dumps({"type": etype, "object": obj})
        self.deliver(resource, raw)
        answer: JsonObj = orjson.loads(raw)["object"]  # the client decodes the answer too
        return answer


async def one_burst(n: int) -> tuple[float, int]:
    """CPU seconds of one burst of ``n``, and the requests it made."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    mds = Store({MD_MODULE_INDEX: lambda md: [f"{md['metadata']['namespace']}/{md_module(md)}"]})
    services = Store()
    pods = Store({POD_MODULE_INDEX: lambda p: [f"{p['metadata']['namespace']}/{m}"
                                               for m, _ in pod_modules(p, PROFILE.label_prefix)]})
    on_the_watch: list[tuple[str, bytes]] = []
    arrived = anyio.Event()

    def deliver(resource: str, raw: bytes) -> None:
        on_the_watch.append((resource, raw))
        arrived.set()

    api = FakeApi(deliver, mds)
    client = cast(KubeClient, api)
    lanes: list[Lanes] = []

    def idle(since: float) -> Awaitable[None]:
        return lanes[0].wait_for_services(since)

    events = EventRecorder(client, idle=idle)
    reconciler = Reconciler(client, mds=mds, services=services, pods=pods, profile=PROFILE, events=events)
    lanes.append(Lanes(reconciler, StatusWriter(reconciler), label_prefix=PROFILE.label_prefix, workers=WORKERS,
                       notifier=Notifier(), services_ready=lambda: True, status_ready=lambda: True,
                       metrics=metrics, queue_metrics=metrics.queue_metrics, convergence=metrics.convergence))
    informers = {
        "moduledeployments": Informer(client, MODULE_DEPLOYMENTS, store=mds, handlers=[lanes[0].md_handler],
                                      transform=slim_md, metrics=metrics.informer_metrics("moduledeployments")),
        "services": Informer(client, SERVICES, store=services,
                             handlers=[reconciler.service_events, lanes[0].service_handler],
                             transform=slim_service, keep=service_in_scope,
                             metrics=metrics.informer_metrics("services")),
    }
    raws = [md_event(i) for i in range(n)]
    gc.collect()

    async def watch() -> None:
        nonlocal arrived
        while True:
            await arrived.wait()
            arrived = anyio.Event()
            while on_the_watch:
                resource, raw = on_the_watch.pop(0)
                informers[resource]._handle(orjson.loads(raw))

    async with anyio.create_task_group() as tg:
        await tg.start(events.run)
        await tg.start(lanes[0].run)
        tg.start_soon(watch)
        started = time.process_time()
        for i, raw in enumerate(raws):
            informers["moduledeployments"]._handle(orjson.loads(raw))
            if i % 16 == 15:  # the watch delivers a few events per read
                await anyio.lowlevel.checkpoint()
        while not (lanes[0].quiescent and events.pending == 0 and not on_the_watch):
            await anyio.sleep(0.01)
        used = time.process_time() - started
        lanes[0].stop()
        tg.cancel_scope.cancel()
    return used, api.requests


async def main(n: int, reps: int) -> None:
    used = []
    for _ in range(reps):
        cpu, requests = await one_burst(n)
        used.append(cpu)
        print(f"  {1e6 * cpu / n:.0f} us per ModuleDeployment ({requests} requests)", file=sys.stderr)
    print(f"controller's own CPU per ModuleDeployment: min {1e6 * min(used) / n:.0f} us, median "
          f"{1e6 * statistics.median(used) / n:.0f} us ({reps} bursts of {n})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    configure(json=True, level=args.log_level)
    anyio.run(main, args.n, args.reps, backend="asyncio")
