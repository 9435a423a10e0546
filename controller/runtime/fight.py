"""Notices when our own writes keep being undone, and spaces the next ones out.

Another writer that fights us (a mutating webhook, a GitOps self-heal, a second controller) makes every
round a *successful* reconcile, so the work queue's failure backoff never engages: each undo costs one
write and one Event, as fast as the other side can go. client-go has no answer for this; this is ours.

A write is an *undo round* when we are about to write the same desired state again (same
``fingerprint``) within ``window`` seconds of our last write of it: someone changed it back in between.
The first ``threshold`` rounds go through at once (one stray edit is normal); from then on the next
write waits ``base * 2**(rounds - threshold)`` seconds (capped) after the previous one. A write of
anything else, or after a quiet ``window``, starts afresh. :meth:`FightDetector.delay` says how long to
wait; :meth:`FightDetector.wrote` records a write and returns True exactly once per fight, when it
starts, so the caller can report it once.

Pure: no I/O, an injected monotonic clock; state is bounded by the keys written within ``window``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["FightDetector"]

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Writes:
    fingerprint: str
    at: float  # our last write of it
    rounds: int  # consecutive undo rounds so far


class FightDetector(Generic[K]):
    def __init__(self, clock: Callable[[], float], *, threshold: int = 3, base: float = 1.0, cap: float = 60.0,
                 window: float = 300.0) -> None:
        if window <= cap:
            raise ValueError("window must exceed cap, or a capped wait would end every fight")
        self._clock = clock
        self.threshold = threshold
        self.base = base
        self.cap = cap
        self.window = window
        self._writes: OrderedDict[K, _Writes] = OrderedDict()  # oldest write first

    def _rounds_if_written(self, key: K, fingerprint: str, now: float) -> tuple[int, _Writes | None]:
        last = self._writes.get(key)
        if last is None or last.fingerprint != fingerprint or now - last.at > self.window:
            return 0, None
        return last.rounds + 1, last

    def _wait(self, rounds: int) -> float:
        if rounds < self.threshold:
            return 0.0
        return min(self.cap, self.base * 2.0 ** (rounds - self.threshold))

    def delay(self, key: K, fingerprint: str) -> float:
        """Seconds to wait before writing ``fingerprint`` for ``key`` (0: write now)."""
        now = self._clock()
        self._expire(now)
        rounds, last = self._rounds_if_written(key, fingerprint, now)
        if last is None:
            return 0.0
        return max(0.0, last.at + self._wait(rounds) - now)

    def wrote(self, key: K, fingerprint: str) -> bool:
        """Records a write; True when this write is the one that makes it a fight (report it once)."""
        now = self._clock()
        rounds, _ = self._rounds_if_written(key, fingerprint, now)
        self._writes[key] = _Writes(fingerprint, now, rounds)
        self._writes.move_to_end(key)
        self._expire(now)
        return rounds == self.threshold

    def rounds(self, key: K) -> int:
        last = self._writes.get(key)
        return 0 if last is None else last.rounds

    def forget(self, key: K) -> None:
        self._writes.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._writes:
            key, oldest = next(iter(self._writes.items()))
            if now - oldest.at <= self.window:
                return
            del self._writes[key]

    def __len__(self) -> int:
        return len(self._writes)
