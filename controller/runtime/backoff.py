"""The reflector's retry backoff (client-go ``wait.Backoff`` as the reflector configures it)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """client-go's reflector backoff: 0.8 s doubling to 30 s, jitter 1.0, reset after 2 min of health."""

    initial: float = 0.8
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 1.0
    reset_after: float = 120.0
    _current: float = field(default=0.0, init=False)
    _last_failure: float = field(default=-1e18, init=False)

    def next(self, now: float) -> float:
        if now - self._last_failure > self.reset_after:
            self._current = 0.0
        self._last_failure = now
        self._current = self.initial if self._current == 0 else min(self._current * self.factor, self.cap)
        return self._current * (1 + self.jitter * random.random())
