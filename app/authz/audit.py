"""Who reads the audit log, and which events (DESIGN.md, "Audit log").

Auditors (``audit:read``) read every event. Caseworkers and liaisons
(``audit:own``) read the events their own agency took part in: as the actor's
agency or as the subject agency. Admins have neither scope: refused with 403,
and the refusal is itself an audit event.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_
from sqlmodel import col

from app import errors
from app.identity import Principal, Scope
from app.models.tables import AuditEvent
from app.services.audit import Action, denied

READ_SCOPES = frozenset({Scope.AUDIT_READ, Scope.AUDIT_OWN})


def require_reader(who: Principal) -> Principal:
    """``who``, if it may read the audit log at all; else 403 with its denial event."""
    if not who.scopes & READ_SCOPES:
        raise errors.Forbidden(
            f"the {who.role} role may not read the audit log",
            audit=denied(
                who.actor,
                Action.ACCESS_DENIED,
                "audit_log",
                None,
                {"missing_scope": str(Scope.AUDIT_READ)},
            ),
        )
    return who


def own_agency(who: Principal) -> str | None:
    """The agency whose events alone ``who`` may see; None when it sees every event."""
    return None if Scope.AUDIT_READ in who.scopes else who.agency_id


def concerns(agency: Any) -> Any:
    """SQL condition: the event concerns ``agency`` (as the actor's agency or the subject)."""
    return or_(col(AuditEvent.actor_agency) == agency, col(AuditEvent.subject_agency) == agency)


def visible_to(who: Principal) -> Any:
    """SQL condition: ``who`` may see the event (None when every event is visible)."""
    own = own_agency(who)
    return None if own is None else concerns(own)
