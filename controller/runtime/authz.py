"""Who may read ``/metrics``: the API server's TokenReview and SubjectAccessReview, cached
(controller-runtime ``filters.WithAuthenticationAndAuthorization``)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog

from .clock import SYSTEM_CLOCK
from .kube.errors import KubeError

__all__ = ["AUTHN_TTL", "AUTHZ_ALLOW_TTL", "AUTHZ_DENY_TTL", "Authorizer", "KubeAuthorizer", "ReviewClient"]

log = structlog.get_logger(__name__)

# controller-runtime's delegating authn/authz cache TTLs.
AUTHN_TTL: Final = 60.0
AUTHZ_ALLOW_TTL: Final = 300.0
AUTHZ_DENY_TTL: Final = 30.0
REVIEW_TIMEOUT: Final = 10.0
_CACHE_SIZE: Final = 1024


class Authorizer(Protocol):
    """Decides one request: 200 allowed, 401 unauthenticated, 403 forbidden, 500 review failed."""

    async def authorize(self, token: str, path: str, verb: str) -> int: ...




class ReviewClient(Protocol):
    """The part of :class:`controller.runtime.kube.client.KubeClient` the authorizer needs."""

    # Plain def returning an Awaitable: matches KubeClient's ``async def request`` structurally.
    def request(
        self, method: str, path: str, *, body: Any = None, timeout: float | None = None
    ) -> Awaitable[dict[str, Any]]: ...


_V = TypeVar("_V")


class _TTLCache(Generic[_V]):
    """Bounded map with per-entry expiry; evicts the oldest insert when full."""

    def __init__(self, max_size: int, clock: Callable[[], float]) -> None:
        self._max_size = max_size
        self._clock = clock
        self._items: OrderedDict[Any, tuple[float, _V]] = OrderedDict()

    def get(self, key: Any) -> _V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= self._clock():
            del self._items[key]
            return None
        return item[1]

    def put(self, key: Any, value: _V, ttl: float) -> None:
        self._items.pop(key, None)
        self._items[key] = (self._clock() + ttl, value)
        while len(self._items) > self._max_size:
            self._items.popitem(last=False)


@dataclass(frozen=True)
class _Authn:
    user: dict[str, Any] | None  # TokenReview status.user, None when not authenticated


class KubeAuthorizer:
    """Authorizer backed by the API server's TokenReview and SubjectAccessReview APIs.

    Caches are keyed by the SHA-256 of the token, never the token; tokens are never logged. Review
    errors are not cached and answer 500, so the next scrape retries.
    """

    def __init__(
        self, client: ReviewClient, *, clock: Callable[[], float] | None = None, cache_size: int = _CACHE_SIZE
    ) -> None:
        self._client = client
        clock = clock or SYSTEM_CLOCK.now
        self._authn: _TTLCache[_Authn] = _TTLCache(cache_size, clock)
        self._authz: _TTLCache[bool] = _TTLCache(cache_size, clock)

    async def authorize(self, token: str, path: str, verb: str) -> int:
        digest = hashlib.sha256(token.encode()).digest()
        try:
            authn = self._authn.get(digest)
            if authn is None:
                authn = await self._review_token(token)
                self._authn.put(digest, authn, AUTHN_TTL)
            if authn.user is None:
                return 401
            key = (digest, path, verb)
            allowed = self._authz.get(key)
            if allowed is None:
                allowed = await self._review_access(authn.user, path, verb)
                self._authz.put(key, allowed, AUTHZ_ALLOW_TTL if allowed else AUTHZ_DENY_TTL)
        except KubeError as exc:
            # The message comes from the server's Status, which never echoes the token.
            log.warning("metrics auth review failed", error=str(exc))
            return 500
        return 200 if allowed else 403

    async def _review_token(self, token: str) -> _Authn:
        review = await self._client.request(
            "POST",
            "/apis/authentication.k8s.io/v1/tokenreviews",
            body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
            timeout=REVIEW_TIMEOUT,
        )
        status = review.get("status") or {}
        user = status.get("user")
        if status.get("authenticated") is True and isinstance(user, dict):
            return _Authn(user)
        return _Authn(None)

    async def _review_access(self, user: dict[str, Any], path: str, verb: str) -> bool:
        spec: dict[str, Any] = {"nonResourceAttributes": {"path": path, "verb": verb}}
        for field, source in (("user", "username"), ("uid", "uid"), ("groups", "groups"), ("extra", "extra")):
            if user.get(source):
                spec[field] = user[source]
        review = await self._client.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            body={"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec},
            timeout=REVIEW_TIMEOUT,
        )
        return (review.get("status") or {}).get("allowed") is True
