"""Authentication: OAuth 2.0 client credentials with private_key_jwt, bearer tokens.

Routes are authenticated by default: every ``/v1`` route declares a ``Principal``
dependency with the scopes it needs (``Security(require, scopes=[...])``). A bad
or missing token is 401 with ``WWW-Authenticate``; a valid token without the
scope is 403. Both leave an audit event.

Each request checks that its client and the client's agency are still active.
That answer is cached per process for at most ``STATUS_TTL`` seconds (active
clients only): ``forget_principals()`` drops the cache, and
``app.services.agencies.set_status`` calls it when the change is made and
again when it commits, so a suspension takes effect at once in the worker that
made it, and within ``STATUS_TTL`` seconds in every other worker (each has its
own cache). Tokens are short-lived anyway; no other client or agency field
that ``require`` reads can change.

The signature check of an access token is remembered per process too (the
same token under the same server key verifies the same way every time); its
claims, expiry first, are validated on every request.
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Request, Security
from fastapi.security import SecurityScopes
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey
from sqlalchemy import select
from sqlmodel import col

from app import errors
from app.context import agency_var, client_var
from app.crypto import keys
from app.db import Db
from app.models.tables import Agency, ApiClient
from app.services.audit import Action, Actor, Outcome, PendingEvent, denied
from app.services.server_keys import ServerKeys

TOKEN_ALGORITHMS = ["EdDSA", "Ed25519"]


class Role(StrEnum):
    CASEWORKER = "caseworker"
    LIAISON = "liaison"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Scope(StrEnum):
    REFERRALS_SEND = "referrals:send"
    REFERRALS_READ = "referrals:read"
    REFERRALS_STATUS = "referrals:status"
    AGENCIES_READ = "agencies:read"
    AGENCIES_ADMIN = "agencies:admin"
    AUDIT_READ = "audit:read"
    AUDIT_OWN = "audit:own"
    WEBHOOKS_MANAGE = "webhooks:manage"
    SERVICES_WRITE = "services:write"  # publish the own agency's services and capacity


ROLE_SCOPES: dict[Role, tuple[Scope, ...]] = {
    Role.CASEWORKER: (
        Scope.REFERRALS_SEND,
        Scope.REFERRALS_READ,
        Scope.REFERRALS_STATUS,
        Scope.AGENCIES_READ,
        Scope.AUDIT_OWN,
        Scope.WEBHOOKS_MANAGE,
        Scope.SERVICES_WRITE,
    ),
    Role.LIAISON: (
        Scope.REFERRALS_READ,
        Scope.REFERRALS_STATUS,
        Scope.AGENCIES_READ,
        Scope.AUDIT_OWN,
        Scope.WEBHOOKS_MANAGE,
    ),
    Role.AUDITOR: (Scope.AUDIT_READ, Scope.AGENCIES_READ),
    Role.ADMIN: (Scope.AGENCIES_READ, Scope.AGENCIES_ADMIN, Scope.SERVICES_WRITE),
}


@dataclass(frozen=True)
class Principal:
    client_id: str
    agency_id: str
    agency_kind: str
    role: Role
    scopes: frozenset[str]

    @property
    def actor(self) -> Actor:
        return Actor(client_id=self.client_id, agency_id=self.agency_id, role=str(self.role))


def okp_public(raw: bytes, kid: str | None = None) -> OKPKey:
    from app.crypto.encoding import b64url_encode

    jwk: dict[str, str | list[str]] = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    return OKPKey.import_key({**jwk, "kid": kid} if kid else jwk)


def token_key_set(server_keys: ServerKeys) -> KeySet:
    """What access tokens verify against, chosen by the token's ``kid``: the current
    key and, during a rotation, the previous one (``keys.previous_token_key_file``)."""
    return KeySet([okp_public(k, keys.kid(k)) for k in server_keys.token_verify_keys])


def okp_private(seed: bytes, public: bytes) -> OKPKey:
    from app.crypto.encoding import b64url_encode

    return OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(public), "d": b64url_encode(seed)}
    )


def decode_jws(token: str, key: OKPKey | KeySet) -> jwt.Token:
    """Verify an EdDSA/Ed25519 JWS. joserfc warns that "EdDSA" is deprecated by
    RFC 9864; the design accepts both names, so that warning is expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="EdDSA is deprecated")
        return jwt.decode(token, key, algorithms=TOKEN_ALGORITHMS)


def issue_access_token(
    server_keys: ServerKeys, *, issuer: str, client: ApiClient, ttl: int
) -> tuple[str, list[str]]:
    now = int(time.time())
    scopes = [str(s) for s in ROLE_SCOPES[Role(client.role)]]
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": client.client_id,
        "agency": client.agency_id,
        "role": client.role,
        "scope": " ".join(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": str(uuid.uuid4()),
    }
    key = okp_private(server_keys.token_seed, server_keys.token_public)
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": server_keys.token_kid}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="EdDSA is deprecated")
        token = jwt.encode(header, claims, key, algorithms=["EdDSA"])
    return token, scopes


STATUS_TTL = 2.0
_MAX_CACHED = 10_000
_verified: dict[tuple[tuple[bytes, ...], str], dict[str, Any]] = {}


def _verified_claims(
    token: str, request: Request, server_keys: ServerKeys | None
) -> dict[str, Any]:
    """The claims of ``token`` once its signature verified under this server's keys."""
    if server_keys is None:
        return decode_jws(token, request.app.state.token_verify_key).claims
    key = (tuple(server_keys.token_verify_keys), token)  # a rotation starts a new cache
    claims = _verified.get(key)
    if claims is None:
        claims = decode_jws(token, request.app.state.token_verify_key).claims
        if len(_verified) >= _MAX_CACHED:
            _verified.clear()
        _verified[key] = claims
    return claims


_status_cache: dict[tuple[int, str], tuple[float, tuple[str, str, str]]] = {}
_generation = 0  # bumped by every forget_principals()


def forget_principals() -> None:
    """Drop every cached client status (after a suspension or reactivation)."""
    global _generation
    _generation += 1
    _status_cache.clear()


async def _active_client(db: Db, client_id: str) -> tuple[str, str, str] | None:
    """(agency id, agency kind, role) of an active client of an active agency, or None."""
    key = (id(db.bind), client_id)  # one cache per database (tests run several in a process)
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
    if row is None or row[0] != "active" or row[3] != "active":
        _status_cache.pop(key, None)
        return None
    found = (str(row[2]), str(row[4]), str(row[1]))
    # Not if a status changed while this read ran: it may have read the old one.
    if generation == _generation:
        if len(_status_cache) >= _MAX_CACHED:
            _status_cache.clear()
        _status_cache[key] = (now + STATUS_TTL, found)
    return found


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


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
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing_token", "a bearer access token is required")
    server_keys: ServerKeys = request.app.state.server_keys
    try:
        claims = _verified_claims(token, request, server_keys)
        jwt.JWTClaimsRegistry(exp={"essential": True}, sub={"essential": True}, leeway=0).validate(
            claims
        )
    except (JoseError, ValueError):
        raise _unauthorized("invalid_token", "the access token is invalid or expired") from None
    if claims.get("iss") != request.app.state.issuer or server_keys is None:
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
    missing = [s for s in security_scopes.scopes if s not in principal.scopes]
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
