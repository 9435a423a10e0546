"""Who wrote which Service, as the API server recorded it (its audit log; see ControlPlane.audit_log).

Counting writes from here, not from a writer's own metrics, is what makes "0 writes to another install's
Services" a claim about the cluster rather than about our bookkeeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServiceWrite", "service_writes"]


@dataclass(frozen=True, slots=True)
class ServiceWrite:
    verb: str  # create, update, patch, delete
    name: str
    user: str
    code: int  # the answer's HTTP status
    at: str  # when it was answered: RFC 3339 with microseconds (stageTimestamp)
    received: str = ""  # when it arrived (requestReceivedTimestamp)

    @property
    def succeeded(self) -> bool:
        return 200 <= self.code < 300


def service_writes(audit_log: Path, namespace: str) -> list[ServiceWrite]:
    """Every audited write to a Service in ``namespace``, in the order the API server received them.

    Not the order of the log's lines, which is the order of the answers: a watcher sees a delete before
    its DELETE is answered, so the create it makes next can be answered, and logged, first."""
    out: list[ServiceWrite] = []
    if not audit_log.exists():
        return out
    with audit_log.open() as f:
        for line in f:
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            ref = event.get("objectRef") or {}
            if ref.get("resource") != "services" or ref.get("namespace") != namespace or ref.get("subresource"):
                continue
            out.append(ServiceWrite(
                verb=str(event.get("verb")), name=str(ref.get("name") or ""),
                user=str((event.get("user") or {}).get("username")),
                code=int((event.get("responseStatus") or {}).get("code") or 0),
                at=str(event.get("stageTimestamp")), received=str(event.get("requestReceivedTimestamp")),
            ))
    return sorted(out, key=lambda w: w.received)
