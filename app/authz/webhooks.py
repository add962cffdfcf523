"""Who manages which webhook, and whom a referral event reaches (``app.authz.webhooks``).

Rules (DESIGN.md, "Identity and authorization"; ``app.services.webhooks``):
- a webhook is its agency's: only that agency's clients list, remove, rotate,
  read the deliveries of or replay it; another agency's webhook is as missing
  (404, recorded as denied, exactly as for a webhook that does not exist);
- a referral event reaches an agency only while that agency may see the
  referral, by the rule of ``app.authz.referrals`` (``listed_agency_sees``): a
  law-enforcement agency hears of a referral only while it holds an active
  grant. ``consent.revoked`` and ``referral.cancelled`` are the exceptions their
  services state (the recipient that lost access must hear of it to purge).

``app.services.webhooks`` asks here and never restates these conditions.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import col

from app import errors
from app.authz.referrals import listed_agency_sees
from app.identity import Principal
from app.models.tables import Agency
from app.models.webhook_tables import Webhook
from app.services.audit import Action, denied


def of_own_agency(who: Principal) -> Any:
    """SQL condition: the ``webhook`` row is ``who``'s agency's."""
    return col(Webhook.agency_id) == who.agency_id


def not_found(who: Principal, action: Action, webhook_id: str, what: str) -> errors.NotFound:
    """404 for a ``what`` (webhook, delivery) missing or not ``who``'s, recorded as denied."""
    return errors.NotFound(
        f"no such {what}",
        audit=denied(who.actor, action, "webhook", webhook_id, {"reason": "not visible"}),
    )


def owned(who: Principal, hook: Webhook | None, webhook_id: str, action: Action) -> Webhook:
    """``hook`` if it exists and is ``who``'s agency's; else 404 (another agency's is as
    missing)."""
    if hook is None or hook.agency_id != who.agency_id:
        raise not_found(who, action, webhook_id, "webhook")
    return hook


def sees_the_referral(referral_id: Any, now: Any) -> Any:
    """SQL condition: the agency of the ``webhook`` row (joined with its ``agency``) may
    see the referral at ``now``, so its subscriptions may hear of it."""
    return listed_agency_sees(referral_id, col(Webhook.agency_id), col(Agency.kind), now)
