"""Tokens through Authlib: the stock ``AsyncOAuth2Client`` with ``private_key_jwt``.

An agency's engineer writes what Authlib's documentation shows (an
``AsyncOAuth2Client`` with ``token_endpoint_auth_method="private_key_jwt"``
and a registered ``PrivateKeyJWT``) with the assertion's expiry set to the
server's limit, and gets a token it can call the API with. Authlib's
unmodified ``PrivateKeyJWT`` signs for an hour: the server refuses it with a
description that names the 300-second limit and how to sign within it. The
SDK's own token client is that same Authlib client.
"""

from __future__ import annotations

import warnings
from typing import Any

import httpx
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import OKPKey

from app.client.oauth import MAX_ASSERTION_LIFETIME, ShortLivedPrivateKeyJWT, token_client
from app.client.sdk import RefgateClient
from app.crypto import keys
from app.crypto.encoding import b64url_encode
from tests.client.test_sdk import key_file
from tests.taskforce import TaskForce

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # Authlib 1.9 asks for httpx2
    from authlib.integrations.httpx_client import AsyncOAuth2Client

TOKEN_URL = "http://test/oauth/token"


class FiveMinutePrivateKeyJWT(PrivateKeyJWT):  # type: ignore[misc]
    """Authlib's PrivateKeyJWT, signing with ``expires_in`` (its default is 3600 s)."""

    def sign(self, auth: Any, token_endpoint: str) -> str:
        return str(private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                        token_endpoint=token_endpoint, alg=self.alg,
                                        expires_in=300))


def _jwk(seed: bytes) -> OKPKey:
    return OKPKey.import_key({"kty": "OKP", "crv": "Ed25519",
                              "x": b64url_encode(keys.sig_public_from_seed(seed)),
                              "d": b64url_encode(seed)})


def _oauth(app: Any, client_id: str, seed: bytes) -> Any:
    return AsyncOAuth2Client(client_id, _jwk(seed), token_endpoint_auth_method="private_key_jwt",
                             base_url="http://test", transport=httpx.ASGITransport(app=app))


async def test_authlib_async_oauth2_client_gets_a_token_and_calls_the_api(
    app: Any, tf: TaskForce
) -> None:
    client_id, auth = tf["legal"].clients["caseworker"]
    async with _oauth(app, client_id, auth.seed) as oauth:
        oauth.register_client_auth_method(FiveMinutePrivateKeyJWT(TOKEN_URL, alg="Ed25519"))
        token = await oauth.fetch_token(TOKEN_URL, grant_type="client_credentials")
        assert token["token_type"].lower() == "bearer"
        assert token["expires_in"] > 0
        assert "referrals:read" in token["scope"].split()
        # Authlib attaches the token itself
        r = await oauth.get("/v1/agencies")
        assert r.status_code == 200, r.text
        assert {a["id"] for a in r.json()["items"]} >= {tf["legal"].agency_id}
        # and a second fetch signs a new assertion (a new jti): not a replay
        again = await oauth.fetch_token(TOKEN_URL, grant_type="client_credentials")
        assert again["access_token"] != token["access_token"]


async def test_authlibs_hour_long_assertion_is_refused_naming_the_limit(
    app: Any, tf: TaskForce
) -> None:
    client_id, auth = tf["legal"].clients["caseworker"]
    async with _oauth(app, client_id, auth.seed) as oauth:
        oauth.register_client_auth_method(PrivateKeyJWT(TOKEN_URL, alg="Ed25519"))  # 3600 s
        with pytest.raises(OAuthError) as refused:
            await oauth.fetch_token(TOKEN_URL, grant_type="client_credentials")
    assert refused.value.error == "invalid_client"
    description = str(refused.value.description)
    assert "at most 300 s" in description
    assert "valid for 3600 s" in description
    assert "expires_in=300" in description


async def test_the_sdk_token_client_is_authlibs(app: Any, tf: TaskForce) -> None:
    client_id, auth = tf["legal"].clients["caseworker"]
    oauth = token_client(client_id, auth.seed, TOKEN_URL,
                         transport=httpx.ASGITransport(app=app))
    async with oauth:
        assert isinstance(oauth, AsyncOAuth2Client)
        token = await oauth.fetch_token(TOKEN_URL, grant_type="client_credentials")
    assert token["expires_in"] > 0
    assert "referrals:read" in token["scope"].split()


async def test_the_sdk_refuses_an_assertion_lifetime_over_the_limit(
    app: Any, tf: TaskForce
) -> None:
    with pytest.raises(ValueError, match="1 to 300 seconds"):
        ShortLivedPrivateKeyJWT(TOKEN_URL, expires_in=MAX_ASSERTION_LIFETIME + 1)
    with pytest.raises(ValueError, match="1 to 300 seconds"):
        RefgateClient(key_file(tf, "legal", "caseworker"), base_url="http://test",
                      transport=httpx.ASGITransport(app=app), assertion_lifetime=3600)
    async with RefgateClient(key_file(tf, "legal", "caseworker"), base_url="http://test",
                             transport=httpx.ASGITransport(app=app), verify_keys=False,
                             assertion_lifetime=MAX_ASSERTION_LIFETIME) as rc:
        assert (await rc.inbox()).items == []
