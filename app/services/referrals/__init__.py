"""Referrals (Envelope v2): store envelopes, serve each caller its part, run the closed loop.

The server holds no key and never sees a field name: it checks an envelope's
shape, digests, hashes and signature (``app.crypto.envelope.check_envelope``),
that its grants name the recipients' current keys, that every recipient is
active and has a request and a grant, and that consents expire within the
configured maximum (refused, never shortened); then it stores the envelope in
a handful of set-based statements. Reads go through ``app.authz`` and serve a
recipient only its own disclosures. Every action writes its audit event (field
ids only) in the same transaction.

Statement budget of the hot paths (besides authentication and the audit
event): create reads the directory in one statement and writes the five
tables in one on PostgreSQL (one per table on SQLite); the referral's INSERT …
ON CONFLICT DO NOTHING is also the check that its id is new. An inbox page is
one statement (two for the sent box); a recipient's read is two; a status
change reads the poster's key, locks and reads in one, and writes in one.

The package, by responsibility: ``intake`` (create), ``inbox`` (list pages),
``view`` (read one), ``lifecycle`` (the status machine and withdrawal),
``consent`` (amend and revoke), ``checks`` (the envelope against the directory
and the clock), ``store`` (dialect SQL and rows) and ``common`` (validation,
access, limits). Routers use the names re-exported here.
"""

from app.services.referrals.common import TRANSITIONS, limits, parse_time
from app.services.referrals.consent import amend, revoke
from app.services.referrals.inbox import list_page
from app.services.referrals.intake import create, replay_idempotent
from app.services.referrals.lifecycle import MAX_NOTE_BYTES, update_status, withdraw
from app.services.referrals.view import read

__all__ = [
    "MAX_NOTE_BYTES",
    "TRANSITIONS",
    "amend",
    "create",
    "limits",
    "list_page",
    "parse_time",
    "read",
    "replay_idempotent",
    "revoke",
    "update_status",
    "withdraw",
]
