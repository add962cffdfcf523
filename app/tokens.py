"""Access tokens: EdDSA JWS keys, issuing, verifying, the bearer header, one verified cache.

No web framework here: ``app.auth`` (the route dependency), the rate-limit
middleware and ``app.services.oauth`` all use these.

The signature check of an access token is remembered per process
(``verified_tokens``): the same token under the same server keys verifies the
same way every time. Callers validate the claims (expiry first) on every use.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.jwk import KeySet, OKPKey

from app.crypto import keys
from app.crypto.encoding import b64url_encode
from app.identity import scopes_of

if TYPE_CHECKING:
    from app.models.tables import ApiClient
    from app.services.server_keys import ServerKeys

TOKEN_ALGORITHMS = ["EdDSA", "Ed25519"]


def okp_public(raw: bytes, kid: str | None = None) -> OKPKey:
    jwk: dict[str, str | list[str]] = {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    if kid:
        jwk["kid"] = kid
    return OKPKey.import_key(jwk)


def okp_private(seed: bytes, public: bytes) -> OKPKey:
    return OKPKey.import_key(
        {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(public), "d": b64url_encode(seed)}
    )


def token_key_set(server_keys: ServerKeys) -> KeySet:
    """What access tokens verify against, chosen by the token's ``kid``: the current
    key and, during a rotation, the previous one (``keys.previous_token_key_file``)."""
    return KeySet([okp_public(k, keys.kid(k)) for k in server_keys.token_verify_keys])


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
    scopes = scopes_of(client.role)
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


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        return None
    return value


class VerifiedTokens:
    """A bounded LRU of tokens whose signature verified: (verify keys, token) → claims.

    Keyed by the server's verify keys too, so a key rotation starts afresh. The
    claims dict is shared: callers read it, never change it.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._items: OrderedDict[tuple[tuple[bytes, ...], str], dict[str, Any]] = OrderedDict()

    def claims(self, token: str, verify_keys: Sequence[bytes], key_set: KeySet) -> dict[str, Any]:
        """The claims of ``token`` once its signature verified against ``key_set``
        (whose public keys are ``verify_keys``); raises ``JoseError``/``ValueError``."""
        key = (tuple(verify_keys), token)
        claims = self._items.get(key)
        if claims is not None:
            self._items.move_to_end(key)
            return claims
        claims = decode_jws(token, key_set).claims
        self._items[key] = claims
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return claims

    def clear(self) -> None:
        self._items.clear()


verified_tokens = VerifiedTokens()
"""The process's one cache of verified access tokens (``app.auth`` and the rate limiter)."""
