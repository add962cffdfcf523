"""Authentication: OAuth 2.0 client credentials with private_key_jwt, bearer tokens.

Routes are authenticated by default: every ``/v1`` route declares a ``Principal``
dependency with the scopes it needs (``Security(require, scopes=[...])``). A bad
or missing token is 401 with ``WWW-Authenticate``; a valid token without the
scope is 403. Both leave an audit event.
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
from joserfc.jwk import OKPKey
from sqlalchemy import select

from app import errors
from app.context import agency_var, client_var
from app.db import Db
from app.models.tables import Agency, ApiClient
from app.services.audit import Action, Actor, Outcome, PendingEvent
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


ROLE_SCOPES: dict[Role, tuple[Scope, ...]] = {
    Role.CASEWORKER: (
        Scope.REFERRALS_SEND,
        Scope.REFERRALS_READ,
        Scope.REFERRALS_STATUS,
        Scope.AGENCIES_READ,
        Scope.AUDIT_OWN,
        Scope.WEBHOOKS_MANAGE,
    ),
    Role.LIAISON: (
        Scope.REFERRALS_READ,
        Scope.REFERRALS_STATUS,
        Scope.AGENCIES_READ,
        Scope.AUDIT_OWN,
        Scope.WEBHOOKS_MANAGE,
    ),
    Role.AUDITOR: (Scope.AUDIT_READ, Scope.AGENCIES_READ),
    Role.ADMIN: (Scope.AGENCIES_READ, Scope.AGENCIES_ADMIN),
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


def okp_public(raw: bytes) -> OKPKey:
    from app.crypto.encoding import b64url_encode

    return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)})


def okp_private(seed: bytes, public: bytes) -> OKPKey:
    from app.crypto.encoding import b64url_encode

    return OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(public), "d": b64url_encode(seed)}
    )


def decode_jws(token: str, key: OKPKey) -> jwt.Token:
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
        audit=PendingEvent(
            actor=Actor(client_id=client_id, agency_id=None, role=None),
            action=Action.ACCESS_DENIED,
            resource_type="token",
            resource_id=None,
            outcome=Outcome.DENIED,
            detail={"reason": reason},
        ),
    )


async def require(security_scopes: SecurityScopes, request: Request, db: Db) -> Principal:
    """The authenticated caller, refused unless it holds every scope the route declares."""
    token = _bearer(request)
    if token is None:
        raise errors.Unauthorized("a bearer access token is required")
    server_keys: ServerKeys = request.app.state.server_keys
    try:
        claims = decode_jws(token, request.app.state.token_verify_key).claims
        jwt.JWTClaimsRegistry(exp={"essential": True}, sub={"essential": True}, leeway=0).validate(
            claims
        )
    except (JoseError, ValueError):
        raise _unauthorized("invalid_token", "the access token is invalid or expired") from None
    if claims.get("iss") != request.app.state.issuer or server_keys is None:
        raise _unauthorized("invalid_token", "the access token was not issued here")
    client_id = str(claims["sub"])
    row = (
        await db.execute(
            select(ApiClient.status, ApiClient.role, Agency.id, Agency.status, Agency.kind)
            .join(Agency, Agency.id == ApiClient.agency_id)
            .where(ApiClient.client_id == client_id)
        )
    ).first()
    if row is None or row[0] != "active" or row[3] != "active":
        raise _unauthorized("inactive", "the client or its agency is not active", client_id)
    principal = Principal(
        client_id=client_id,
        agency_id=row[2],
        agency_kind=row[4],
        role=Role(row[1]),
        scopes=frozenset(str(claims.get("scope", "")).split()),
    )
    client_var.set(principal.client_id)
    agency_var.set(principal.agency_id)
    missing = [s for s in security_scopes.scopes if s not in principal.scopes]
    if missing:
        raise errors.Forbidden(
            f"this route needs the scope {missing[0]}, which the {principal.role} role lacks",
            audit=PendingEvent(
                actor=principal.actor,
                action=Action.ACCESS_DENIED,
                resource_type="route",
                resource_id=f"{request.method} {request.scope.get('route').path}"
                if request.scope.get("route")
                else request.url.path,
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
WebhookManager = Annotated[Principal, Security(require, scopes=[Scope.WEBHOOKS_MANAGE])]
