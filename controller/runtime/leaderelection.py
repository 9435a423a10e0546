"""Leader election on a ``coordination.k8s.io/v1`` Lease.

Mirrors client-go ``tools/leaderelection`` with its ``resourcelock.LeaseLock``:

* ``tryAcquireOrRenew``: a leader first renews optimistically by PUTting its cached Lease (its
  ``resourceVersion`` makes a concurrent writer produce 409); otherwise GET, create on 404, and take
  the lease only if it is free (empty holder) or expired.
* Expiry is judged on the *local monotonic* clock: ``observed_time`` is when we last saw the raw record
  change, and the lease is expired iff ``observed_time + leaseDurationSeconds <= now``. The holder's
  ``renewTime`` is never trusted, so wall-clock skew between replicas does not matter.
* Acquire retries every ``retry_period`` with jitter factor 1.2; a leader that does not renew within
  ``renew_deadline`` of its last successful renew is fenced (``is_leader`` turns False) and
  :class:`LeadershipLost` is raised. Unlike client-go (whose deadline window starts one retry period
  after the last renew), the window starts at the last successful renew, which is stricter.
* Release (client-go ``ReleaseOnCancel``) writes ``holderIdentity=""`` and ``leaseDurationSeconds=1``
  so a standby takes over at once instead of waiting a whole lease duration.

Wiring (one task group, so a lost lease cancels every guarded task)::

    elector = LeaderElector(cfg, KubeLeaseApi(client, timeout=cfg.request_timeout))
    await elector.run(start_workers)   # raises ExceptionGroup containing LeadershipLost on loss
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, NoReturn

import anyio
import structlog

from .clock import SYSTEM_CLOCK, Clock
from .kube.errors import Conflict, KubeError, NotFound
from .leaselock import (
    JITTER_FACTOR,
    LeaderElectionConfig,
    LeaderElectionRecord,
    LeaseApi,
    micro_time,
    new_lease,
    with_record,
)

__all__ = ["LeaderElector", "LeadershipLost", "NotLeader"]

log = structlog.get_logger(__name__)

JsonObj = dict[str, Any]


class NotLeader(Exception):
    """A write was attempted without leadership: the fence refused it."""


class LeadershipLost(Exception):
    """Raised by :meth:`LeaderElector.renew_loop` once the lease can no longer be trusted to be ours."""

    def __init__(self, lease: str, reason: str) -> None:
        self.lease = lease
        self.reason = reason
        super().__init__(f"leader election lost: lease {lease}: {reason}")


class _Outcome(enum.Enum):
    HELD = "held"  # the lease is ours now
    OTHER = "other"  # someone else holds an unexpired lease
    FAILED = "failed"  # API error, conflict or timeout: try again later


# Errors that fail one attempt; anything else is a bug and propagates.
_ATTEMPT_ERRORS = (KubeError, TimeoutError)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _jittered(period: float) -> float:
    # client-go wait.Jitter: period + rand * factor * period.
    return period * (1.0 + random.random() * JITTER_FACTOR)


class LeaderElector:
    """One candidate for one Lease. See the module docstring for the protocol."""

    def __init__(
        self,
        config: LeaderElectionConfig,
        api: LeaseApi,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_change: Callable[[bool], object] | None = None,
    ) -> None:
        self.config = config
        self._api = api
        # Monotonic: expiry is judged on our own clock; Lease timestamps are informational only (client-go
        # does the same). Every sleep and timeout is on it too, so a fake clock drives it all in tests.
        self.clock = clock
        self._clock: Callable[[], float] = clock.now
        self._on_change = on_change
        self._fields = {
            "lease": f"{config.lock_namespace}/{config.lock_name}",
            "identity": config.identity,
        }
        self._lease: JsonObj | None = None  # last object read or written: its resourceVersion
        self._observed: LeaderElectionRecord | None = None
        self._observed_time = 0.0
        self._leading = False
        self._renewed_at = -math.inf  # start of the last successful write of our own holdership
        self._last_error: str | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True between :meth:`acquire` and loss/release. Also False as soon as ``renew_deadline`` has
        passed since the last successful renew, even if :meth:`renew_loop` has not noticed yet (a
        starved loop must not extend our term). Guarded writes should check it."""
        if not self._leading:
            return False
        return self._clock() < self._renewed_at + self.config.renew_deadline

    def healthy(self, *, max_tolerable_expired: float = 20.0) -> bool:
        """client-go ``HealthzAdaptor.Check``: unhealthy only if we hold the record but have not renewed
        it for ``lease_duration + max_tolerable_expired`` (a wedged leader that failed to exit).
        20 s is the tolerance kube-controller-manager uses."""
        if self._observed is None or self._observed.holder_identity != self.config.identity:
            return True
        age = self._clock() - self._observed_time
        return age <= self.config.lease_duration + max_tolerable_expired

    def _set_leading(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if self._on_change is not None:
            self._on_change(leading)

    def _lose(self, reason: str) -> NoReturn:
        # Fence first: nothing may act as leader once we have judged the lease lost.
        self._set_leading(False)
        log.error("lease_lost", reason=reason, error=self._last_error, **self._fields)
        raise LeadershipLost(self._fields["lease"], reason)

    # -- public operations ---------------------------------------------------------------------

    async def acquire(self) -> None:
        """Blocks until we hold the lease (client-go ``acquire``: ``JitterUntil(RetryPeriod, 1.2)``)."""
        if self._leading:
            if self.is_leader:
                return
            self._set_leading(False)  # stale term (renew_loop never ran or was cancelled): start over
        while True:
            outcome = await self._try_acquire_or_renew()
            if outcome is _Outcome.HELD:
                self._set_leading(True)
                transitions = self._observed.lease_transitions if self._observed else 0
                log.info("lease_acquired", transitions=transitions, **self._fields)
                return
            if outcome is _Outcome.OTHER and self._observed is not None:
                log.debug("lease_held_by_other", holder=self._observed.holder_identity, **self._fields)
            else:
                log.info("lease_acquire_failed", error=self._last_error, **self._fields)
            await self.clock.sleep(_jittered(self.config.retry_period))

    async def renew_loop(self) -> None:
        """Renews every ``retry_period`` while leading; never returns normally.

        Raises :class:`LeadershipLost` when no renew has succeeded for ``renew_deadline`` (a hung
        request is cut off at the deadline) or when the lease turns out to be held by someone else.
        Run it in the same task group as the guarded work so the loss cancels that work.
        """
        if not self._leading:
            raise RuntimeError("renew_loop() needs leadership: await acquire() first")
        cfg = self.config
        while True:
            deadline = self._renewed_at + cfg.renew_deadline
            now = self._clock()
            await self.clock.sleep(max(0.0, min(now + cfg.retry_period, deadline) - now))
            if self._clock() >= deadline:
                self._lose("renew_deadline_exceeded")
            outcome = _Outcome.FAILED
            async with self.clock.move_on_after(deadline - self._clock()) as scope:
                outcome = await self._try_acquire_or_renew()
            if scope.cancelled_caught:
                self._last_error = "request still pending at the renew deadline"
            if outcome is _Outcome.HELD:
                continue
            if outcome is _Outcome.OTHER:
                self._lose("held_by_other")
            if self._clock() >= deadline:
                self._lose("renew_deadline_exceeded")
            log.warning(
                "lease_renew_failed",
                error=self._last_error,
                remaining=round(deadline - self._clock(), 3),
                **self._fields,
            )

    async def release(self) -> None:
        """Gives the lease up (client-go ``release``) if the server still shows us as holder.

        Call only after all guarded work has stopped. Shielded and bounded by ``renew_deadline``, so it
        is safe in a ``finally`` during cancellation; errors are logged, never raised.
        """
        self._set_leading(False)  # fence before the write
        if self._observed is None or self._observed.holder_identity != self.config.identity:
            return
        async with self.clock.move_on_after(self.config.renew_deadline, shield=True) as scope:
            try:
                await self._release_once()
            except NotFound:
                log.info("lease_release_skipped", reason="not_found", **self._fields)
            except Conflict as exc:
                log.info("lease_release_skipped", reason="conflict", error=_describe(exc), **self._fields)
            except _ATTEMPT_ERRORS as exc:
                log.warning("lease_release_failed", error=_describe(exc), **self._fields)
        if scope.cancelled_caught:
            log.warning("lease_release_failed", error="timed out", **self._fields)

    async def run(self, work: Callable[[], Awaitable[object]]) -> None:
        """acquire → run ``work`` with :meth:`renew_loop` in one task group → release.

        Returns when ``work`` returns (leadership is then given up). A lost lease cancels ``work``
        and surfaces as an ``ExceptionGroup`` containing :class:`LeadershipLost` (use ``except*``).
        The lease is released only after ``work`` has finished, and only if ``release_on_cancel``.
        """
        await self.acquire()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.renew_loop)
                await work()
                tg.cancel_scope.cancel()
        finally:
            if self.config.release_on_cancel:
                await self.release()
            else:
                self._set_leading(False)

    # -- the protocol --------------------------------------------------------------------------

    async def _bounded(self, call: Callable[[], Awaitable[JsonObj]]) -> JsonObj:
        # Our own bound as well as the client's: a fake or a stuck connection must not stall renewal.
        async with self.clock.move_on_after(self.config.request_timeout):
            return await call()
        raise TimeoutError(f"no answer within {self.config.request_timeout}s")

    def _record_write(self, stored: JsonObj, written: LeaderElectionRecord, started: float) -> None:
        self._lease = stored
        has_spec = isinstance(stored.get("spec"), dict)
        self._observed = LeaderElectionRecord.from_lease(stored) if has_spec else written
        # The attempt's start, not its end: conservative for our own deadline and expiry.
        self._observed_time = started
        if self._observed.holder_identity == self.config.identity:
            self._renewed_at = started

    def _lease_valid(self, now: float) -> bool:
        assert self._observed is not None
        return self._observed_time + self._observed.lease_duration_seconds > now

    async def _try_acquire_or_renew(self) -> _Outcome:
        """client-go ``tryAcquireOrRenew``, step for step."""
        cfg = self.config
        ns, name = cfg.lock_namespace, cfg.lock_name
        self._last_error = None
        started = self._clock()
        stamp = micro_time()
        mine = LeaderElectionRecord(
            holder_identity=cfg.identity,
            lease_duration_seconds=cfg.lease_duration_seconds,
            acquire_time=stamp,
            renew_time=stamp,
            lease_transitions=0,
        )

        # 1. Fast path: the leader PUTs its cached object; a concurrent writer makes this 409.
        cached = self._lease
        observed = self._observed
        if (
            cached is not None
            and observed is not None
            and observed.holder_identity == cfg.identity
            and self._lease_valid(started)
        ):
            record = replace(
                mine, acquire_time=observed.acquire_time, lease_transitions=observed.lease_transitions
            )
            try:
                body = with_record(cached, record)
                stored = await self._bounded(lambda: self._api.replace(ns, name, body))
            except _ATTEMPT_ERRORS as exc:
                log.debug("lease_fast_renew_failed", error=_describe(exc), **self._fields)
            else:
                self._record_write(stored, record, started)
                return _Outcome.HELD

        # 2. Read the lease; create it if it does not exist.
        try:
            current_obj = await self._bounded(lambda: self._api.get(ns, name))
        except NotFound:
            try:
                stored = await self._bounded(lambda: self._api.create(ns, new_lease(ns, name, mine)))
            except _ATTEMPT_ERRORS as exc:
                self._last_error = _describe(exc)
                return _Outcome.FAILED
            self._record_write(stored, mine, started)
            return _Outcome.HELD
        except _ATTEMPT_ERRORS as exc:
            self._last_error = _describe(exc)
            return _Outcome.FAILED

        # 3. Expiry clock restarts only when the raw record changes.
        self._lease = current_obj
        current = LeaderElectionRecord.from_lease(current_obj)
        if current != self._observed:
            self._observed = current
            self._observed_time = self._clock()
        if current.holder_identity and current.holder_identity != cfg.identity and self._lease_valid(started):
            return _Outcome.OTHER

        # 4. The holder keeps acquireTime/transitions; a new holder starts a new term.
        if current.holder_identity == cfg.identity:
            record = replace(
                mine, acquire_time=current.acquire_time, lease_transitions=current.lease_transitions
            )
        else:
            record = replace(mine, lease_transitions=current.lease_transitions + 1)
        try:
            body = with_record(current_obj, record)
            stored = await self._bounded(lambda: self._api.replace(ns, name, body))
        except _ATTEMPT_ERRORS as exc:
            self._last_error = _describe(exc)
            return _Outcome.FAILED
        self._record_write(stored, record, started)
        return _Outcome.HELD

    async def _release_once(self) -> None:
        cfg = self.config
        ns, name = cfg.lock_namespace, cfg.lock_name
        observed = self._observed
        assert observed is not None
        assert self._lease is not None
        started = self._clock()
        stamp = micro_time()
        record = LeaderElectionRecord(
            holder_identity="",
            lease_duration_seconds=1,
            acquire_time=stamp,
            renew_time=stamp,
            lease_transitions=observed.lease_transitions,
        )
        lease = self._lease
        try:
            stored = await self._bounded(lambda: self._api.replace(ns, name, with_record(lease, record)))
        except Conflict:
            # Our cached resourceVersion is stale: re-read, and release only if it is still ours.
            fresh = await self._bounded(lambda: self._api.get(ns, name))
            fresh_record = LeaderElectionRecord.from_lease(fresh)
            if fresh_record.holder_identity != cfg.identity:
                log.info("lease_release_skipped", reason="held_by_other",
                         holder=fresh_record.holder_identity, **self._fields)
                return
            record = replace(record, lease_transitions=fresh_record.lease_transitions)
            stored = await self._bounded(lambda: self._api.replace(ns, name, with_record(fresh, record)))
        self._record_write(stored, record, started)
        log.info("lease_released", transitions=record.lease_transitions, **self._fields)


