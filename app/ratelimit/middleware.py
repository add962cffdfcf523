"""The limits applied to requests: per source address on ``/oauth/token``, per client
(or per address without a valid token) on ``/v1``; over a limit, 429 problem+json."""

from __future__ import annotations

import time
from typing import Any

from joserfc.errors import JoseError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app import errors
from app.context import request_id_var
from app.middleware import send_problem
from app.ratelimit.limiter import Exceeded, RateLimiter
from app.tokens import bearer_token, verified_tokens


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _subject(token: str, state: Any) -> str | None:
    """The client id of a valid, unexpired access token of this server, else None.

    Uses the process's one cache of verified tokens (``app.tokens``): a client
    reuses one token for minutes, so most requests skip the signature check
    (``app.auth.require`` validates every request independently).
    """
    server_keys = getattr(state, "server_keys", None)
    key_set = getattr(state, "token_verify_key", None)
    if server_keys is None or key_set is None:
        return None
    try:
        claims = verified_tokens.claims(token, server_keys.token_verify_keys, key_set)
    except (JoseError, ValueError):
        return None
    exp, sub = claims.get("exp"), claims.get("sub")
    if not isinstance(exp, int | float) or exp <= time.time() or not isinstance(sub, str):
        return None
    if claims.get("iss") != getattr(state, "issuer", None):
        return None
    return sub


async def send_too_many(send: Send, path: str, exceeded: Exceeded) -> None:
    body = errors.problem_bytes(
        429,
        f"rate limit {exceeded.limit.name} ({exceeded.limit.limit} per "
        f"{exceeded.limit.window} s) exceeded; retry after {exceeded.retry_after} s",
        errors.PROBLEM_BASE + "rate-limited",
        request_id=request_id_var.get(),
        instance=path,
    )
    retry = [(b"retry-after", str(exceeded.retry_after).encode())]
    await send_problem(send, 429, body, headers=retry)


class RateLimitMiddleware:
    """Pure ASGI: per-address limit on ``/oauth/token``, per-client limits on ``/v1``."""

    def __init__(self, app: ASGIApp, *, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.limiter.enabled:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limiter = self.limiter
        if path == "/oauth/token":
            hits = [(limiter.token_address, client_address(scope))]
        elif path.startswith("/v1/") or path == "/v1":
            state = scope["app"].state
            token = bearer_token(Headers(scope=scope).get("authorization"))
            subject = _subject(token, state) if token else None
            if subject is not None:
                hits = limiter.api_hits(subject)
            else:
                hits = [(limiter.anonymous, client_address(scope))]
        else:
            await self.app(scope, receive, send)
            return
        engine = getattr(scope["app"].state, "engine", None)
        exceeded = await limiter.hit(hits, engine=engine)
        if exceeded is not None:
            await send_too_many(send, path, exceeded)
            return
        await self.app(scope, receive, send)
