"""Typed errors for everything that can go wrong talking to the API server.

    KubeError
    ├── TransportError            no HTTP response (refused, reset, timeout); code label "<error>"
    ├── WatchStalled              a watch produced no line within the inactivity timeout
    └── ApiError                  the server answered with a non-2xx status (or an ERROR watch event)
        ├── BadRequest (400) · Unauthorized (401) · Forbidden (403) · Invalid (422)
        ├── NotFound (404)
        ├── Conflict (409, reason Conflict)
        ├── AlreadyExists (409, reason AlreadyExists)
        ├── Gone (410: resourceVersion expired/too old)
        ├── TooManyRequests (429, honours Retry-After)
        └── ServerError (5xx)

Messages are short and built only from the server's Status ``message``: never headers, never tokens.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlreadyExists",
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "Invalid",
    "KubeError",
    "NotFound",
    "ServerError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "WatchStalled",
    "error_from_status",
]

_MAX_MESSAGE = 300


class KubeError(Exception):
    """Base of every API-boundary error."""


class TransportError(KubeError):
    """The request got no HTTP response."""


class WatchStalled(KubeError):
    """A watch stream stayed silent (no event, no bookmark) past the inactivity timeout."""


class ApiError(KubeError):
    status: int = 0

    def __init__(self, status: int, reason: str, message: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.reason = reason
        self.message = message[:_MAX_MESSAGE]
        self.retry_after = retry_after
        super().__init__(f"{status} {reason}: {self.message}" if self.message else f"{status} {reason}")


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    pass


class Forbidden(ApiError):
    pass


class NotFound(ApiError):
    pass


class Conflict(ApiError):
    pass


class AlreadyExists(ApiError):
    pass


class Gone(ApiError):
    pass


class Invalid(ApiError):
    pass


class TooManyRequests(ApiError):
    pass


class ServerError(ApiError):
    pass


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 410: Gone, 422: Invalid,
    429: TooManyRequests,
}


def error_from_status(status: int, body: Any, *, retry_after: float | None = None) -> ApiError:
    """Maps an HTTP status plus a decoded ``Status`` body (or anything else) to a typed error."""
    reason = ""
    message = ""
    if isinstance(body, dict):
        reason = str(body.get("reason") or "")
        message = str(body.get("message") or "")
        code = body.get("code")
        if isinstance(code, int) and code >= 400:
            status = code  # ERROR watch events carry the real code inside a 200 stream
        details = body.get("details")
        if isinstance(details, dict) and retry_after is None:
            ras = details.get("retryAfterSeconds")
            if isinstance(ras, int | float) and ras > 0:
                retry_after = float(ras)
    cls: type[ApiError]
    if status == 409:
        cls = AlreadyExists if reason == "AlreadyExists" else Conflict
    elif status >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status, ApiError)
    return cls(status, reason or cls.__name__, message, retry_after=retry_after)
