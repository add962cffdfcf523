"""private_key_jwt client assertions (RFC 7523) signed with a client's Ed25519 key."""

from __future__ import annotations

import time
import uuid
import warnings

from joserfc import jwt
from joserfc.jwk import OKPKey

from app.crypto import keys
from app.crypto.encoding import b64url_encode

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def token_form(assertion: str) -> dict[str, str]:
    """The form body of a client-credentials token request authenticated by ``assertion``."""
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def client_assertion(
    client_id: str, auth_seed: bytes, audience: str, *, lifetime: int = 60, alg: str = "EdDSA"
) -> str:
    """A fresh single-use assertion: iss = sub = client_id, aud = the token endpoint URL."""
    now = int(time.time())
    key = OKPKey.import_key(
        {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64url_encode(keys.sig_public_from_seed(auth_seed)),
            "d": b64url_encode(auth_seed),
        }
    )
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
    }
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="EdDSA is deprecated")
        return jwt.encode({"alg": alg, "typ": "JWT"}, claims, key, algorithms=[alg])
