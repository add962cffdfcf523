"""The per-client limit on issued tokens, counted in the token request's transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request

from app import errors
from app.identity import Actor
from app.ratelimit.limiter import RateLimiter
from app.services.audit import Action, Outcome, PendingEvent


async def limit_token_issue(request: Request, db: AsyncSession, issued_to: Actor) -> None:
    """Count a token about to be issued against its client's limit; 429 if over.

    Runs in the token request's transaction: a refusal rolls the issue back (the
    assertion's ``jti`` stays unused) and leaves a ``token:issue`` denied event.
    """
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None or not limiter.enabled:
        return
    client_id = issued_to.client_id or ""
    exceeded = await limiter.hit([(limiter.token_client, client_id)], session=db)
    if exceeded is None:
        return
    raise errors.TooManyRequests(
        f"this client may obtain {exceeded.limit.limit} tokens per minute; reuse the token "
        f"until it expires; retry after {exceeded.retry_after} s",
        headers={"Retry-After": str(exceeded.retry_after)},
        audit=PendingEvent(
            actor=issued_to,
            action=Action.TOKEN_ISSUE,
            resource_type="client",
            resource_id=client_id,
            outcome=Outcome.DENIED,
            detail={"reason": "rate_limited", "limit": exceeded.limit.name},
        ),
    )
