"""Errors, rendered as RFC 9457 problem+json by one handler.

    AppError (status, title, type)
    ├── BadRequest 400
    ├── Unauthorized 401 (adds WWW-Authenticate)
    ├── OAuthError 401 (keeps the RFC 6749 body: error, error_description)
    ├── Forbidden 403
    ├── NotFound 404 (also what a caller gets for a resource it may not see)
    ├── Conflict 409
    ├── UnsupportedMediaType 415
    ├── Unprocessable 422
    ├── PayloadTooLarge 413
    ├── TooManyRequests 429
    └── ServiceUnavailable 503

An error may carry ``audit``: an event to record even though the request's
transaction rolls back (denials and refused logins must leave a trace).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from app.services.audit import PendingEvent

PROBLEM_BASE = "https://refgate.dev/problems/"
PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    slug: ClassVar[str] = "internal"

    def __init__(
        self,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        audit: PendingEvent | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.type = PROBLEM_BASE + (slug or self.slug)
        self.headers = headers or {}
        self.extra = extra or {}
        self.audit = audit


class BadRequest(AppError):
    status = 400
    title = "Bad Request"
    slug = "bad-request"


class Unauthorized(AppError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="refgate", error="invalid_token"')


class OAuthError(AppError):
    """An RFC 6749 token endpoint error: the body keeps ``error``/``error_description``."""

    status = 401
    title = "Unauthorized"
    slug = "oauth"

    def __init__(self, error: str, detail: str, *, status: int = 401, **kwargs: Any) -> None:
        super().__init__(detail, slug=f"oauth/{error}", **kwargs)
        self.error = error
        self.status_code = status
        if status == 401:
            self.headers.setdefault("WWW-Authenticate", 'Bearer realm="refgate"')


class Forbidden(AppError):
    status = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(AppError):
    status = 404
    title = "Not Found"
    slug = "not-found"


class Conflict(AppError):
    status = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(AppError):
    status = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class UnsupportedMediaType(AppError):
    status = 415
    title = "Unsupported Media Type"
    slug = "unsupported-media-type"


class Unprocessable(AppError):
    status = 422
    title = "Unprocessable Content"
    slug = "unprocessable"


class TooManyRequests(AppError):
    status = 429
    title = "Too Many Requests"
    slug = "rate-limited"


class ServiceUnavailable(AppError):
    status = 503
    title = "Service Unavailable"
    slug = "unavailable"


def status_of(exc: AppError) -> int:
    return exc.status_code if isinstance(exc, OAuthError) else exc.status


_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def title_for(status: int) -> str:
    return _TITLES.get(status, "Error")


def problem(
    status: int, detail: str, type_: str, *, title: str | None = None, **members: Any
) -> dict[str, Any]:
    """The RFC 9457 problem document of an error answer: ``type``, ``title``,
    ``status``, ``detail``, then ``members`` (``request_id``, ``instance``, ``errors``,
    the OAuth members) in that order. Every error answer is rendered from here:
    the app's exception handlers, the pure ASGI middleware, the rate limiter and
    the witness."""
    return {
        "type": type_,
        "title": title or title_for(status),
        "status": status,
        "detail": detail,
        **members,
    }


def problem_bytes(
    status: int, detail: str, type_: str, *, title: str | None = None, **members: Any
) -> bytes:
    """``problem()`` as the JSON bytes of a response body."""
    return json.dumps(problem(status, detail, type_, title=title, **members)).encode()


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the problem+json errors a route may return."""
    from app.models.schemas import Problem

    return {
        s: {"model": Problem, "content": {PROBLEM_JSON: {}}, "description": title_for(s)}
        for s in statuses
    }
