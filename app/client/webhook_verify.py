"""Verify a refgate webhook (Standard Webhooks, symmetric ``v1`` signatures).

``verify_webhook(secret, headers, body)`` returns the parsed payload only if:

- the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers
  are present (header names are case-insensitive);
- the timestamp is within ``tolerance`` seconds of the local clock (a replayed
  old message fails);
- one of the space-separated ``v1,<base64>`` signatures equals
  base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), compared in constant
  time, where ``key`` is the base64-decoded part of the ``whsec_`` secret.

Pass the raw body bytes exactly as received: re-serialized JSON does not verify.
After a secret rotation the server signs with both secrets for a grace period,
so a receiver may switch to the new secret at any point during it. Receivers
should also deduplicate on ``webhook-id``: delivery is at least once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["WebhookVerificationError", "verify_webhook"]

SECRET_PREFIX = "whsec_"  # noqa: S105 (the Standard Webhooks prefix, not a secret)


class WebhookVerificationError(Exception):
    """The message is missing a header, too old or too new, or carries no valid signature."""


def _key(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the secret is not a whsec_ base64 secret") from None
    if not key:
        raise WebhookVerificationError("the secret is empty")
    return key


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> Any:
    """Check a delivery's signature and timestamp; return its JSON payload."""
    key = _key(secret)
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        ts = int(timestamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if ts < current - tolerance:
        raise WebhookVerificationError("the message timestamp is too old")
    if ts > current + tolerance:
        raise WebhookVerificationError("the message timestamp is too new")
    raw = body.encode() if isinstance(body, str) else body
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + raw, hashlib.sha256).digest()
    for candidate in signatures.split(" "):
        version, _, value = candidate.partition(",")
        if version != "v1":
            continue
        try:
            given = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, given):
            return json.loads(raw)
    raise WebhookVerificationError("no valid signature")
