"""Standard Webhooks ``v1`` signatures: the one implementation the server and the client share.

A secret is ``whsec_`` + base64 of the key bytes (the server makes 32 random bytes).
A signature is ``v1,`` + base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")); the
``webhook-signature`` header carries one or more of them separated by spaces (the
server adds the previous secret's during a rotation's grace period).

Standard library only: the client (``app.client.webhook_verify``) and the server's
dispatcher (``app.services.webhooks``) both import this module, so a secret decodes
and a body signs the same way on both sides.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

__all__ = [
    "SECRET_BYTES",
    "SECRET_PREFIX",
    "InvalidSecret",
    "new_secret",
    "secret_key",
    "sign",
    "signature_matches",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)
SECRET_BYTES = 32


class InvalidSecret(ValueError):
    """The secret is not ``whsec_`` + base64 of at least one byte."""


def new_secret() -> str:
    """A fresh secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a secret (the prefix is optional; padding may be left off)."""
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret("the secret is not a whsec_ base64 secret") from None
    if not key:
        raise InvalidSecret("the secret is empty")
    return key


def _mac(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> bytes:
    return hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()


def sign(secret: str, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """One ``v1,<base64>`` signature of a message."""
    return "v1," + base64.b64encode(_mac(secret_key(secret), msg_id, timestamp, body)).decode()


def signature_matches(
    secret: str, msg_id: str, timestamp: int | str, body: bytes, header: str
) -> bool:
    """Whether one of the header's ``v1`` signatures is this secret's (constant-time compare).

    Signatures of other versions and ones that are not base64 are skipped.
    """
    expected = _mac(secret_key(secret), msg_id, timestamp, body)
    for candidate in header.split(" "):
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return True
    return False
