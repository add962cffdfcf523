"""Request and response schemas of the webhook API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, field_validator

from app import vocab
from app.crypto.wire import MemberOf
from app.models.schemas import Model, Timestamp


class EventType(StrEnum):
    REFERRAL_RECEIVED = "referral.received"
    REFERRAL_STATUS_CHANGED = "referral.status_changed"
    REFERRAL_CANCELLED = "referral.cancelled"
    GRANT_ADDED = "grant.added"
    CONSENT_REVOKED = "consent.revoked"
    CAPACITY_UPDATED = "capacity.updated"


_DELIVERY_STATUS = MemberOf(vocab.DeliveryStatus)
DeliveryStatus = Annotated[str, AfterValidator(_DELIVERY_STATUS), _DELIVERY_STATUS.schema()]


class WebhookCreate(Model):
    url: str = Field(
        min_length=8,
        max_length=2048,
        description="HTTPS endpoint; it must not resolve to a private, loopback or "
        "link-local address",
    )
    event_types: list[EventType] = Field(min_length=1, max_length=len(EventType))

    @field_validator("event_types")
    @classmethod
    def _unique(cls, value: list[EventType]) -> list[EventType]:
        if len(set(value)) != len(value):
            raise ValueError("event types must be unique")
        return value


class WebhookOut(BaseModel):
    id: str
    url: str
    event_types: list[EventType]
    created_at: Timestamp
    secret_rotated_at: Timestamp | None = None


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="Standard Webhooks signing secret (whsec_ + base64); shown only once"
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]
    next_cursor: str | None = None


class WebhookSecret(BaseModel):
    id: str
    secret: str = Field(description="the new signing secret; shown only once")
    previous_secret_expires_at: Timestamp | None = Field(
        None, description="until then deliveries carry signatures with both secrets"
    )


class DeliveryOut(BaseModel):
    id: str = Field(description="the webhook-id header: the same on every attempt")
    webhook_id: str
    event_type: EventType
    status: DeliveryStatus
    attempts: int
    payload: dict[str, Any]
    created_at: Timestamp
    next_attempt_at: Timestamp | None = None
    last_attempt_at: Timestamp | None = None
    delivered_at: Timestamp | None = None
    last_status_code: int | None = None
    last_error: str | None = None


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = None
