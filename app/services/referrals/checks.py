"""The server's checks of an envelope against the directory and the clock.

Recipients must be active members, grants must name their current encryption
keys, consents must expire within the configured maximum (refused, never
shortened) and ``created_at`` must be within the allowed clock skew."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from app import errors, vocab
from app.config import Settings
from app.crypto import envelope as env
from app.crypto.encoding import b64url_decode
from app.crypto.wire import GrantValue, RequestValue
from app.models.schemas import rfc3339
from app.services.referrals.common import _invalid, parse_time
from app.services.referrals.store import _Member


def _sig_key(directory: Mapping[str, _Member], agency_id: str) -> bytes:
    member = directory.get(agency_id)
    key = member.current.get(vocab.KeyUse.SIG) if member is not None else None
    if key is None:
        raise errors.Unprocessable("the agency has no current signing key", slug="envelope/no-key")
    return b64url_decode(key[1], length=32)


def _check_recipients(recipients: Iterable[str], directory: Mapping[str, _Member]) -> None:
    for r in sorted(recipients):
        member = directory.get(r)
        if member is None:
            raise errors.Unprocessable(
                f"recipient {r} is not a member of the task force",
                slug="envelope/unknown-recipient",
            )
        if member.status != vocab.AgencyStatus.ACTIVE:
            raise errors.Unprocessable(
                f"recipient {r} is not active ({member.status})",
                slug="envelope/inactive-recipient",
            )


def _check_kids(grants: Iterable[GrantValue], directory: Mapping[str, _Member]) -> None:
    for g in grants:
        member = directory.get(g.recipient)
        key = member.current.get(vocab.KeyUse.ENC) if member is not None else None
        if key is None or key[0] != g.kid:
            raise errors.Unprocessable(
                f"the grant of field {g.fid} to {g.recipient} names kid {g.kid}, which is not "
                "that agency's current encryption key; refresh its keys and seal again",
                slug="envelope/stale-kid",
            )


def _check_expiry(grants: Iterable[GrantValue], now: datetime, settings: Settings) -> None:
    """Every consent expires in the future and within the maximum: refused, never shortened."""
    days = settings.referrals.max_consent_days
    limit = now + timedelta(days=days)
    for g in grants:
        if g.expires_at is None:
            continue
        expires = parse_time(g.expires_at)
        if expires <= now:
            raise errors.Unprocessable(
                f"the consent for field {g.fid} to {g.recipient} expired at {g.expires_at}",
                slug="envelope/expired-consent",
            )
        if expires > limit:
            raise errors.Unprocessable(
                f"the consent for field {g.fid} to {g.recipient} runs to {g.expires_at}, beyond "
                f"the maximum of {days} days (until {rfc3339(limit)}); the survivor's consent "
                "must be renewed within that time",
                slug="envelope/consent-too-long",
                extra={"max_consent_days": days},
            )


def _check_clock(created_at: str, now: datetime, settings: Settings) -> None:
    skew = settings.referrals.max_clock_skew
    if abs((parse_time(created_at) - now).total_seconds()) > skew:
        raise errors.Unprocessable(
            f"manifest.created_at is more than {skew} seconds from the server's clock "
            f"({rfc3339(now)}); check this computer's clock",
            slug="envelope/clock-skew",
        )




def _parsed_disclosures(disclosures: Sequence[str]) -> list[env.Disclosed]:
    """Every disclosure parsed once (422 on the first bad one)."""
    try:
        return env.parse_disclosures(disclosures)
    except env.EnvelopeError as exc:
        raise _invalid(exc) from None


def _named_in(parsed: Iterable[env.Disclosed]) -> set[str]:
    """Agencies named by grant and request disclosures (for the one directory read)."""
    return {d.value.recipient for d in parsed if isinstance(d.value, GrantValue | RequestValue)}
