"""The Lease a leader holds: its record, the settings of an election, and the API it is written through
(client-go ``tools/leaderelection/resourcelock``, the LeaseLock)."""

from __future__ import annotations

import math
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from .errors import ConfigError
from .kube.resources import LEASES

__all__ = [
    "DEFAULT_LOCK_NAME",
    "JITTER_FACTOR",
    "KubeLeaseApi",
    "LeaderElectionConfig",
    "LeaderElectionRecord",
    "LeaseApi",
    "default_identity",
    "micro_time",
    "new_lease",
    "with_record",
]

JsonObj = dict[str, Any]

DEFAULT_LOCK_NAME = "module-service-controller"
# client-go JitterFactor: acquire attempts are spaced retry_period * [1, 2.2).
JITTER_FACTOR = 1.2


def default_identity() -> str:
    """controller-runtime's identity: ``hostname_uuid`` (unique even for two processes on one host)."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def micro_time(now: datetime | None = None) -> str:
    """A ``metav1.MicroTime`` string: RFC 3339, UTC, always six fractional digits."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class LeaderElectionConfig:
    lock_namespace: str
    lock_name: str = DEFAULT_LOCK_NAME
    identity: str = field(default_factory=default_identity)
    # Defaults are controller-runtime's 15 s / 10 s / 2 s.
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # True (controller-runtime defaults to False): a clean shutdown hands over in ~1 s, not 15 s.
    release_on_cancel: bool = True

    def __post_init__(self) -> None:
        for name in ("lock_namespace", "lock_name", "identity"):
            if not getattr(self, name):
                raise ConfigError(f"leader election: {name} must not be empty")
        for name in ("lease_duration", "renew_deadline", "retry_period"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"leader election: {name} must be greater than zero")
        # Same checks and order as client-go NewLeaderElector.
        if self.lease_duration <= self.renew_deadline:
            raise ConfigError(
                f"leader election: lease duration ({self.lease_duration}s) must be greater than "
                f"renew deadline ({self.renew_deadline}s)"
            )
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ConfigError(
                f"leader election: renew deadline ({self.renew_deadline}s) must be greater than "
                f"{JITTER_FACTOR} x retry period ({self.retry_period}s)"
            )

    @property
    def request_timeout(self) -> float:
        """Per-request timeout, controller-runtime's ``max(RenewDeadline/2, 1s)``."""
        return max(self.renew_deadline / 2, 1.0)

    @property
    def lease_duration_seconds(self) -> int:
        """What is written to ``spec.leaseDurationSeconds`` (an integer field). Rounded *up*, so other
        candidates never wait less than we assume."""
        return max(1, math.ceil(self.lease_duration))


@dataclass(frozen=True, slots=True)
class LeaderElectionRecord:
    """The Lease spec fields leader election reads and writes (client-go ``LeaderElectionRecord``)."""

    holder_identity: str
    lease_duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    lease_transitions: int

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaderElectionRecord:
        spec = lease.get("spec")
        if not isinstance(spec, Mapping):
            spec = {}
        # Missing fields read as client-go does: a missing duration is 0, i.e. already expired.
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        acquire = spec.get("acquireTime")
        renew = spec.get("renewTime")
        return cls(
            holder_identity=str(spec.get("holderIdentity") or ""),
            lease_duration_seconds=duration if isinstance(duration, int) else 0,
            acquire_time=acquire if isinstance(acquire, str) else None,
            renew_time=renew if isinstance(renew, str) else None,
            lease_transitions=transitions if isinstance(transitions, int) else 0,
        )

    def to_spec(self) -> JsonObj:
        # The whole spec is replaced, like client-go LeaderElectionRecordToLeaseSpec.
        spec: JsonObj = {
            "holderIdentity": self.holder_identity,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "leaseTransitions": self.lease_transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time is not None:
            spec["renewTime"] = self.renew_time
        return spec


class LeaseApi(Protocol):
    """The three Lease calls leader election needs. ``replace`` must send the body's
    ``metadata.resourceVersion`` so a stale write fails with :class:`Conflict`."""

    async def get(self, namespace: str, name: str) -> JsonObj: ...

    async def create(self, namespace: str, body: JsonObj) -> JsonObj: ...

    async def replace(self, namespace: str, name: str, body: JsonObj) -> JsonObj: ...


class _Requester(Protocol):
    # The slice of KubeClient.request used here (KubeClient satisfies it structurally, hence the
    # `timeout` parameter name).
    async def request(
        self, method: str, path: str, *, body: Any = None, timeout: float | None = None
    ) -> JsonObj: ...


class KubeLeaseApi:
    """:class:`LeaseApi` over :class:`controller.runtime.kube.client.KubeClient`.

    Pass ``timeout=config.request_timeout`` so a hung request cannot outlive the renew deadline.
    """

    def __init__(self, client: _Requester, *, timeout: float = 5.0) -> None:
        self._client = client
        self._timeout = timeout

    async def get(self, namespace: str, name: str) -> JsonObj:
        return await self._client.request("GET", LEASES.path(namespace, name), timeout=self._timeout)

    async def create(self, namespace: str, body: JsonObj) -> JsonObj:
        return await self._client.request("POST", LEASES.path(namespace), body=body, timeout=self._timeout)

    async def replace(self, namespace: str, name: str, body: JsonObj) -> JsonObj:
        return await self._client.request(
            "PUT", LEASES.path(namespace, name), body=body, timeout=self._timeout
        )


def new_lease(namespace: str, name: str, record: LeaderElectionRecord) -> JsonObj:
    return {
        "apiVersion": LEASES.api_version,
        "kind": LEASES.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": record.to_spec(),
    }


def with_record(lease: Mapping[str, Any], record: LeaderElectionRecord) -> JsonObj:
    # Keeps metadata (resourceVersion above all) and replaces only the spec.
    body = dict(lease)
    body.setdefault("apiVersion", LEASES.api_version)
    body.setdefault("kind", LEASES.kind)
    body["spec"] = record.to_spec()
    return body
