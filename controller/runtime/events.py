"""Kubernetes Events (``kubectl describe``) recorded off the reconcile path.

Reconciles only enqueue; background tasks send, a few at a time (one request at a time costs about twice
the CPU per request, and a burst's Events would trail its statuses by seconds). One Event is never sent
twice at once. Events are best effort (like client-go's broadcaster): a full buffer or a failed request
drops the event with a log line, never a reconcile.

Like client-go's recorder, every event goes through a correlator (:mod:`.eventcorrelator`): a repeat
of an identical event raises the ``count`` of the existing Event with a PATCH instead of creating a new
object, similar events are combined, and each object has an event budget. Sends still waiting are
coalesced: ten repeats before the sender gets to them are one request.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from .clock import SYSTEM_CLOCK, Clock
from .eventcorrelator import EventCorrelator, EventIdentity
from .kube.client import KubeClient
from .kube.errors import AlreadyExists, KubeError, NotFound

__all__ = ["EventRecorder", "ObjectRef", "now_rfc3339"]

log = structlog.get_logger(__name__)
_COMPONENT = "module-service-controller"
_BUFFER = 5000
SENDERS = 4


@dataclass(frozen=True, slots=True)
class ObjectRef:
    namespace: str
    name: str
    uid: str
    api_version: str  # the involved object's; the framework knows no kinds of its own
    kind: str


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, client: KubeClient | None, *, instance: str = "",
                 idle: Callable[[float], Awaitable[None]] | None = None,
                 correlator: EventCorrelator | None = None, clock: Clock = SYSTEM_CLOCK,
                 senders: int = SENDERS) -> None:
        self._client = client
        self._senders = max(1, senders)
        self._idle = idle
        self._instance = instance
        self._clock = clock
        self._correlator = correlator or EventCorrelator(clock.now)
        # Names waiting to be sent, in order (a dict: removal from the middle is O(1)), and for each the
        # Event as it should end up; a repeat of a waiting Event updates it in place (first send a POST,
        # later ones a PATCH of count). Names being sent are also in _sending.
        self._pending: dict[str, None] = {}
        self._sending: set[str] = set()
        self._bodies: dict[str, tuple[bool, dict[str, Any]]] = {}  # name -> (create?, body)
        self._since: dict[str, float] = {}  # name -> when it started waiting (clock time)
        self._wake = anyio.Event()
        self.dropped = 0

    @property
    def pending(self) -> int:
        """Events waiting to be sent, or being sent now."""
        return len(self._pending)

    def waiting(self) -> list[tuple[str, str, str, int]]:
        """(type, reason, message, count) of every Event waiting to be sent, oldest first."""
        return [(b["type"], b["reason"], b["message"], b["count"])
                for b in (self._bodies[name][1] for name in self._pending)]

    @property
    def filtered(self) -> int:
        """Events the per-object budget dropped."""
        return self._correlator.filtered

    def record(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        message = message[:1024]
        now = now_rfc3339()
        obs = self._correlator.observe(
            EventIdentity(ref.namespace, ref.kind, ref.name, ref.uid, ref.api_version, type_, reason, message),
            now_stamp=now)
        if obs is None:
            return
        waiting = self._bodies.get(obs.name)
        if waiting is None and len(self._pending) >= _BUFFER:
            self.dropped += 1
            return
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": obs.name, "namespace": ref.namespace},
            "involvedObject": {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name,
                               "namespace": ref.namespace, "uid": ref.uid},
            "type": type_, "reason": reason, "message": obs.message[:1024],
            "source": {"component": _COMPONENT},
            "reportingComponent": _COMPONENT, "reportingInstance": self._instance,
            "firstTimestamp": obs.first_seen, "lastTimestamp": now, "count": obs.count,
        }
        if waiting is None:
            self._pending[obs.name] = None
            self._since.setdefault(obs.name, self._clock.now())
            self._bodies[obs.name] = (obs.count == 1, body)
        else:
            self._bodies[obs.name] = (waiting[0], body)  # still a create if the create has not gone out
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(self._senders):
                tg.start_soon(self._sender)
            task_status.started()

    def _next(self) -> str | None:
        """The oldest waiting name that no other sender holds."""
        for name in self._pending:
            if name not in self._sending:
                return name
        return None

    async def _sender(self) -> None:
        while True:
            name = self._next()
            if name is None:
                wake = self._wake
                await wake.wait()
                if self._wake is wake:  # the first sender up arms a new one; the others see it armed
                    self._wake = anyio.Event()
                continue
            self._sending.add(name)
            try:
                if self._idle is not None:
                    # Reconciles first: events are informational. The owner decides how long an event
                    # may wait, from when it started waiting.
                    await self._idle(self._since.get(name, self._clock.now()))
                create, body = self._bodies[name]
                try:
                    if self._client is not None:
                        await self._send(self._client, create, body)
                except KubeError as exc:
                    log.debug("event_dropped", reason=body["reason"], error=str(exc))
                finally:
                    # Removed only now, so a repeat recorded during the send queues a new send.
                    if self._bodies.get(name, (create, body))[1] is body:
                        del self._bodies[name]
                        self._since.pop(name, None)
                        self._pending.pop(name, None)
                    else:
                        self._bodies[name] = (False, self._bodies[name][1])
                        del self._pending[name]
                        self._pending[name] = None  # to the back, behind the others waiting
            finally:
                self._sending.discard(name)
                self._wake.set()  # a sender asleep may take the name back, or the next one

    async def _send(self, client: KubeClient, create: bool, body: dict[str, Any]) -> None:
        path = f"/api/v1/namespaces/{body['metadata']['namespace']}/events"
        if not create:
            try:
                await client.request(
                    "PATCH", f"{path}/{body['metadata']['name']}", timeout=10,
                    content_type="application/merge-patch+json",
                    body={"count": body["count"], "lastTimestamp": body["lastTimestamp"],
                          "message": body["message"]})
                return
            except NotFound:
                pass  # expired (Events live an hour) or never created: create it afresh
        try:
            await client.request("POST", path, body=body, timeout=10)
        except AlreadyExists:
            await client.request(
                "PATCH", f"{path}/{body['metadata']['name']}", timeout=10,
                content_type="application/merge-patch+json",
                body={"count": body["count"], "lastTimestamp": body["lastTimestamp"], "message": body["message"]})
