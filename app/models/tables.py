"""Database tables.

Invariants that live in the schema:
- ``audit_event``, ``audit_leaf``, ``audit_node`` and ``audit_checkpoint`` are
  append-only: triggers installed by the migrations refuse UPDATE and DELETE (and
  TRUNCATE on PostgreSQL).
- ``wrapped_key`` rows are deleted, not flagged, when consent is revoked: the
  server keeps no copy of a revoked path to a field key.
- ``audit_checkpoint`` is keyed by tree size, so two roots can never be signed
  for one size.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    Computed,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlalchemy import inspect as sa_inspect
from sqlmodel import Field, SQLModel

from app.models.types import UTCDateTime, utcnow
from app.vocab import AgencyStatus, ClientStatus, KeyStatus, TaskStatus


def _ts(*, nullable: bool = False, index: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class Agency(SQLModel, table=True):
    __tablename__ = "agency"

    id: str = Field(primary_key=True, max_length=36)
    name: str = Field(max_length=200)
    kind: str = Field(max_length=32)
    status: str = Field(default=AgencyStatus.ACTIVE.value, max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class AgencyKey(SQLModel, table=True):
    __tablename__ = "agency_key"
    __table_args__ = (Index("ix_agency_key_agency_use", "agency_id", "use", "status"),)

    kid: str = Field(primary_key=True, max_length=32)
    agency_id: str = Field(foreign_key="agency.id", max_length=36)
    use: str = Field(max_length=8)
    public_key: str = Field(max_length=64)
    status: str = Field(default=KeyStatus.CURRENT.value, max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    retired_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ApiClient(SQLModel, table=True):
    __tablename__ = "api_client"

    client_id: str = Field(primary_key=True, max_length=64)
    agency_id: str = Field(foreign_key="agency.id", index=True, max_length=36)
    role: str = Field(max_length=16)
    auth_public_key: str = Field(max_length=64)
    auth_kid: str = Field(max_length=32)
    status: str = Field(default=ClientStatus.ACTIVE.value, max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class UsedAssertion(SQLModel, table=True):
    """jti values of client assertions already used, kept until they expire."""

    __tablename__ = "used_assertion"

    client_id: str = Field(primary_key=True, max_length=64)
    jti: str = Field(primary_key=True, max_length=128)
    expires_at: datetime = Field(sa_column=_ts(index=True))


class Referral(SQLModel, table=True):
    """A referral's head: its signed manifest (RFC 8785 text, exactly as signed) and version.

    ``created_at`` is kept as the signed text (times are returned exactly as
    signed); ``received_at`` is the server's clock and orders the boxes.

    A referral is never deleted. On PostgreSQL a trigger refuses DELETE and TRUNCATE,
    and its fields, recipients, grants and wrapped keys refer to it without the
    foreign keys declared below (migration 0010: their per-row checks cost a fifth of
    PostgreSQL's CPU per create; create inserts them from the referral's own row).
    """

    __tablename__ = "referral"
    __table_args__ = (Index("ix_referral_sender_received", "sender_agency", "received_at"),)

    id: str = Field(primary_key=True, max_length=36)
    sender_agency: str = Field(foreign_key="agency.id", max_length=36)
    sender_kid: str = Field(max_length=32)
    created_at: str = Field(max_length=40)
    received_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    version: int = Field(default=1)
    manifest_json: str = Field(sa_column=Column(Text, nullable=False))
    signature: str = Field(max_length=128)
    withdrawn_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    purged_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class ReferralField(SQLModel, table=True):
    """One encrypted field by its opaque id: its disclosure and base64url(nonce || ciphertext)."""

    __tablename__ = "referral_field"

    referral_id: str = Field(foreign_key="referral.id", primary_key=True, max_length=36)
    fid: str = Field(primary_key=True, max_length=32)
    disclosure: str = Field(sa_column=Column(Text, nullable=False))
    ciphertext: str = Field(sa_column=Column(Text, nullable=False))


class ReferralRecipient(SQLModel, table=True):
    """One recipient: its request disclosure and its closed-loop status (signed by it)."""

    __tablename__ = "referral_recipient"
    __table_args__ = (Index("ix_referral_recipient_inbox", "recipient", "received_at"),)

    referral_id: str = Field(foreign_key="referral.id", primary_key=True, max_length=36)
    recipient: str = Field(foreign_key="agency.id", primary_key=True, max_length=36)
    received_at: datetime = Field(sa_column=_ts())
    request: str = Field(sa_column=Column(Text, nullable=False))
    request_json: str = Field(sa_column=Column(Text, nullable=False))
    urgency: str = Field(max_length=16)
    status: str = Field(default=TaskStatus.REQUESTED.value, max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    signed_at: str | None = Field(default=None, max_length=40)
    signature: str | None = Field(default=None, max_length=128)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


class ReferralGrant(SQLModel, table=True):
    """A grant disclosure (fid, recipient) as signed; revocation is recorded here."""

    __tablename__ = "referral_grant"
    __table_args__ = (Index("ix_referral_grant_recipient", "recipient", "referral_id"),)

    referral_id: str = Field(foreign_key="referral.id", primary_key=True, max_length=36)
    fid: str = Field(primary_key=True, max_length=32)
    recipient: str = Field(primary_key=True, max_length=36)
    disclosure: str = Field(sa_column=Column(Text, nullable=False))
    kid: str = Field(max_length=32)
    purpose: str = Field(max_length=32)
    expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True, index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    revoked_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class WrappedKey(SQLModel, table=True):
    """A field key sealed to one agency. Deleted (never flagged) on revocation, expiry, withdraw."""

    __tablename__ = "wrapped_key"

    referral_id: str = Field(foreign_key="referral.id", primary_key=True, max_length=36)
    fid: str = Field(primary_key=True, max_length=32)
    recipient: str = Field(primary_key=True, max_length=36)
    kid: str = Field(max_length=32)
    wrapped_key: str = Field(max_length=128)


class IdempotencyRecord(SQLModel, table=True):
    __tablename__ = "idempotency_record"

    client_id: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_sha256: str = Field(max_length=64)
    status_code: int
    response_json: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts(index=True))


def _from_leaf(member: str, length: int) -> Column[str | None]:
    """A query column the database derives from the leaf's canonical JSON.

    Declared ``Computed`` so that no INSERT names it. The migrations install how each
    backend derives it: on PostgreSQL one ``BEFORE INSERT OR UPDATE`` trigger
    (``ENABLE ALWAYS``) parses ``canonical`` once and sets all nine from it, whatever
    a statement gave them (migration 0011: nine generated expressions parsed it nine
    times); on SQLite virtual generated columns (``json_extract``). Changing who an
    event says acted means changing ``canonical``, which is the Merkle leaf.
    """
    return Column(
        String(length),
        Computed(f"((canonical)::jsonb ->> '{member}')", persisted=True),
        nullable=True,
    )


class AuditEvent(SQLModel, table=True):
    """One audit event, as committed with the action it records.

    ``canonical`` holds the RFC 8785 bytes of the event object: exactly what the
    Merkle leaf commits to. The query columns (actor … outcome, ``ts_leaf``) are
    derived from it by the database (``_from_leaf``), so queries and access reports
    filter on what the leaf says (DESIGN.md "Queries cannot be bent").
    """

    __tablename__ = "audit_event"
    __table_args__ = (
        # a query page is one backward scan of one of these (app.services.audit_log)
        Index("ix_audit_event_actor", "actor", "ts_leaf", "id"),
        Index("ix_audit_event_agency", "actor_agency", "ts_leaf", "id"),
        Index("ix_audit_event_resource", "resource_id", "ts_leaf", "id"),
        Index("ix_audit_event_subject_agency", "subject_agency", "ts_leaf", "id"),
        Index("ix_audit_event_action", "action", "ts_leaf", "id"),
        Index("ix_audit_event_ts_leaf", "ts_leaf", "id"),
    )

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    event_id: str = Field(max_length=36, unique=True)
    ts: datetime = Field(sa_column=_ts())
    canonical: str = Field(sa_column=Column(Text, nullable=False))
    actor: str | None = Field(default=None, sa_column=_from_leaf("actor", 64))
    actor_agency: str | None = Field(default=None, sa_column=_from_leaf("actor_agency", 36))
    subject_agency: str | None = Field(default=None, sa_column=_from_leaf("subject_agency", 36))
    role: str | None = Field(default=None, sa_column=_from_leaf("role", 16))
    action: str | None = Field(default=None, sa_column=_from_leaf("action", 64))
    resource_type: str | None = Field(default=None, sa_column=_from_leaf("resource_type", 32))
    resource_id: str | None = Field(default=None, sa_column=_from_leaf("resource_id", 128))
    outcome: str | None = Field(default=None, sa_column=_from_leaf("outcome", 8))
    ts_leaf: str | None = Field(default=None, sa_column=_from_leaf("ts", 40))


class AuditPending(SQLModel, table=True):
    """Committed events not yet integrated into the Merkle tree (a queue)."""

    __tablename__ = "audit_pending"

    event_id: int = Field(
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    )


class AuditLeaf(SQLModel, table=True):
    """Log position ``seq`` (contiguous from 0) of an event and its leaf hash."""

    __tablename__ = "audit_leaf"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    event_id: int = Field(sa_column=Column(BigInteger, nullable=False, unique=True))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class AuditNode(SQLModel, table=True):
    """Hash of the perfect subtree (level, idx): leaves idx*2^level .. (idx+1)*2^level - 1."""

    __tablename__ = "audit_node"

    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class AuditTreeState(SQLModel, table=True):
    """The single row that serializes integration: locked once per batch."""

    __tablename__ = "audit_tree_state"

    id: int = Field(default=1, primary_key=True)
    size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    root: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    directory_size: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    directory_root: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))


class DirectoryEntry(SQLModel, table=True):
    """One state of one agency's directory leaf, set by the key event at log position ``seq``.

    The directory committed by the checkpoint of size N is, per agency, the
    entry with the largest ``seq`` below N (``app.crypto.keydir``). Written by
    the sequencer in the batch that integrates the event; append-only.
    """

    __tablename__ = "directory_entry"
    __table_args__ = (Index("ix_directory_entry_agency", "agency", "seq"),)

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    agency: str = Field(max_length=36)
    leaf: str = Field(sa_column=Column(Text, nullable=False))


class AuditCheckpoint(SQLModel, table=True):
    __tablename__ = "audit_checkpoint"

    tree_size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary(32), nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())


APPEND_ONLY_TABLES = (
    "audit_event",
    "audit_leaf",
    "audit_node",
    "audit_checkpoint",
    "directory_entry",
)


def table_of(model: type[SQLModel]) -> Table:
    """The Core ``Table`` of a table model, typed.

    SQLModel does not declare ``__table__`` to type checkers; Core statements on the
    table itself (many-row inserts without the ORM's per-row work) need it.
    """
    table = sa_inspect(model).local_table
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table
