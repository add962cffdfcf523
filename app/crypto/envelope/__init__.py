"""Envelope v2: field-level end-to-end encryption with selective disclosure.

The wire format is DESIGN.md, "Envelope v2"; its shapes are the models of
:mod:`app.crypto.wire`, and ``tests/vectors/README.md`` fixes the bytes.
The server never sees a field name: names travel inside the ciphertext,
fields are known by opaque ids (``fid``), and everything about fields, grants
and requests is a salted disclosure (RFC 9901 section 4.2) whose digest alone
is signed in the manifest, among decoys. Each caller is served only its own
disclosures, so a recipient learns nothing of fields, grants, requests or
recipients that are not its own.

Points the page leaves to the implementation, fixed here:

* A disclosure built here is base64url of the RFC 8785 bytes of
  ``[salt, type, value]``; any JSON spelling is accepted on input (the digest
  is over the disclosure string as sent), but duplicate object keys are refused.
* Decoy digests are 32 random bytes; the digest list is sorted by code point.
* A non-sender grant's ``expires_at`` must be later than ``created_at``.
* An amendment adds grants and requests, never fields (ciphertexts are fixed at
  creation); it may replace the grant of a (fid, recipient) pair, e.g. to
  re-grant after a revocation or an expiry.

Three actors, three entry points:

* the sender's client builds with :func:`seal_envelope` and :func:`amend`;
* the server, which holds no key, checks with :func:`check_envelope` and
  :func:`check_amendment` (what needs a clock or a directory is the caller's);
* a recipient (or the sender) opens with :func:`open_envelope`, which
  verifies the signature, every digest, hash, kid and key commitment first.

Statuses are signed by the recipient (:func:`sign_status`,
:func:`verify_status`) and notes sealed to the sender (:func:`seal_note`).
Every failure is an :class:`EnvelopeError` whose ``code`` is one of
:data:`ERROR_CODES`; nothing here returns partial results or logs content.

The package, by responsibility: ``common`` (version, sizes, prefixes,
:class:`EnvelopeError` and the primitives), ``disclosures`` (one disclosure,
and a referral's disclosures as a set), ``manifest`` (signing input, signature,
padding), ``checks`` (the server's checks), ``sealing`` (the sender's
:func:`seal_envelope` and :func:`amend`), ``opening`` (:func:`open_envelope`)
and ``status`` (statuses and notes). Callers use the names re-exported here.
"""

from app.crypto.envelope.checks import (
    CheckedAmendment,
    CheckedReferral,
    Limits,
    check_amendment,
    check_envelope,
)
from app.crypto.envelope.common import ERROR_CODES, STANDARD_FIELDS, VERSION, EnvelopeError
from app.crypto.envelope.disclosures import (
    Disclosed,
    disclosure_digest,
    make_disclosure,
    parse_disclosure,
    parse_disclosures,
)
from app.crypto.envelope.manifest import manifest_signing_input
from app.crypto.envelope.opening import Opened, open_envelope
from app.crypto.envelope.sealing import Grant, Request, Sealed, amend, seal_envelope
from app.crypto.envelope.status import (
    note_sha256,
    open_note,
    seal_note,
    sign_status,
    status_signing_input,
    verify_status,
)

__all__ = [
    "ERROR_CODES",
    "STANDARD_FIELDS",
    "VERSION",
    "CheckedAmendment",
    "CheckedReferral",
    "Disclosed",
    "EnvelopeError",
    "Grant",
    "Limits",
    "Opened",
    "Request",
    "Sealed",
    "amend",
    "check_amendment",
    "check_envelope",
    "disclosure_digest",
    "make_disclosure",
    "manifest_signing_input",
    "note_sha256",
    "open_envelope",
    "open_note",
    "parse_disclosure",
    "parse_disclosures",
    "seal_envelope",
    "seal_note",
    "sign_status",
    "status_signing_input",
    "verify_status",
]
