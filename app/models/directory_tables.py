"""The service directory: each agency's services and their live capacity.

Invariants that live in the schema:
- No column holds a street address: a confidential site's address never
  enters the directory (the request schemas refuse an ``address`` member).
- ``directory_term`` is the index of the multi-valued filters: one row per
  (kind, value, service) for each category, population and language range
  (every RFC 4647 prefix of each language tag, lowercased), so that each
  filter is one equality on its primary key. The same values are kept as
  JSON lists on the service row for output; both are written together by
  ``app.services.directory`` only.
- ``accepting_rank`` (yes 2, waitlist 1, no 0) orders a search together with
  ``capacity_updated_at`` and ``id`` (``ix_directory_service_order``):
  accepting first, then the freshest capacity.
- Deleting a service deletes its terms (ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Text
from sqlmodel import Field, SQLModel

import app.models.tables  # noqa: F401  (agency must be on the metadata for the foreign key)
from app.models.types import UTCDateTime, utcnow


def _ts() -> Column[datetime]:
    return Column(UTCDateTime(), nullable=False)


def _text(nullable: bool = True) -> Column[str]:
    return Column(Text, nullable=nullable)


class DirectoryService(SQLModel, table=True):
    """One service an agency publishes (DESIGN.md, "Service directory and capacity")."""

    __tablename__ = "directory_service"
    __table_args__ = (
        Index("ix_directory_service_order", "accepting_rank", "capacity_updated_at", "id"),
    )

    id: str = Field(primary_key=True, max_length=36)
    agency_id: str = Field(foreign_key="agency.id", index=True, max_length=36)
    name: str = Field(max_length=200)
    description: str = Field(sa_column=_text(nullable=False))
    categories: str = Field(sa_column=_text(nullable=False))  # JSON list
    languages: str = Field(sa_column=_text(nullable=False))  # JSON list, BCP 47 tags as given
    populations: str = Field(sa_column=_text(nullable=False))  # JSON list
    eligibility: str | None = Field(default=None, sa_column=_text())
    service_area: str | None = Field(default=None, sa_column=_text())
    hours: str | None = Field(default=None, sa_column=_text())
    intake: str | None = Field(default=None, sa_column=_text())
    accepting: str = Field(max_length=16)
    accepting_rank: int = Field(sa_column=Column(Integer, nullable=False))
    available: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    unit: str = Field(max_length=16)
    capacity_updated_at: datetime = Field(sa_column=_ts())
    capacity_updated_by: str | None = Field(default=None, max_length=64)
    search_text: str = Field(sa_column=_text(nullable=False))  # lowercased name and description
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class DirectoryTerm(SQLModel, table=True):
    """A filterable value of a service: (kind, value) with kind category|population|language."""

    __tablename__ = "directory_term"
    __table_args__ = (Index("ix_directory_term_service", "service_id"),)

    kind: str = Field(primary_key=True, max_length=16)
    value: str = Field(primary_key=True, max_length=64)
    service_id: str = Field(
        sa_column=Column(
            String(36),
            ForeignKey("directory_service.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
