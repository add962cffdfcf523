"""Who writes the service directory (``app.authz.directory``)."""

from __future__ import annotations

from app.identity import Principal


def manages_services_of(who: Principal, agency_id: str) -> bool:
    """Whether ``who`` may publish ``agency_id``'s services and capacity.

    The directory is read by every task-force member; an agency's entries are
    written by its own caseworkers and admins only (the routes require the
    ``services:write`` scope), never by another agency's, task-force admins
    included: a service's capacity is that agency's word.
    """
    return who.agency_id == agency_id
