"""The SDK's authentication: :class:`PrivateKeyJWT`, an ``httpx.Auth``.

OAuth 2.0 client credentials with ``private_key_jwt`` (RFC 7523): tokens come
from Authlib's ``AsyncOAuth2Client`` (``app.client.oauth``), which signs a
fresh single-use Ed25519 assertion for each token request. This module caches
the access token, refreshes it before it expires, and fetches it again once
when the server answers 401 ``invalid_token``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Generator

import httpx

from app.client.errors import RefgateError, ServerUnreachable
from app.client.oauth import DEFAULT_ASSERTION_LIFETIME, TokenRefused, token_client

__all__ = ["PrivateKeyJWT"]


class PrivateKeyJWT(httpx.Auth):
    """``httpx.Auth`` for OAuth 2.0 client credentials with ``private_key_jwt`` (RFC 7523).

    Tokens come from Authlib's ``AsyncOAuth2Client`` (``app.client.oauth``),
    which signs a fresh single-use Ed25519 assertion valid for
    ``assertion_lifetime`` seconds (the server accepts at most 300) for each
    token request. The token is fetched on first use, refreshed
    ``refresh_margin`` seconds (at most half its lifetime) before it expires,
    and fetched again once if a request comes back 401 ``invalid_token``.
    Concurrent requests share one token fetch. Async only.
    """

    requires_response_body = False

    def __init__(
        self,
        client_id: str,
        auth_seed: bytes,
        token_url: str,
        *,
        refresh_margin: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = 30.0,
        assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
    ) -> None:
        self.client_id = client_id
        self.token_url = token_url
        self._margin = refresh_margin
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._oauth = token_client(
            client_id,
            auth_seed,
            token_url,
            transport=transport,
            timeout=timeout,
            assertion_lifetime=assertion_lifetime,
        )

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._refresh_at

    async def _fetch(self) -> str:
        base = self.token_url.rsplit("/oauth/token", 1)[0]
        try:
            token = await self._oauth.fetch_token(self.token_url, grant_type="client_credentials")
        except TokenRefused as exc:
            raise RefgateError(exc.status, exc.problem) from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(base, exc) from exc
        access = token.get("access_token")
        lifetime = token.get("expires_in")
        if not isinstance(access, str) or not isinstance(lifetime, int) or lifetime <= 0:
            raise RefgateError(
                200,
                {
                    "title": "Bad token response",
                    "detail": "the token endpoint answered without access_token/expires_in",
                },
            )
        self._token = access
        self._refresh_at = time.monotonic() + lifetime - min(self._margin, lifetime / 2)
        return access

    async def token(self) -> str:
        """The current access token, fetched if it is missing or expiring."""
        async with self._lock:
            if not self._fresh():
                await self._fetch()
            return str(self._token)

    async def aclose(self) -> None:
        await self._oauth.aclose()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("PrivateKeyJWT works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        used = await self.token()
        request.headers["Authorization"] = f"Bearer {used}"
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and "invalid_token" in challenge:
            async with self._lock:
                if self._token == used:
                    self._token = None
                    await self._fetch()
                request.headers["Authorization"] = f"Bearer {self._token}"
            yield request
