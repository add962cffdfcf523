"""The gateway's side of witnessing: cosignatures received, and each witness's state.

- ``checkpoint_cosignature`` holds one verified ``tlog-cosignature`` line per
  (checkpoint, witness key). A row is written only after the line verified
  with the configured key over that checkpoint's note, and is served appended
  to the note; rows are never updated (a cosignature is evidence).
- ``witness_state`` is what the witness runner knows of each witness: the
  size it last cosigned (learned from a 200 or a 409 ``text/x.tlog.size``),
  failures and when to try again. Deleting it loses nothing: the runner
  learns the size again from the witness.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Column, ForeignKey, Integer, String, Text
from sqlmodel import Field, SQLModel

import app.models.tables  # noqa: F401  (audit_checkpoint must be on the metadata for the FK)
from app.models.types import UTCDateTime, utcnow


def _ts(*, nullable: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable)


class CheckpointCosignature(SQLModel, table=True):
    __tablename__ = "checkpoint_cosignature"

    tree_size: int = Field(
        sa_column=Column(
            BigInteger,
            ForeignKey("audit_checkpoint.tree_size"),
            primary_key=True,
            autoincrement=False,
        )
    )
    witness_vkey: str = Field(sa_column=Column(String(512), primary_key=True))
    witness_name: str = Field(max_length=256)
    line: str = Field(sa_column=Column(Text, nullable=False))
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class WitnessState(SQLModel, table=True):
    __tablename__ = "witness_state"

    witness_vkey: str = Field(sa_column=Column(String(512), primary_key=True))
    witness_name: str = Field(max_length=256)
    url: str = Field(max_length=2048)
    cosigned_size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    cosigned_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    failures: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    consecutive_failures: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    last_error: str | None = Field(default=None, max_length=300)
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
