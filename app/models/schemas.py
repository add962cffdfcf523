"""Request and response schemas: the wire format of DESIGN.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from app import vocab
from app.crypto.wire import Manifest, MemberOf, RequestValue, Revocation, TaskStatus

_KIND = MemberOf(vocab.AgencyKind)
_ROLE = MemberOf(vocab.Role)
_AGENCY_STATUS = MemberOf(vocab.AgencyStatus)
_CLIENT_STATUS = MemberOf(vocab.ClientStatus)
_KEY_USE = MemberOf(vocab.KeyUse)
_KEY_STATUS = MemberOf(vocab.KeyStatus)
AgencyKind = Annotated[str, AfterValidator(_KIND), _KIND.schema()]
RoleName = Annotated[str, AfterValidator(_ROLE), _ROLE.schema()]
AgencyStatusName = Annotated[str, AfterValidator(_AGENCY_STATUS), _AGENCY_STATUS.schema()]
ClientStatusName = Annotated[str, AfterValidator(_CLIENT_STATUS), _CLIENT_STATUS.schema()]
KeyUseName = Annotated[str, AfterValidator(_KEY_USE), _KEY_USE.schema()]
KeyStatusName = Annotated[str, AfterValidator(_KEY_STATUS), _KEY_STATUS.schema()]
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


class KeyOut(BaseModel):
    kid: str
    use: KeyUseName
    public_key: str
    status: KeyStatusName
    created_at: Timestamp


class AgencyOut(BaseModel):
    id: str
    name: str
    kind: AgencyKind
    status: AgencyStatusName
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


class ClientOut(BaseModel):
    client_id: str
    agency_id: str
    role: RoleName
    auth_kid: str
    status: ClientStatusName
    created_at: Timestamp


class Health(BaseModel):
    status: Literal["ok"]


# --- referrals (Envelope v2: the request shapes are app.crypto.wire's, the checks
# app.crypto.envelope's; these are the responses) ---


class StatusOut(BaseModel):
    """A recipient's status; ``signature`` by the recipient (null for server-set statuses)."""

    recipient: str
    status: TaskStatus
    reason: str | None = None
    note: str | None = Field(None, description="sealed box to the sender's X25519 key")
    signed_at: str | None = Field(None, description="as signed by the recipient")
    signature: str | None = None
    updated_at: Timestamp


class WrappedKeyOut(BaseModel):
    fid: str
    recipient: str
    kid: str
    wrapped_key: str


class EnvelopeOut(BaseModel):
    """A referral as the caller may see it: the sender everything, a recipient its own part."""

    manifest: Manifest
    signature: str
    disclosures: list[str]
    ciphertexts: dict[str, str]
    wrapped_keys: list[WrappedKeyOut]
    statuses: list[StatusOut]


class ReferralSummary(BaseModel):
    """A list item; ``request`` is the caller's own request (recipients only)."""

    referral_id: str
    sender_agency: str
    created_at: str = Field(description="as signed in the manifest")
    version: int
    statuses: list[StatusOut]
    request: RequestValue | None = None
    withdrawn: bool = False


class ReferralList(BaseModel):
    items: list[ReferralSummary]
    next_cursor: str | None = None


class AmendmentDone(BaseModel):
    referral_id: str
    version: int
    grants: list[str] = Field(description="the grant disclosures added")
    new_recipients: list[str]


class RevocationsDone(BaseModel):
    referral_id: str
    revoked: list[Revocation]
    revoked_at: Timestamp


class Limits(BaseModel):
    """What the server refuses beyond: read these before sealing (``GET /v1/limits``)."""

    max_consent_days: int
    max_fields: int
    max_field_bytes: int
    max_recipients: int
    max_clock_skew_seconds: int
    services: list[str]
    purposes: list[str]
    urgencies: list[str]


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


class DirectoryLeaf(BaseModel):
    """One agency's state in the key directory, as a checkpoint commits to it."""

    agency: str
    status: str
    enc_kid: str | None
    sig_kid: str | None
    event: int


class DirectoryNeighbour(BaseModel):
    index: int
    leaf: DirectoryLeaf
    hashes: list[str]


class KeyProof(BaseModel):
    """``GET /v1/agencies/{id}/keys/proof``: the agency's directory leaf in the
    directory committed by the checkpoint of size ``tree_size``, with its inclusion
    proof (standard base64) and its neighbours' in sort order."""

    tree_size: int
    directory_size: int
    index: int
    leaf: DirectoryLeaf
    hashes: list[str]
    neighbours: list[DirectoryNeighbour]
