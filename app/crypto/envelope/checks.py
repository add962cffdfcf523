"""The server's checks, which need no key: a creation body
(:func:`check_envelope`) and an amendment against the stored manifest
(:func:`check_amendment`). What needs a clock or a directory is the caller's.
The client runs the same checks on what it seals before returning it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.crypto.encoding import b64url_decode
from app.crypto.envelope.common import SENDER_PURPOSE, EnvelopeError, _equal, _sha256
from app.crypto.envelope.disclosures import (
    Disclosed,
    _check_ciphertext,
    _disclosed,
    _grant_value,
    _Set,
)
from app.crypto.envelope.manifest import _check_padding, _verify_manifest
from app.crypto.wire import Amendment, EnvelopeIn, GrantValue, Manifest


def _check_grant(g: GrantValue, sender: str, created_at: str) -> None:
    where = f"grant of field {g.fid} to {g.recipient}"
    if g.recipient == sender:
        if g.purpose != SENDER_PURPOSE or g.expires_at is not None or g.release_ref is not None:
            raise EnvelopeError(
                "invalid-consent",
                f"{where}: the sender's copy has purpose 'sender', expires_at and release_ref null",
            )
        return
    if g.purpose == SENDER_PURPOSE:
        raise EnvelopeError("invalid-consent", f"{where}: purpose 'sender' is the sender's own")
    if g.expires_at is None:
        raise EnvelopeError(
            "invalid-consent", f"{where}: expires_at is required (consent is time-limited)"
        )
    if _time_key(g.expires_at) <= _time_key(created_at):
        raise EnvelopeError("invalid-consent", f"{where}: expires_at is not after created_at")


def _time_key(text: str) -> tuple[str, str]:
    """Sortable form of an RFC 3339 ``Z`` time (fraction compared as padded digits)."""
    main, _, frac = text[:-1].partition(".")
    return main, frac.ljust(9, "0")


def _match_wrapped(
    wrapped_keys: Sequence[Any], grants: Mapping[tuple[str, str], Disclosed]
) -> None:
    """Wrapped keys and grant disclosures match one to one, kid and hash equal."""
    seen: set[tuple[str, str]] = set()
    for w in wrapped_keys:
        pair = (w.fid, w.recipient)
        where = f"wrapped key of field {w.fid} for {w.recipient}"
        if pair in seen:
            raise EnvelopeError("consent-mismatch", f"{where} appears twice")
        seen.add(pair)
        d = grants.get(pair)
        if d is None:
            raise EnvelopeError("consent-mismatch", f"{where} has no grant disclosure")
        g = _grant_value(d)
        if g.kid != w.kid:
            raise EnvelopeError("consent-mismatch", f"{where}: kid differs from its grant")
        if not _equal(_sha256(b64url_decode(w.wrapped_key)), b64url_decode(g.wrapped_key_sha256)):
            raise EnvelopeError("hash-mismatch", f"{where}: sha256 differs from its grant")
    for pair in grants:
        if pair not in seen:
            raise EnvelopeError(
                "consent-mismatch", f"grant of field {pair[0]} to {pair[1]} has no wrapped key"
            )


def _check_recipients(s: _Set, sender: str, *, granted: Iterable[str] = ()) -> set[str]:
    """Every recipient has a request and at least one grant; returns the recipients."""
    with_grants = {r for _, r in s.grants} | set(granted)
    with_grants.discard(sender)
    if sender in s.requests:
        raise EnvelopeError("malformed", "the sender does not address a request to itself")
    for recipient in s.requests:
        if recipient not in with_grants:
            raise EnvelopeError(
                "missing-grant",
                f"recipient {recipient} has a request but no grant: it would receive nothing",
            )
    return with_grants


@dataclass(frozen=True)
class Limits:
    max_fields: int = 64
    max_field_bytes: int = 65536
    max_recipients: int = 64


@dataclass(frozen=True)
class CheckedReferral:
    """A creation body that passed :func:`check_envelope`, by what it discloses."""

    manifest: Manifest
    manifest_bytes: bytes
    fields: Mapping[str, Disclosed]  # fid ->
    grants: Mapping[tuple[str, str], Disclosed]  # (fid, recipient) ->
    requests: Mapping[str, Disclosed]  # recipient ->
    recipients: frozenset[str]


def check_envelope(
    body: EnvelopeIn,
    *,
    sender_sig_public: bytes,
    limits: Limits = Limits(),
    parsed: Sequence[Disclosed] | None = None,
) -> CheckedReferral:
    """Return only if a ``POST /v1/referrals`` body is well formed and signed.

    What a server can check without a private key, a clock or a directory:
    the signature by ``sender_sig_public`` (whose kid is ``sender_kid``); the
    digest list sorted, unique, a multiple of 8; every disclosure well formed,
    its digest in the list, no digest or (fid, recipient) twice; ciphertexts
    and field disclosures one to one with equal hashes; wrapped keys and grant
    disclosures one to one with equal kids and hashes; a sender copy of every
    field; every recipient with exactly one request and at least one grant,
    every request to an agency with a grant; purposes, expiries after
    ``created_at``; the size limits. The caller checks kids against its
    directory, recipients' status and times against its clock. ``parsed``: the
    caller's :func:`parse_disclosure` of ``body.disclosures``, in order, if it
    already made it (not parsed again).
    """
    m = body.manifest
    canonical = _verify_manifest(m, body.signature, sender_sig_public)
    _check_padding(m.digests)
    s = _Set.of(_disclosed(body.disclosures, frozenset(m.digests), parsed=parsed))
    _check_fields(s, body.ciphertexts, limits)
    _check_creation_grants(s, m.sender_agency, m.created_at)
    recipients = _creation_recipients(s, m.sender_agency, limits.max_recipients)
    _match_wrapped(body.wrapped_keys, s.grants)
    return CheckedReferral(m, canonical, s.fields, s.grants, s.requests, frozenset(recipients))


def _check_fields(s: _Set, ciphertexts: Mapping[str, str], limits: Limits) -> None:
    """At most ``max_fields``; ciphertexts and field disclosures one to one, hashes equal."""
    if len(s.fields) > limits.max_fields:
        raise EnvelopeError("too-many-fields", f"at most {limits.max_fields} fields")
    if set(ciphertexts) != set(s.fields):
        raise EnvelopeError(
            "field-mismatch", "ciphertexts and field disclosures must match one to one by fid"
        )
    for fid, d in s.fields.items():
        _check_ciphertext(fid, ciphertexts[fid], d, limits.max_field_bytes)


def _check_creation_grants(s: _Set, sender: str, created_at: str) -> None:
    """Every grant names a field and is acceptable; every field has its sender copy."""
    for (fid, _recipient), d in s.grants.items():
        if fid not in s.fields:
            raise EnvelopeError("field-mismatch", f"a grant names field {fid}, which has none")
        _check_grant(_grant_value(d), sender, created_at)
    for fid in s.fields:
        if (fid, sender) not in s.grants:
            raise EnvelopeError("missing-sender-copy", f"field {fid} has no copy for the sender")


def _creation_recipients(s: _Set, sender: str, max_recipients: int) -> set[str]:
    """The recipients, each with one request and a grant: at least one, at most the limit."""
    recipients = _check_recipients(s, sender)
    for recipient in recipients:
        if recipient not in s.requests:
            raise EnvelopeError(
                "missing-request", f"recipient {recipient} has grants but no request"
            )
    if not recipients:
        raise EnvelopeError("missing-request", "a referral needs at least one recipient")
    if len(recipients) > max_recipients:
        raise EnvelopeError("too-many-recipients", f"at most {max_recipients} recipients")
    return recipients


@dataclass(frozen=True)
class CheckedAmendment:
    """An amendment that passed :func:`check_amendment`."""

    manifest: Manifest
    manifest_bytes: bytes
    grants: Mapping[tuple[str, str], Disclosed]  # the new grants, (fid, recipient) ->
    requests: Mapping[str, Disclosed]  # the new requests, recipient ->
    new_recipients: frozenset[str]


def check_amendment(
    current: Manifest,
    body: Amendment,
    *,
    sender_sig_public: bytes,
    fids: Iterable[str],
    recipients: Iterable[str],
    max_recipients: int = 64,
    parsed: Sequence[Disclosed] | None = None,
) -> CheckedAmendment:
    """Check a ``POST /v1/referrals/{id}/grants`` body against the stored manifest.

    ``fids`` are the referral's field ids and ``recipients`` its current
    recipients. On return: the new manifest has the same ``referral_id``,
    ``sender_agency`` and ``created_at``, ``version`` one more than
    ``current``'s, and a digest list (sorted, padded) that contains every
    current digest; it is signed by ``sender_sig_public``; every disclosure is
    a new grant or request whose digest is new in the list; grants name known
    fids and are matched one to one by wrapped keys; a new recipient brings
    exactly one request and a grant, an existing one no second request.
    Whether ``version`` is still current when stored is the caller's check
    (a conditional update), as are kids and clocks. ``parsed``: as for
    :func:`check_envelope`.
    """
    m = body.manifest
    _check_succession(current, m)
    canonical = _verify_manifest(m, body.signature, sender_sig_public)
    _check_padding(m.digests)
    if not set(current.digests) <= set(m.digests):
        raise EnvelopeError("manifest-changed", "manifest.digests must keep every current digest")
    s = _Set.of(
        _disclosed(body.disclosures, frozenset(m.digests), seen=current.digests, parsed=parsed)
    )
    if s.fields:
        raise EnvelopeError("malformed", "an amendment adds grants and requests, not fields")
    _check_new_grants(s, set(fids), m.sender_agency, m.created_at)
    new = _new_recipients(s, m.sender_agency, set(recipients), max_recipients)
    _match_wrapped(body.wrapped_keys, s.grants)
    return CheckedAmendment(m, canonical, s.grants, s.requests, frozenset(new))


def _check_succession(current: Manifest, m: Manifest) -> None:
    """``m`` is the next version of ``current``: the same referral, sender and creation time."""
    for member in ("referral_id", "sender_agency", "created_at"):
        if getattr(m, member) != getattr(current, member):
            raise EnvelopeError("manifest-changed", f"manifest.{member} cannot change")
    if m.version != current.version + 1:
        raise EnvelopeError(
            "manifest-changed",
            f"manifest.version must be {current.version + 1} (the current version plus one)",
        )


def _check_new_grants(s: _Set, known: set[str], sender: str, created_at: str) -> None:
    """Every new grant names a known field, is not a sender copy, and is acceptable."""
    for (fid, recipient), d in s.grants.items():
        if fid not in known:
            raise EnvelopeError("field-mismatch", f"a grant names field {fid}, which has none")
        if recipient == sender:
            raise EnvelopeError("malformed", "the sender's own copies cannot be amended")
        _check_grant(_grant_value(d), sender, created_at)


def _new_recipients(s: _Set, sender: str, existing: set[str], max_recipients: int) -> set[str]:
    """The recipients an amendment adds, each with its one request; an ``existing``
    recipient gets no second request; at most ``max_recipients`` in all."""
    for recipient in s.requests:
        if recipient in existing:
            raise EnvelopeError(
                "duplicate-disclosure", f"recipient {recipient} already has a request"
            )
    granted = _check_recipients(s, sender, granted=existing)
    new = {r for _, r in s.grants} - existing
    for recipient in new:
        if recipient not in s.requests:
            raise EnvelopeError(
                "missing-request", f"new recipient {recipient} has grants but no request"
            )
    if len(granted) > max_recipients:
        raise EnvelopeError("too-many-recipients", f"at most {max_recipients} recipients")
    return new
