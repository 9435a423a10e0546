"""client-go's event correlator (tools/record/events_cache.go), as a pure piece on an injected clock.

Three steps for every event, in client-go's order:

1. aggregate: events about one object with the same type and reason but *different* messages are
   counted; from the ``max_similar``-th distinct message within ``similar_window`` on they are folded
   into one event whose message says "(combined from similar events): <latest message>";
2. deduplicate: an event identical to one seen before (same object, type, reason, message) is not a new
   Event object: the old one's ``count`` rises and it is sent again as a PATCH;
3. spam filter: a token bucket per involved object (``burst`` events, then one per ``1/qps`` seconds);
   events over budget are dropped (still counted, so the next one that passes carries the true count).

All caches are LRUs of ``cache_size`` entries, so memory is bounded whatever the cluster does.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["AGGREGATE_PREFIX", "EventCorrelator", "EventIdentity", "Observation"]

AGGREGATE_PREFIX = "(combined from similar events): "
# client-go defaults (events_cache.go): 4096-entry LRUs, 10 similar events in 10 minutes, a per-object
# bucket of 25 refilled at one event per 5 minutes.
_CACHE_SIZE = 4096
_MAX_SIMILAR = 10
_SIMILAR_WINDOW = 600.0
_BURST = 25
_QPS = 1.0 / 300.0

K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class EventIdentity:
    """What makes two events "the same": the involved object, type, reason and message."""

    namespace: str
    kind: str
    name: str
    uid: str
    api_version: str
    type: str
    reason: str
    message: str

    @property
    def object_key(self) -> tuple[str, ...]:
        return (self.namespace, self.kind, self.name, self.uid, self.api_version)


@dataclass(frozen=True, slots=True)
class Observation:
    """What to send: the Event ``name`` (new when ``count`` is 1, else an existing one to PATCH), its
    ``count`` and ``message`` (aggregated events get the combined message), and ``first_seen`` (the
    token the caller stored as firstTimestamp when the Event was created)."""

    name: str
    count: int
    message: str
    first_seen: str


@dataclass(slots=True)
class _Similar:
    messages: set[str]
    since: float


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float


class EventCorrelator:
    def __init__(self, clock: Callable[[], float], *, burst: int = _BURST, qps: float = _QPS,
                 max_similar: int = _MAX_SIMILAR, similar_window: float = _SIMILAR_WINDOW,
                 cache_size: int = _CACHE_SIZE) -> None:
        self._clock = clock
        self._burst = burst
        self._qps = qps
        self._max_similar = max_similar
        self._similar_window = similar_window
        self._similar: _Lru[tuple[str, ...], _Similar] = _Lru(cache_size)
        self._seen: _Lru[EventIdentity, Observation] = _Lru(cache_size)
        self._buckets: _Lru[tuple[str, ...], _Bucket] = _Lru(cache_size)
        self.filtered = 0  # events dropped by the spam filter

    def observe(self, event: EventIdentity, *, now_stamp: str) -> Observation | None:
        """The Event to send for ``event``, or None when the per-object budget is spent.
        ``now_stamp`` becomes ``first_seen`` of a new Event."""
        identity, message = self._aggregate(event)
        last = self._seen.get(identity)
        if last is None:
            obs = Observation(f"{event.name}.{secrets.token_hex(8)}", 1, message, now_stamp)
        else:
            obs = Observation(last.name, last.count + 1, message, last.first_seen)
        self._seen.put(identity, obs)
        if not self._allow(event.object_key):
            self.filtered += 1
            return None
        return obs

    def _aggregate(self, event: EventIdentity) -> tuple[EventIdentity, str]:
        """(the identity to deduplicate on, the message to send)."""
        key = (*event.object_key, event.type, event.reason)
        now = self._clock()
        similar = self._similar.get(key)
        if similar is None or now - similar.since > self._similar_window:
            similar = _Similar(set(), now)
            self._similar.put(key, similar)
        if len(similar.messages) < self._max_similar:  # bounded: past the limit one more is moot
            similar.messages.add(event.message)
        if len(similar.messages) < self._max_similar:
            return event, event.message
        # From here on one Event per (object, type, reason): its identity ignores the message.
        identity = EventIdentity(event.namespace, event.kind, event.name, event.uid, event.api_version,
                                 event.type, event.reason, AGGREGATE_PREFIX)
        return identity, AGGREGATE_PREFIX + event.message

    def _allow(self, key: tuple[str, ...]) -> bool:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self._burst), now)
            self._buckets.put(key, bucket)
        bucket.tokens = min(float(self._burst), bucket.tokens + (now - bucket.last) * self._qps)
        bucket.last = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def cached(self) -> int:
        """Entries held across the caches (for tests: bounded by 3 x cache_size)."""
        return len(self._similar) + len(self._seen) + len(self._buckets)
