"""Verify a refgate webhook (Standard Webhooks, symmetric ``v1`` signatures).

``verify_webhook(secret, headers, body)`` returns the parsed payload only if:

- the ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers
  are present (header names are case-insensitive);
- the timestamp is within ``tolerance`` seconds of the local clock (a replayed
  old message fails);
- one of the space-separated ``v1,<base64>`` signatures equals
  base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}")), compared in constant
  time, where ``key`` is the base64-decoded part of the ``whsec_`` secret
  (``app.crypto.webhook_signature``, the module the server signs with).

Pass the raw body bytes exactly as received: re-serialized JSON does not verify.
After a secret rotation the server signs with both secrets for a grace period,
so a receiver may switch to the new secret at any point during it. Receivers
should also deduplicate on ``webhook-id``: delivery is at least once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from app.crypto.webhook_signature import InvalidSecret, secret_key, signature_matches

__all__ = ["WebhookVerificationError", "verify_webhook"]


class WebhookVerificationError(Exception):
    """The message is missing a header, too old or too new, or carries no valid signature."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> Any:
    """Check a delivery's signature and timestamp; return its JSON payload."""
    try:
        secret_key(secret)
    except InvalidSecret as exc:
        raise WebhookVerificationError(str(exc)) from None
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
    if signature_matches(secret, msg_id, timestamp, raw, signatures):
        return json.loads(raw)
    raise WebhookVerificationError("no valid signature")
