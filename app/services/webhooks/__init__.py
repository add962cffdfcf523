"""Webhooks: subscriptions, the transactional outbox and the dispatcher.

Guarantees:
- **Outbox.** ``enqueue()`` inserts delivery rows in the caller's transaction:
  a committed action always has its notifications and a rolled-back one never
  notifies. Payloads carry ids and routing metadata, never referral content.
- **Visibility.** A referral event goes only to agencies that may see the
  referral (``visible_only``): a law-enforcement agency hears of a referral
  only while it holds an active grant, exactly as ``app.authz`` shows it.
  ``consent.revoked`` is the exception: the recipient that lost access must hear
  of it to purge its copy.
- **Signing** per Standard Webhooks: ``webhook-id`` (the delivery id, the same
  on every attempt and on a replay), ``webhook-timestamp`` (Unix seconds of the
  attempt) and ``webhook-signature`` = ``v1,`` + base64(HMAC-SHA256(secret,
  f"{id}.{timestamp}.{body}")). After a rotation the previous secret signs too,
  space-separated, for ``webhooks.secret_grace`` seconds.
- **Secrets sealed at rest.** The server must keep each signing secret to
  sign with it, so it is stored sealed (XChaCha20-Poly1305, bound to the
  webhook's id) under a key in the data directory (``webhook-secrets.key``,
  ``REFGATE_KEYS__WEBHOOK_KEY_FILE``), not in the database: a dump alone
  cannot forge deliveries. A row whose secret does not open (or was stored in
  clear) fails its delivery; it is never used to sign.
- **At least once.** The dispatcher claims due rows by pushing their
  ``next_attempt_at`` forward by a lease (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL), commits, sends outside any transaction, then records the result
  only if the row is still the attempt it claimed. A crash mid-send retries
  after the lease. Failures back off exponentially with jitter; after
  ``max_attempts`` the delivery is dead-lettered until replayed.
- **One dispatcher per deployment**: the runner holds a PostgreSQL advisory
  lock (its own key, not the sequencer's); on SQLite it runs in-process.
- **SSRF.** A target must be https and resolve only to public addresses, unless
  ``webhooks.allow_private_targets``. It is checked at subscription and again at
  each attempt, and the connection goes to the address that was checked (no
  second DNS lookup that a rebinding attacker could answer differently).
  Redirects are not followed and response bodies are not read.
"

The package, by responsibility: ``outbox`` (enqueue, broadcast),
``subscriptions`` (what an agency manages), ``targets`` (the SSRF guard),
``signing`` (the signature header, sealed secrets), ``dispatcher`` (claim, send,
record) and ``runner`` (the leader that dispatches and runs retention). Routers
and the app use the names re-exported here.
"""

from app.crypto.webhook_signature import new_secret, sign
from app.services.webhooks.dispatcher import (
    USER_AGENT,
    DispatchReport,
    backoff,
    dispatch_once,
    http_client,
)
from app.services.webhooks.outbox import broadcast, enqueue
from app.services.webhooks.runner import ADVISORY_LOCK_KEY, WebhookRunner
from app.services.webhooks.signing import SEALED_PREFIX, open_secret, seal_secret, signature_header
from app.services.webhooks.subscriptions import (
    create,
    deliveries,
    list_for,
    remove,
    replay,
    rotate_secret,
)
from app.services.webhooks.targets import Target, TargetRefused, check_target

__all__ = [
    "ADVISORY_LOCK_KEY",
    "SEALED_PREFIX",
    "USER_AGENT",
    "DispatchReport",
    "Target",
    "TargetRefused",
    "WebhookRunner",
    "backoff",
    "broadcast",
    "check_target",
    "create",
    "deliveries",
    "dispatch_once",
    "enqueue",
    "http_client",
    "list_for",
    "new_secret",
    "open_secret",
    "remove",
    "replay",
    "rotate_secret",
    "seal_secret",
    "sign",
    "signature_header",
]
