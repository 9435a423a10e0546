"""Kubernetes Events (``kubectl describe``) recorded off the reconcile path.

Reconciles only enqueue; a background task posts. Events are best effort (like client-go's
broadcaster): a full buffer or a failed POST drops the event with a log line, never a reconcile.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus

from .kube.client import KubeClient
from .kube.errors import KubeError

__all__ = ["EventRecorder", "ObjectRef"]

log = structlog.get_logger(__name__)
_COMPONENT = "module-service-controller"
_BUFFER = 5000


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
                 idle: Callable[[], Awaitable[None]] | None = None) -> None:
        self._client = client
        self._idle = idle
        self._instance = instance
        self._pending: deque[dict[str, Any]] = deque()
        self._wake = anyio.Event()
        self.dropped = 0

    def record(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        if len(self._pending) >= _BUFFER:
            self.dropped += 1
            return
        now = now_rfc3339()
        self._pending.append({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref.name}.{secrets.token_hex(8)}", "namespace": ref.namespace},
            "involvedObject": {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name,
                               "namespace": ref.namespace, "uid": ref.uid},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": _COMPONENT},
            "reportingComponent": _COMPONENT, "reportingInstance": self._instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        })
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending:
                if self._idle is not None:
                    await self._idle()  # reconciles first: events are informational
                body = self._pending.popleft()
                if self._client is None:
                    continue
                try:
                    await self._client.request(
                        "POST", f"/api/v1/namespaces/{body['metadata']['namespace']}/events",
                        body=body, timeout=10,
                    )
                except KubeError as exc:
                    log.debug("event_dropped", reason=body["reason"], error=str(exc))
