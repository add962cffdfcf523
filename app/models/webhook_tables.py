"""Webhook subscriptions and their delivery outbox.

Invariants that live in the schema:
- ``webhook_delivery`` is a transactional outbox: a row is inserted in the same
  transaction as the action it announces, so a committed action always has its
  deliveries and a rolled-back one has none.
- A delivery's ``id`` is the Standard Webhooks ``webhook-id``: the same on every
  attempt and on a replay, so receivers can deduplicate.
- ``payload`` holds ids and routing metadata only, never referral content.
- Deleting a webhook deletes its deliveries (the audit log keeps the record).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, ForeignKey, Index, Integer, String, Text
from sqlmodel import Field, SQLModel

import app.models.tables  # noqa: F401  (agency must be on the metadata for the foreign keys)
from app.models.types import UTCDateTime, utcnow
from app.vocab import DeliveryStatus


def _ts(*, nullable: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable)


class Webhook(SQLModel, table=True):
    """An agency's subscription of one URL to event types (``event_types``: JSON list)."""

    __tablename__ = "webhook"

    id: str = Field(primary_key=True, max_length=36)
    agency_id: str = Field(foreign_key="agency.id", index=True, max_length=36)
    url: str = Field(max_length=2048)
    event_types: str = Field(sa_column=Column(Text, nullable=False))
    secret: str = Field(max_length=128)
    previous_secret: str | None = Field(default=None, max_length=128)
    previous_secret_expires_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    created_by: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    secret_rotated_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook: ``pending`` until ``delivered`` or ``dead``."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
        Index("ix_webhook_delivery_webhook", "webhook_id", "created_at"),
    )

    id: str = Field(primary_key=True, max_length=40)
    webhook_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("webhook.id", ondelete="CASCADE"), nullable=False
        )
    )
    event_type: str = Field(max_length=64)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default=DeliveryStatus.PENDING.value, max_length=16)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
    last_attempt_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    delivered_at: datetime | None = Field(default=None, sa_column=_ts(nullable=True))
    last_status_code: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    last_error: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_ts())
