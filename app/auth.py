"""Authentication as a route dependency: bearer access tokens, scopes per route.

Routes are authenticated by default: every ``/v1`` route declares a ``Principal``
dependency with the scopes it needs (``Security(require, scopes=[...])``). A bad
or missing token is 401 with ``WWW-Authenticate``; a valid token without the
scope is 403. Both leave an audit event.

Identity itself (``Principal``, roles, scopes) lives in ``app.identity`` and the
token machinery (keys, issuing, verifying, the bearer header, the one cache of
verified tokens) in ``app.tokens``; this module is the HTTP part that joins
them to a request.

Each request checks that its client and the client's agency are still active.
That answer is cached per process for at most ``STATUS_TTL`` seconds (active
clients only): ``forget_principals()`` drops the cache. It is registered as a
status-change hook of ``app.services.agencies`` (which never imports the HTTP
layer), called when a status change is made and again when it commits, so a
suspension takes effect at once in the worker that made it, and within
``STATUS_TTL`` seconds in every other worker (each has its own cache). Tokens
are short-lived anyway; no other client or agency field that ``require`` reads
can change.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import SecurityScopes
from joserfc import jwt
from joserfc.errors import JoseError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from app import errors
from app.context import agency_var, client_var
from app.db import database_key
from app.deps import Db, open_transaction
from app.identity import ROLE_SCOPES, Actor, Principal, Role, Scope
from app.models.tables import Agency, ApiClient
from app.services import agencies
from app.services.audit import Action, Outcome, PendingEvent, denied
from app.services.server_keys import ServerKeys
from app.tokens import bearer_token, verified_tokens
from app.vocab import AgencyStatus, ClientStatus

__all__ = [
    "ROLE_SCOPES",
    "Admin",
    "AnyPrincipal",
    "Caseworker",
    "DirectoryReader",
    "Principal",
    "Reader",
    "Role",
    "Scope",
    "ServiceWriter",
    "StatusWriter",
    "WebhookManager",
    "forget_principals",
    "require",
]

STATUS_TTL = 2.0
_MAX_CACHED = 10_000
_status_cache: dict[tuple[str, str], tuple[float, tuple[str, str, str]]] = {}
_generation = 0  # bumped by every forget_principals()


def forget_principals() -> None:
    """Drop every cached client status (after a suspension or reactivation)."""
    global _generation
    _generation += 1
    _status_cache.clear()


agencies.on_status_change(forget_principals)


async def _active_client(db: Db, client_id: str) -> tuple[str, str, str] | None:
    """(agency id, agency kind, role) of an active client of an active agency, or None."""
    # one cache per database (tests run several in a process); the bind of the table read,
    # as a session bound table by table has no ``db.bind``
    key = (database_key(db.get_bind(ApiClient)), client_id)
    now = time.monotonic()
    hit = _status_cache.get(key)
    if hit is not None and hit[0] > now:
        return hit[1]
    generation = _generation
    row = (
        await db.execute(
            select(
                col(ApiClient.status), col(ApiClient.role), col(Agency.id), col(Agency.status),
                col(Agency.kind),
            )
            .join(Agency, col(Agency.id) == col(ApiClient.agency_id))
            .where(col(ApiClient.client_id) == client_id)
        )
    ).first()
    if row is None or row[0] != ClientStatus.ACTIVE or row[3] != AgencyStatus.ACTIVE:
        _status_cache.pop(key, None)
        return None
    found = (str(row[2]), str(row[4]), str(row[1]))
    # Not if a status changed while this read ran: it may have read the old one.
    if generation == _generation:
        if len(_status_cache) >= _MAX_CACHED:
            _status_cache.clear()
        _status_cache[key] = (now + STATUS_TTL, found)
    return found


def _unauthorized(reason: str, detail: str, client_id: str | None = None) -> errors.Unauthorized:
    return errors.Unauthorized(
        detail,
        audit=denied(
            Actor(client_id=client_id, agency_id=None, role=None),
            Action.ACCESS_DENIED,
            "token",
            None,
            {"reason": reason},
        ),
    )


async def require(security_scopes: SecurityScopes, request: Request, db: Db) -> Principal:
    """The authenticated caller, refused unless it holds every scope the route declares."""
    return await authenticate(request, db, security_scopes.scopes)


async def authenticate(request: Request, db: AsyncSession, scopes: Sequence[str]) -> Principal:
    """The caller of ``request``, refused unless it holds every one of ``scopes``."""
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        raise _unauthorized("missing_token", "a bearer access token is required")
    server_keys: ServerKeys | None = request.app.state.server_keys
    if server_keys is None:
        raise _unauthorized("invalid_token", "the access token was not issued here")
    try:
        claims = verified_tokens.claims(
            token, server_keys.token_verify_keys, request.app.state.token_verify_key
        )
        jwt.JWTClaimsRegistry(exp={"essential": True}, sub={"essential": True}, leeway=0).validate(
            claims
        )
    except (JoseError, ValueError):
        raise _unauthorized("invalid_token", "the access token is invalid or expired") from None
    if claims.get("iss") != request.app.state.issuer:
        raise _unauthorized("invalid_token", "the access token was not issued here")
    client_id = str(claims["sub"])
    active = await _active_client(db, client_id)
    if active is None:
        raise _unauthorized("inactive", "the client or its agency is not active", client_id)
    agency_id, agency_kind, role = active
    principal = Principal(
        client_id=client_id,
        agency_id=agency_id,
        agency_kind=agency_kind,
        role=Role(role),
        scopes=frozenset(str(claims.get("scope", "")).split()),
    )
    client_var.set(principal.client_id)
    agency_var.set(principal.agency_id)
    missing = [s for s in scopes if s not in principal.scopes]
    if missing:
        route = request.scope.get("route")
        raise errors.Forbidden(
            f"this route needs the scope {missing[0]}, which the {principal.role} role lacks",
            audit=PendingEvent(
                actor=principal.actor,
                action=Action.ACCESS_DENIED,
                resource_type="route",
                resource_id=f"{request.method} {route.path}" if route else request.url.path,
                outcome=Outcome.DENIED,
                detail={"missing_scope": missing[0]},
            ),
        )
    return principal


Caseworker = Annotated[Principal, Security(require, scopes=[Scope.REFERRALS_SEND])]
Reader = Annotated[Principal, Security(require, scopes=[Scope.REFERRALS_READ])]
StatusWriter = Annotated[Principal, Security(require, scopes=[Scope.REFERRALS_STATUS])]
DirectoryReader = Annotated[Principal, Security(require, scopes=[Scope.AGENCIES_READ])]
Admin = Annotated[Principal, Security(require, scopes=[Scope.AGENCIES_ADMIN])]
AnyPrincipal = Annotated[Principal, Security(require, scopes=[])]
ServiceWriter = Annotated[Principal, Security(require, scopes=[Scope.SERVICES_WRITE])]
WebhookManager = Annotated[Principal, Security(require, scopes=[Scope.WEBHOOKS_MANAGE])]


@dataclass(frozen=True, slots=True)
class Authed:
    """The caller and its transaction, from one flattened dependency (hot routes)."""

    who: Principal
    db: AsyncSession


def authenticated(
    *scopes: Scope, check: Callable[[Principal], object] | None = None
) -> Callable[[Request], AsyncIterator[Authed]]:
    """One dependency for a hot route: its transaction and its authenticated caller.

    The same rules as ``Security(require, scopes=...)`` with ``Db`` (``require``
    and ``app.deps.transaction`` run the same code), solved by FastAPI as one
    dependency instead of a chain of three. ``check`` adds a route's own
    refusal (it raises), inside the transaction so that its event is written.
    """
    wanted = tuple(str(s) for s in scopes)

    async def dependency(request: Request) -> AsyncIterator[Authed]:
        async with open_transaction(request) as db:
            who = await authenticate(request, db, wanted)
            if check is not None:
                check(who)
            yield Authed(who, db)

    return dependency


def hot(*scopes: Scope, check: Callable[[Principal], object] | None = None) -> Any:
    """``Depends`` on ``authenticated(...)``, closed before the response is sent."""
    return Depends(authenticated(*scopes, check=check), scope="function")


ReaderDb = Annotated[Authed, hot(Scope.REFERRALS_READ)]
CaseworkerDb = Annotated[Authed, hot(Scope.REFERRALS_SEND)]
StatusWriterDb = Annotated[Authed, hot(Scope.REFERRALS_STATUS)]
DirectoryReaderDb = Annotated[Authed, hot(Scope.AGENCIES_READ)]
