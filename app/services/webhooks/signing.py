"""Signing deliveries: the Standard Webhooks signature header (``app.crypto.webhook_signature``
signs) and the signing secrets sealed at rest under the server's webhook key."""

from __future__ import annotations

from datetime import datetime

import nacl.exceptions
import nacl.secret

from app.config import Settings
from app.crypto.encoding import b64url_decode, b64url_encode
from app.crypto.webhook_signature import sign
from app.services.server_keys import webhook_secret_key

SEALED_PREFIX = "v1."  # the form every stored secret has (sealed at rest)


def seal_secret(settings: Settings, webhook_id: str, secret: str) -> str:
    """The form a signing secret is stored in: XChaCha20-Poly1305 under the server's
    webhook key, bound to its webhook's id, so a database dump alone cannot sign
    deliveries and a sealed secret copied to another row does not open."""
    box = nacl.secret.Aead(webhook_secret_key(settings))
    return SEALED_PREFIX + b64url_encode(bytes(box.encrypt(secret.encode(), webhook_id.encode())))


def open_secret(settings: Settings, webhook_id: str, stored: str) -> str:
    """The signing secret of a stored (sealed) value."""
    if not stored.startswith(SEALED_PREFIX):
        raise nacl.exceptions.CryptoError("the stored webhook secret is not sealed")
    box = nacl.secret.Aead(webhook_secret_key(settings))
    sealed = b64url_decode(stored.removeprefix(SEALED_PREFIX))
    return box.decrypt(sealed, webhook_id.encode()).decode()


def signature_header(
    secret: str,
    previous: str | None,
    previous_expires_at: datetime | None,
    msg_id: str,
    timestamp: int,
    body: bytes,
    now: datetime,
) -> str:
    sigs = [sign(secret, msg_id, timestamp, body)]
    if previous and previous_expires_at is not None and previous_expires_at > now:
        sigs.append(sign(previous, msg_id, timestamp, body))
    return " ".join(sigs)
