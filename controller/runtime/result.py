"""What a reconcile returns (controller-runtime's reconcile.Result and TerminalError).

A requeue is an outcome, not an exception: ``Result(requeue_after=2.0)`` asks for the key again in 2 s
and is not a failure; ``Result(requeue=True)`` asks again with the key's rate limit (cache lag, a 409).
An exception is a failure, retried with the rate limit; a :class:`TerminalError` is a failure that no
retry can fix (it is counted and logged, and the key waits for its next change).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Result", "TerminalError"]


@dataclass(frozen=True, slots=True)
class Result:
    requeue: bool = False
    requeue_after: float | None = None
    reason: str = ""  # why, for the log line (not a Kubernetes reason)
    actions: tuple[str, ...] = ()  # what the reconcile did, for the log line

    @property
    def label(self) -> str:
        """The ``result`` label of controller_runtime_reconcile_total."""
        if self.requeue_after:
            return "requeue_after"
        return "requeue" if self.requeue else "success"


class TerminalError(Exception):
    """A failure no retry can fix."""
