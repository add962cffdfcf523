"""The service directory: each agency's services and their live capacity.

Invariants that live in the schema:
- No column holds a street address: a confidential site's address never
  enters the directory (the request schemas refuse an ``address`` member).
- ``terms`` holds the values the multi-valued filters match, in the row
  itself: ``category:<service>``, ``population:<population>`` and
  ``language:<range>`` for every RFC 4647 prefix of each language tag,
  lowercased (``es-MX`` gives ``language:es`` and ``language:es-mx``). On
  PostgreSQL it is a ``text[]`` with a GIN index, and a search with any
  number of filters is one containment test (``terms @> :terms``); on SQLite
  it is one text, the terms separated and surrounded by spaces, each filter
  is ``instr(terms, ' <term> ')``, and ``ix_directory_service_search`` (the
  search order with the terms) lets a search check them without reading the
  rows it skips. The values shown are kept as JSON lists beside it for
  output; both are written together by ``app.services.directory`` only.
- ``accepting_rank`` (yes 2, waitlist 1, no 0) orders a search together with
  ``capacity_updated_at`` and ``id`` (``ix_directory_service_order``):
  accepting first, then the freshest capacity.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Index, Integer, Text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine
from sqlmodel import Field, SQLModel

import app.models.tables  # noqa: F401  (agency must be on the metadata for the foreign key)
from app.models.types import UTCDateTime, utcnow


def _ts() -> Column[datetime]:
    return Column(UTCDateTime(), nullable=False)


def _text(nullable: bool = True) -> Column[str]:
    return Column(Text, nullable=nullable)


class SearchTerms(TypeDecorator[list[str]]):
    """A list of search terms (no spaces in a term): ``text[]`` on PostgreSQL; elsewhere
    one text, ``" term term "`` (a space before and after each term)."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.ARRAY(Text))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Sequence[str] | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if any(not term or " " in term for term in value):
            raise ValueError("a search term is empty or holds a space")
        if dialect.name == "postgresql":
            return list(value)
        return f" {' '.join(value)} "

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value.split()
        return list(value)


class DirectoryService(SQLModel, table=True):
    """One service an agency publishes (DESIGN.md, "Service directory and capacity")."""

    __tablename__ = "directory_service"
    __table_args__ = (
        Index("ix_directory_service_order", "accepting_rank", "capacity_updated_at", "id"),
        Index(  # no pending list: a search never scans unmerged entries (see the migration)
            "ix_directory_service_terms", "terms",
            postgresql_using="gin", postgresql_with={"fastupdate": "off"},
        ).ddl_if(dialect="postgresql"),
        Index(  # SQLite: the order index with the terms, so a filter reads no table row
            "ix_directory_service_search", "accepting_rank", "capacity_updated_at", "id", "terms"
        ).ddl_if(dialect="sqlite"),
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
    terms: list[str] = Field(sa_column=Column(SearchTerms(), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())

