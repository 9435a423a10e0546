"""A module Service's addresses (clusterIP and nodePort), and the memory that lets a deleted one come back
with the same addresses.

Clients reach a module through its clusterIP or, mostly, a nodePort they were configured with. When
someone deletes the Service while a ModuleDeployment still wants it (Koupleless' own module-controller
deletes it by name while retiring an old version), the controller re-creates it; asked for nothing in
particular, the API server would allocate new addresses and every client would break. So the last
addresses of each of our Services that was deleted are kept for a while and asked for again.

Pure: no I/O; an injected clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["AddressBook", "Addresses", "service_addresses"]

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Addresses:
    cluster_ips: tuple[str, ...]
    ip_families: tuple[str, ...] = ()
    ip_family_policy: str | None = None
    node_port: int | None = None

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """``manifest`` (a Service to create, with one port) asking for these addresses."""
        spec = dict(manifest["spec"])
        if self.cluster_ips:
            spec["clusterIP"] = self.cluster_ips[0]
            spec["clusterIPs"] = list(self.cluster_ips)
        if self.ip_families:
            spec["ipFamilies"] = list(self.ip_families)
        if self.ip_family_policy:
            spec["ipFamilyPolicy"] = self.ip_family_policy
        if self.node_port is not None:
            spec["ports"] = [{**spec["ports"][0], "nodePort": self.node_port}]
        return {**manifest, "spec": spec}

    def __str__(self) -> str:
        ips = ",".join(self.cluster_ips) or "none"
        return f"clusterIP {ips}, nodePort {self.node_port if self.node_port is not None else 'none'}"


def service_addresses(service: Mapping[str, Any] | None) -> Addresses | None:
    """The allocated addresses of a Service (None when it has neither a clusterIP nor a nodePort)."""
    spec = (service or {}).get("spec") or {}
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ips = tuple(str(ip) for ip in ips if ip and ip != "None")  # "None": headless, nothing to keep
    ports = spec.get("ports") or []
    node_port = ports[0].get("nodePort") if len(ports) == 1 and isinstance(ports[0], Mapping) else None
    node_port = node_port if isinstance(node_port, int) and not isinstance(node_port, bool) else None
    if not ips and node_port is None:
        return None
    return Addresses(
        cluster_ips=ips,
        ip_families=tuple(str(f) for f in spec.get("ipFamilies") or ()),
        ip_family_policy=spec.get("ipFamilyPolicy") or None,
        node_port=node_port,
    )


@dataclass(slots=True)
class _Entry:
    at: float
    addresses: Addresses
    refusals: int = 0


class AddressBook(Generic[K]):
    """The last addresses of Services deleted under us, per key, for ``ttl`` seconds and at most
    ``capacity`` keys (the oldest go first): long enough to re-create them, bounded whatever happens.

    The API server announces a delete on the watch before it has released the deleted Service's addresses,
    so a create that follows the watch at once is told they are "already allocated" (measured here: about
    one re-create in two without a pause, none with 50 ms). :meth:`wait` says how long to let the release
    happen first; :meth:`refused` spaces out a few more tries (``retry_base`` doubling, ``retries`` in all)
    before the caller gives the addresses up.
    """

    def __init__(self, clock: Callable[[], float], *, ttl: float = 600.0, capacity: int = 10_000,
                 release: float = 0.05, retries: int = 6, retry_base: float = 0.05) -> None:
        self._clock = clock
        self.ttl = ttl
        self.capacity = capacity
        self.release = release
        self.retries = retries
        self.retry_base = retry_base
        self._entries: OrderedDict[K, _Entry] = OrderedDict()

    def remember(self, key: K, addresses: Addresses) -> None:
        self._entries[key] = _Entry(self._clock(), addresses)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def get(self, key: K) -> Addresses | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.at > self.ttl:
            del self._entries[key]
            return None
        return entry.addresses

    def wait(self, key: K) -> float:
        """Seconds until the addresses of ``key`` are likely released (0: ask for them now)."""
        entry = self._entries.get(key)
        return 0.0 if entry is None else max(0.0, entry.at + self.release - self._clock())

    def refused(self, key: K) -> float | None:
        """The API server said the addresses are taken: seconds to wait before asking again, or None when
        enough tries were made (the caller then takes new addresses)."""
        entry = self._entries.get(key)
        if entry is None or entry.refusals >= self.retries:
            return None
        entry.refusals += 1
        return float(self.retry_base * 2.0 ** (entry.refusals - 1))

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)
