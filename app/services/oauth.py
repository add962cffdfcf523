"""OAuth 2.0 client credentials with private_key_jwt (RFC 7523, RFC 6749 §4.4).

The client proves possession of its Ed25519 key with a short-lived JWT:
iss = sub = client_id, aud = the token endpoint URL, exp at most
``assertion_max_lifetime`` ahead, and a ``jti`` that is accepted once. Every
refusal is ``invalid_client`` (401) and leaves a ``token:issue`` denied event;
every issued token leaves an ``ok`` one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from sqlalchemy.ext.asyncio import AsyncSession

from app import errors
from app.config import Settings
from app.context import agency_var, client_var
from app.crypto import keys
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.models.schemas import Jwk, Jwks
from app.models.tables import Agency, ApiClient, UsedAssertion
from app.services import audit
from app.services.audit import Action, Actor, Outcome, PendingEvent
from app.services.dbutil import insert_ignore
from app.services.server_keys import ServerKeys
from app.tokens import decode_jws, issue_access_token, okp_public
from app.vocab import AgencyStatus, ClientStatus, KeyUse

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _refuse(reason: str, detail: str, client: ApiClient | None = None) -> errors.OAuthError:
    return errors.OAuthError(
        "invalid_client",
        detail,
        audit=PendingEvent(
            actor=Actor(
                client_id=client.client_id if client else None,
                agency_id=client.agency_id if client else None,
                role=client.role if client else None,
            ),
            action=Action.TOKEN_ISSUE,
            resource_type="client",
            resource_id=client.client_id if client else None,
            outcome=Outcome.DENIED,
            detail={"reason": reason},
        ),
    )


def _claimed_client_id(assertion: str) -> str:
    """Read iss/sub before verifying, only to find which key to verify with."""
    try:
        payload = jws.extract_compact(assertion.encode("ascii")).payload
        claims = json.loads(payload)
    except (JoseError, ValueError, UnicodeError):
        raise _refuse("malformed", "client_assertion is not a JWT") from None
    if not isinstance(claims, dict):
        raise _refuse("malformed", "client_assertion is not a JWT")
    iss, sub = claims.get("iss"), claims.get("sub")
    if not isinstance(iss, str) or iss != sub:
        raise _refuse("bad_subject", "iss and sub must both be the client_id")
    return iss


def _check_claims(
    claims: Mapping[str, Any], *, audience: str, settings: Settings, client: ApiClient
) -> tuple[str, int]:
    now = int(time.time())
    skew = settings.auth.clock_skew
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if audience not in auds:
        raise _refuse("wrong_audience", f"aud must be {audience}", client)
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise _refuse("no_exp", "exp is required", client)
    if exp <= now - skew:
        raise _refuse("expired", "the assertion has expired", client)
    if exp > now + settings.auth.assertion_max_lifetime + skew:
        limit = settings.auth.assertion_max_lifetime
        raise _refuse(
            "too_long",
            f"the client assertion is valid for {exp - now} s, but this server accepts at most "
            f"{limit} s (exp may be at most {limit}s ahead): sign assertions that expire "
            f"within {limit} s (with Authlib, private_key_jwt_sign(..., expires_in={limit}) "
            "or less; its stock PrivateKeyJWT signs for 3600 s)",
            client,
        )
    for name in ("iat", "nbf"):
        value = claims.get(name)
        if value is not None and (not isinstance(value, int | float) or value > now + skew):
            raise _refuse("future", f"{name} is in the future", client)
    jti = claims.get("jti")
    if not isinstance(jti, str) or not 0 < len(jti) <= 128:
        raise _refuse("no_jti", "a jti of at most 128 characters is required", client)
    return jti, exp


async def _asserting_client(db: AsyncSession, form: Mapping[str, str]) -> tuple[ApiClient, str]:
    """The registered client the form's assertion claims to come from, and the
    assertion (not yet verified)."""
    if form.get("grant_type") != "client_credentials":
        raise errors.OAuthError(
            "unsupported_grant_type", "only client_credentials is supported", status=400
        )
    assertion = form.get("client_assertion")
    if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
        raise _refuse("no_assertion", f"client_assertion_type must be {ASSERTION_TYPE}")
    client_id = _claimed_client_id(assertion)
    client = await db.get(ApiClient, client_id)
    if client is None:
        raise _refuse(
            "unknown_client",
            f"no API client {client_id[:64]!r} is registered here: check the key file's client_id"
            " and the server URL, or ask the task-force administrator to register the client",
        )
    client_var.set(client.client_id)  # claimed, not yet proven: for the access log only
    agency_var.set(client.agency_id)
    return client, assertion


def _signed_claims(client: ApiClient, assertion: str) -> Mapping[str, Any]:
    """The assertion's claims, once its signature verifies with the client's key."""
    try:
        public = b64url_decode(client.auth_public_key, length=32)
        return decode_jws(assertion, okp_public(public)).claims
    except (JoseError, ValueError, EncodingError):
        raise _refuse(
            "bad_signature",
            f"the client assertion is not signed by the key registered for client"
            f" {client.client_id}: is this the key file of that client? (a key file"
            " from an earlier keygen, or another agency's, signs with another key)",
            client,
        ) from None


async def _refuse_inactive_or_replayed(
    db: AsyncSession, client: ApiClient, jti: str, exp: int
) -> None:
    """Refuse a client (or agency) no longer active, then spend the assertion's ``jti``
    (refused if already spent)."""
    agency = await db.get(Agency, client.agency_id)
    if (
        client.status != ClientStatus.ACTIVE
        or agency is None
        or agency.status != AgencyStatus.ACTIVE
    ):
        raise _refuse("inactive", "the client or its agency is not active", client)
    fresh = await insert_ignore(
        db,
        UsedAssertion,
        {"client_id": client.client_id, "jti": jti, "expires_at": datetime.fromtimestamp(exp, UTC)},
    )
    if not fresh:
        raise _refuse("replay", "this assertion was already used", client)


async def issue_token(
    db: AsyncSession,
    form: Mapping[str, str],
    *,
    audience: str,
    issuer: str,
    settings: Settings,
    server_keys: ServerKeys,
) -> tuple[dict[str, Any], Actor]:
    """The token response body, and who it was issued to (for the per-client limit)."""
    client, assertion = await _asserting_client(db, form)
    claims = _signed_claims(client, assertion)
    jti, exp = _check_claims(claims, audience=audience, settings=settings, client=client)
    await _refuse_inactive_or_replayed(db, client, jti, exp)
    ttl = settings.auth.access_token_ttl
    token, scopes = issue_access_token(server_keys, issuer=issuer, client=client, ttl=ttl)
    issued_to = Actor(client_id=client.client_id, agency_id=client.agency_id, role=client.role)
    await audit.record(
        db,
        issued_to,
        Action.TOKEN_ISSUE,
        "client",
        client.client_id,
        detail={"scope": " ".join(scopes), "expires_in": ttl},
    )
    body = {
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": " ".join(scopes),
    }
    return body, issued_to


def jwks(server_keys: ServerKeys) -> Jwks:
    """The JWK set access tokens verify against: the current token key and, during
    a rotation, the previous one (``/.well-known/jwks.json``)."""
    return Jwks(
        keys=[
            Jwk(
                kty="OKP",
                crv="Ed25519",
                x=b64url_encode(public),
                kid=keys.kid(public),
                use=KeyUse.SIG,
                alg="EdDSA",
            )
            for public in server_keys.token_verify_keys
        ]
    )
