"""Who may see what: one policy module per resource, and every read goes through them.

- ``app.authz.referrals``: which referrals a caller sees, and which fields
  (the rules of DESIGN.md, "Identity and authorization");
- ``app.authz.audit``: who reads the audit log, and which of its events;
- ``app.authz.directory``: who writes an agency's services and capacity;
- ``app.authz.webhooks``: who manages a webhook, and whom a referral event
  reaches (the referral rule above, for several agencies at once).

Routes and services ask here and never restate these conditions. The names
below are re-exported so ``from app.authz import relation`` keeps working.
"""

from __future__ import annotations

from app.authz.directory import manages_services_of
from app.authz.referrals import (
    LAW_ENFORCEMENT,
    Access,
    Grant,
    Head,
    OwnStatus,
    Relation,
    active_grant,
    params,
    relation,
    visible_referrals,
)

__all__ = [
    "LAW_ENFORCEMENT",
    "Access",
    "Grant",
    "Head",
    "OwnStatus",
    "Relation",
    "active_grant",
    "manages_services_of",
    "params",
    "relation",
    "visible_referrals",
]
