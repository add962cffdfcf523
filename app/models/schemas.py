"""Request and response schemas: the wire format of DESIGN.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, model_validator

AgencyKind = Literal[
    "social_service", "shelter", "legal_aid", "medical", "law_enforcement", "ngo", "government"
]
RoleName = Literal["caseworker", "liaison", "auditor", "admin"]
B64Key = Field(min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]{43}$")


def rfc3339(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` (microseconds only when there are some)."""
    if value.tzinfo is not None:
        if value.utcoffset():
            value = value.astimezone(UTC)
        return value.isoformat()[:-6] + "Z"  # isoformat ends in +00:00; strftime is slower
    return value.isoformat() + "Z"


def _no_nul(value: Any) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL characters are not allowed")
    elif isinstance(value, BaseModel):
        for item in value.__dict__.values():
            _no_nul(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _no_nul(item)


class Model(BaseModel):
    """Request bodies: unknown members and NUL characters are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _refuse_nul(self) -> Model:
        _no_nul(self)
        return self


Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
"""A datetime that goes on the wire as RFC 3339 UTC with a ``Z``."""


class Out(BaseModel):
    """Response base (times are ``Timestamp``)."""


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    error: str | None = Field(None, description="RFC 6749 error code (token endpoint only)")
    error_description: str | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str


class Jwk(BaseModel):
    kty: str
    crv: str
    x: str
    kid: str
    use: str
    alg: str


class Jwks(BaseModel):
    keys: list[Jwk]


class KeyOut(Out):
    kid: str
    use: Literal["enc", "sig"]
    public_key: str
    status: Literal["current", "retired", "revoked"]
    created_at: Timestamp


class AgencyOut(Out):
    id: str
    name: str
    kind: AgencyKind
    status: Literal["active", "suspended"]
    keys: list[KeyOut]


class AgencyList(BaseModel):
    items: list[AgencyOut]
    next_cursor: str | None = None


class AgencyCreate(Model):
    name: str = Field(min_length=1, max_length=200)
    kind: AgencyKind
    enc_key: str = B64Key
    sign_key: str = B64Key


class KeyRotation(Model):
    enc_key: str | None = Field(None, min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]{43}$")
    sign_key: str | None = Field(None, min_length=43, max_length=43, pattern=r"^[A-Za-z0-9_-]{43}$")


class ClientCreate(Model):
    role: RoleName
    auth_key: str = B64Key


class ClientOut(Out):
    client_id: str
    agency_id: str
    role: RoleName
    auth_kid: str
    status: str
    created_at: Timestamp


class Health(BaseModel):
    status: Literal["ok"]


# --- referrals (Envelope v1; the authoritative checks are in app.crypto.envelope) ---

Urgency = Literal["routine", "urgent", "emergency"]
Purpose = Literal["service_provision", "investigation", "prosecution", "safety_planning", "sender"]
TaskStatus = Literal[
    "requested",
    "received",
    "accepted",
    "rejected",
    "in-progress",
    "on-hold",
    "completed",
    "failed",
    "cancelled",
]


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    services: list[str] | None = None
    urgency: Urgency | None = None
    case_ref: str | None = None


class FieldDigest(BaseModel):
    ciphertext_sha256: str
    commitment: str


class GrantEntry(BaseModel):
    field: str
    recipient: str
    kid: str
    wrapped_key_sha256: str
    purpose: Purpose
    expires_at: str | None
    release_ref: str | None


class Manifest(BaseModel):
    v: Literal[1]
    referral_id: str
    sender_agency: str
    sender_kid: str
    created_at: str
    metadata: Metadata
    recipients: list[str]
    fields: dict[str, FieldDigest]
    grants: list[GrantEntry]


class WrappedKeyEntry(BaseModel):
    field: str
    recipient: str
    kid: str
    wrapped_key: str


class EnvelopeIn(BaseModel):
    """``POST /v1/referrals`` body (DESIGN.md, Wire format)."""

    manifest: Manifest
    signature: str
    ciphertexts: dict[str, str]
    wrapped_keys: list[WrappedKeyEntry]


class StatusOut(Out):
    recipient: str
    status: TaskStatus
    reason: str | None = None
    note: str | None = None
    updated_at: Timestamp


class EnvelopeOut(BaseModel):
    """The envelope as the caller may see it, plus ``statuses``."""

    manifest: Manifest
    signature: str
    ciphertexts: dict[str, str]
    wrapped_keys: list[WrappedKeyEntry]
    statuses: list[StatusOut]


class ReferralSummary(Out):
    referral_id: str
    sender_agency: str
    created_at: Timestamp
    metadata: dict[str, Any]
    statuses: list[StatusOut]
    withdrawn: bool = False


class ReferralList(BaseModel):
    items: list[ReferralSummary]
    next_cursor: str | None = None


class StatusUpdate(Model):
    status: TaskStatus
    reason: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9_.-]{1,64}$")
    note: str | None = Field(None, max_length=16384, pattern=r"^[A-Za-z0-9_-]+$")


class GrantUpdate(BaseModel):
    """``POST /v1/referrals/{id}/grants``: the re-signed manifest and the new wrapped keys."""

    manifest: Manifest
    signature: str
    wrapped_keys: list[WrappedKeyEntry]


class Revocation(Model):
    field: str = Field(max_length=64)
    recipient: str = Field(max_length=255)


class Revocations(Model):
    revocations: list[Revocation] = Field(min_length=1, max_length=1024)


class GrantsChanged(BaseModel):
    referral_id: str
    grants: list[GrantEntry]


class RevocationsDone(Out):
    referral_id: str
    revoked: list[Revocation]
    revoked_at: Timestamp


# --- audit ---


class AuditItem(BaseModel):
    seq: int | None = Field(description="log position; null until the sequencer integrates it")
    event: dict[str, Any] = Field(
        description="exactly the object whose RFC 8785 bytes form the leaf"
    )
    leaf_hash: str | None = Field(description="standard base64 SHA-256(0x00 || canonical event)")


class AuditList(BaseModel):
    items: list[AuditItem]
    next_cursor: str | None = None


class InclusionProof(BaseModel):
    index: int
    tree_size: int
    hashes: list[str]


class ConsistencyProof(BaseModel):
    first: int
    second: int
    hashes: list[str]


class KeyProof(BaseModel):
    seq: int
    event: dict[str, Any]
    leaf_hash: str
    proof: InclusionProof
    checkpoint: str
