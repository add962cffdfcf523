"""Access tokens through Authlib: ``AsyncOAuth2Client`` with ``private_key_jwt``.

refgate's token endpoint (``POST /oauth/token``) takes OAuth 2.0 client
credentials authenticated with a ``private_key_jwt`` assertion (RFC 7523)
signed with the client's Ed25519 key: ``iss`` = ``sub`` = the client id,
``aud`` = the token endpoint's URL, a single-use ``jti``, and an ``exp``
**at most 300 seconds** after the server's clock (``MAX_ASSERTION_LIFETIME``;
a longer one is refused with ``invalid_client`` and a description naming the
limit). Authlib's stock ``PrivateKeyJWT`` signs assertions valid for an hour;
:class:`ShortLivedPrivateKeyJWT` is the same class with ``expires_in``, as an
agency would write it from Authlib's documentation::

    from authlib.integrations.httpx_client import AsyncOAuth2Client
    from joserfc.jwk import OKPKey

    key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": ..., "d": ...})
    token_url = "https://refgate.example.org/oauth/token"
    async with AsyncOAuth2Client(client_id, key,
                                 token_endpoint_auth_method="private_key_jwt") as oauth:
        oauth.register_client_auth_method(ShortLivedPrivateKeyJWT(token_url, expires_in=60))
        token = await oauth.fetch_token(token_url, grant_type="client_credentials")

:func:`token_client` builds exactly that from a key file's seed; the SDK's
``RefgateClient`` uses it. Authlib 1.9 prefers the ``httpx2`` package for its
httpx integration and falls back to httpx with a deprecation warning, which
is silenced here (the SDK is built on httpx); with ``httpx2`` installed,
Authlib's client is an ``httpx2`` one and a custom httpx ``transport``
cannot be used.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import httpx
from authlib.deprecate import AuthlibDeprecationWarning
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import OKPKey

from app.crypto import keys
from app.crypto.encoding import b64url_encode

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "The httpx module is deprecated",
                            AuthlibDeprecationWarning)
    from authlib.integrations.httpx_client import AsyncOAuth2Client

__all__ = [
    "DEFAULT_ASSERTION_LIFETIME",
    "MAX_ASSERTION_LIFETIME",
    "ShortLivedPrivateKeyJWT",
    "TokenRefused",
    "okp_key",
    "token_client",
]

MAX_ASSERTION_LIFETIME = 300
"""The longest assertion lifetime (``exp`` - now, seconds) the server accepts."""
DEFAULT_ASSERTION_LIFETIME = 60


class ShortLivedPrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's ``private_key_jwt`` client authentication with a short assertion lifetime
    (``expires_in`` seconds, at most 300) and the ``Ed25519`` JWS algorithm (RFC 9864).

    Each token request signs a fresh assertion with a new ``jti``.
    """

    name = "private_key_jwt"
    alg = "Ed25519"

    def __init__(self, token_endpoint: str | None = None, *,
                 expires_in: int = DEFAULT_ASSERTION_LIFETIME) -> None:
        if not 0 < expires_in <= MAX_ASSERTION_LIFETIME:
            raise ValueError(
                f"expires_in must be 1 to {MAX_ASSERTION_LIFETIME} seconds: refgate refuses "
                f"client assertions valid for longer than {MAX_ASSERTION_LIFETIME} s"
            )
        super().__init__(token_endpoint, alg=self.alg)
        self.expires_in = expires_in

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(private_key_jwt_sign(
            auth.client_secret, client_id=auth.client_id, token_endpoint=token_endpoint,
            alg=self.alg, header={"typ": "JWT"}, expires_in=self.expires_in,
        ))


class TokenRefused(Exception):
    """The token endpoint refused: ``status`` and its problem+json body."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('error_description') or problem.get('detail')}")
        self.status = status
        self.problem = dict(problem)


def okp_key(auth_seed: bytes) -> OKPKey:
    """The client's Ed25519 authentication key as a JWK Authlib signs with."""
    return OKPKey.import_key({
        "kty": "OKP", "crv": "Ed25519",
        "x": b64url_encode(keys.sig_public_from_seed(auth_seed)),
        "d": b64url_encode(auth_seed),
    })


def _refused(response: httpx.Response) -> httpx.Response:
    """Authlib's ``access_token_response`` hook: an error answer becomes TokenRefused
    (keeping the server's problem+json, with its ``error`` and ``error_description``)."""
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"title": response.reason_phrase or "Error", "detail": response.text[:200]}
        raise TokenRefused(response.status_code, body)
    return response


def token_client(
    client_id: str, auth_seed: bytes, token_url: str, *,
    transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0,
    assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
) -> Any:
    """An Authlib ``AsyncOAuth2Client`` that fetches refgate access tokens:
    ``await client.fetch_token(token_url, grant_type="client_credentials")``."""
    kwargs: dict[str, Any] = {"timeout": timeout, "headers": {"Accept": "application/json"}}
    if transport is not None:
        if not issubclass(AsyncOAuth2Client, httpx.AsyncClient):
            raise RuntimeError(
                "Authlib's AsyncOAuth2Client is built on httpx2 here: an httpx transport "
                "cannot be passed to it (uninstall httpx2, or use no custom transport)"
            )
        kwargs["transport"] = transport
    client = AsyncOAuth2Client(
        client_id, okp_key(auth_seed), token_endpoint_auth_method="private_key_jwt",  # noqa: S106
        token_endpoint=token_url, grant_type="client_credentials", **kwargs,
    )
    client.register_client_auth_method(
        ShortLivedPrivateKeyJWT(token_url, expires_in=assertion_lifetime)
    )
    client.register_compliance_hook("access_token_response", _refused)
    return client
