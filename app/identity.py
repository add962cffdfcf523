"""Who is calling: roles, scopes, the authenticated ``Principal`` and the audit ``Actor``.

Plain data with no web framework and no database: services take a ``Principal``
from here (never from ``app.auth``, which is the HTTP dependency that builds one
from a bearer token). Roles and scopes are the vocabulary's (``app.vocab``).
"""

from __future__ import annotations

from dataclasses import dataclass

from app.vocab import ROLE_SCOPES, AgencyKind, Role, Scope

__all__ = ["ROLE_SCOPES", "Actor", "Principal", "Role", "Scope", "scopes_of"]


@dataclass(frozen=True)
class Actor:
    """Who acted: an authenticated client, a client attempting to log on, or the system."""

    client_id: str | None
    agency_id: str | None
    role: str | None

    @classmethod
    def system(cls) -> Actor:
        return cls(client_id=None, agency_id=None, role="system")


@dataclass(frozen=True)
class Principal:
    """An authenticated client of an active agency, with the scopes its token carries."""

    client_id: str
    agency_id: str
    agency_kind: str
    role: Role
    scopes: frozenset[str]

    @property
    def actor(self) -> Actor:
        return Actor(client_id=self.client_id, agency_id=self.agency_id, role=str(self.role))

    @property
    def law_enforcement(self) -> bool:
        return self.agency_kind == AgencyKind.LAW_ENFORCEMENT


def scopes_of(role: str) -> list[str]:
    """The scopes an access token of a client with ``role`` carries."""
    return [str(s) for s in ROLE_SCOPES[Role(role)]]
