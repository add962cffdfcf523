"""Statuses and notes: a recipient signs its status (:func:`sign_status`,
checked with :func:`verify_status`) and seals a note to the sender
(:func:`seal_note`, :func:`open_note`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pydantic

from app.crypto import keys
from app.crypto.encoding import EncodingError, b64url_decode, b64url_encode
from app.crypto.envelope.common import STATUS_PREFIX, EnvelopeError, _canonical, _sha256
from app.crypto.wire import StatusSigned


def status_signing_input(
    *,
    referral_id: str,
    recipient: str,
    status: str,
    reason: str | None,
    note_sha256: str | None,
    signed_at: str,
) -> bytes:
    """``refgate/v2/status\\n`` + RFC 8785 bytes of the signed status object."""
    return STATUS_PREFIX + _canonical(
        {
            "referral_id": referral_id,
            "recipient": recipient,
            "status": status,
            "reason": reason,
            "note_sha256": note_sha256,
            "signed_at": signed_at,
        }
    )


def note_sha256(note: str | None) -> str | None:
    """base64url SHA-256 of a sealed note's bytes, or None."""
    if note is None:
        return None
    try:
        return b64url_encode(_sha256(b64url_decode(note)))
    except EncodingError:
        raise EnvelopeError("malformed", "note must be base64url of a sealed box") from None


def sign_status(
    *,
    referral_id: str,
    recipient: str,
    status: str,
    reason: str | None,
    note: str | None,
    signed_at: str,
    sig_seed: bytes,
) -> dict[str, Any]:
    """The ``POST /v1/referrals/{id}/status`` body, signed by the recipient."""
    message = status_signing_input(
        referral_id=referral_id,
        recipient=recipient,
        status=status,
        reason=reason,
        note_sha256=note_sha256(note),
        signed_at=signed_at,
    )
    return {
        "status": status,
        "reason": reason,
        "note": note,
        "signed_at": signed_at,
        "signature": b64url_encode(keys.sign(sig_seed, message)),
    }


def verify_status(item: Mapping[str, Any], *, referral_id: str, sig_public: bytes) -> None:
    """Return only if a status (posted, or a ``statuses`` item) is signed by ``sig_public``.

    ``item`` needs ``recipient`` (or the caller adds it), ``status``,
    ``reason``, ``note``, ``signed_at`` and ``signature``. Raises
    ``bad-signature`` for a rewritten status, reason, note or time.
    """
    signature = item.get("signature")
    signed_at = item.get("signed_at")
    if not isinstance(signature, str) or not isinstance(signed_at, str):
        raise EnvelopeError("bad-signature", "the status is not signed")
    try:
        note_hash = note_sha256(item.get("note"))
        StatusSigned.model_validate(
            {
                "referral_id": referral_id,
                "recipient": item.get("recipient"),
                "status": item.get("status"),
                "reason": item.get("reason"),
                "note_sha256": note_hash,
                "signed_at": signed_at,
            },
            strict=True,
        )
        raw = b64url_decode(signature, length=keys.SIGNATURE_SIZE)
    except (pydantic.ValidationError, EncodingError, EnvelopeError):
        raise EnvelopeError("bad-signature", "the status signature does not verify") from None
    message = status_signing_input(
        referral_id=referral_id,
        recipient=str(item["recipient"]),
        status=str(item["status"]),
        reason=item.get("reason"),
        note_sha256=note_hash,
        signed_at=signed_at,
    )
    if not keys.verify(sig_public, message, raw):
        raise EnvelopeError("bad-signature", "the status signature does not verify")


def seal_note(text: str, sender_enc_public: bytes) -> str:
    """Seal a status note to the sender's X25519 key; returns base64url."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EnvelopeError("malformed", "note is not valid Unicode") from exc
    return b64url_encode(keys.seal(sender_enc_public, data))


def open_note(note: str, enc_private: bytes) -> str:
    """Open a note sealed by :func:`seal_note`; raises ``decrypt-failed`` otherwise."""
    try:
        data = b64url_decode(note)
        return keys.unseal(enc_private, data).decode("utf-8")
    except EncodingError as exc:
        raise EnvelopeError("malformed", "note is not base64url") from exc
    except keys.DecryptionError as exc:
        raise EnvelopeError("decrypt-failed", "note does not open with this key") from exc
    except UnicodeDecodeError as exc:
        raise EnvelopeError("decrypt-failed", "note is not UTF-8") from exc
