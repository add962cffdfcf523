"""Envelope v2 on the wire: the one definition of its shapes (DESIGN.md, "Envelope v2").

These strict pydantic models validate what the server receives and what a
client opens, and they are the schemas the OpenAPI document publishes, so the
published constraints are the enforced ones. Every model refuses unknown
members and coercion (``extra="forbid"``, ``strict=True``); binary values are
checked as base64url of their exact length; times as RFC 3339 UTC with ``Z``;
ids as lowercase UUIDs; vocabularies against :mod:`app.vocab`.

Vocabulary members are typed ``str`` with a validator (and an ``enum`` in the
JSON schema) rather than as the StrEnum itself: strict validation of a Python
``dict`` (which is what the server has after refusing duplicate keys) accepts
only enum instances for enum-typed fields.

Signed bytes are never produced from these models: the server canonicalizes
the manifest object it parsed from the request, and disclosure digests are
taken over the disclosure strings exactly as sent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from app import vocab

__all__ = [
    "B64_32",
    "DISCLOSURE_RE",
    "FIELD_NAME_RE",
    "RFC3339_RE",
    "UUID_RE",
    "AgencyId",
    "Amendment",
    "EnvelopeIn",
    "FieldValue",
    "GrantValue",
    "Manifest",
    "RequestValue",
    "Revocation",
    "Revocations",
    "StatusIn",
    "StatusSigned",
    "WrappedKeyIn",
]

UUID_RE = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
RFC3339_RE = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]{1,9})?Z$"
)
FIELD_NAME_RE = r"^[a-z][a-z0-9_]{0,63}$"
CASE_REF_RE = r"^[A-Za-z0-9._-]{1,64}$"
REASON_RE = r"^[a-z0-9_.-]{1,64}$"
DISCLOSURE_RE = r"^[A-Za-z0-9_-]+$"

MAX_DISCLOSURE_CHARS = 8192
MAX_DIGESTS = 4096
MAX_DISCLOSURES = 4096
MAX_WRAPPED_KEYS = 4096
MAX_CIPHERTEXT_CHARS = 1_400_000
MAX_NOTE_CHARS = 11_000  # base64url of an 8 KiB note sealed (8192 + 48 bytes)


def _b64url(n: int, what: str) -> Any:
    """Constraints of base64url without padding of exactly ``n`` bytes (canonical last char)."""
    chars = (4 * n + 2) // 3
    last = {0: "", 1: "[AQgw]", 2: "[AEIMQUYcgkosw048]"}[n % 3]
    body = f"[A-Za-z0-9_-]{{{chars - 1}}}" if last else f"[A-Za-z0-9_-]{{{chars}}}"
    return Field(
        min_length=chars,
        max_length=chars,
        pattern=f"^{body}{last}$",
        description=f"{what}: base64url (no padding) of {n} bytes",
    )


B64_32 = Annotated[str, _b64url(32, "32 bytes")]
Kid = Annotated[str, _b64url(16, "key id: SHA-256 of the raw public key, first 16 bytes")]
Fid = Annotated[str, _b64url(16, "field id: 16 random bytes")]
Digest = Annotated[str, _b64url(32, "SHA-256 digest")]
Signature = Annotated[str, _b64url(64, "Ed25519 signature")]
WrappedKey = Annotated[str, _b64url(80, "crypto_box_seal of a 32-byte field key")]
Uuid = Annotated[str, Field(pattern=UUID_RE, min_length=36, max_length=36,
                            description="lowercase hyphenated UUID")]
AgencyId = Uuid
Time = Annotated[str, Field(pattern=RFC3339_RE, max_length=40,
                            description="RFC 3339 time in UTC ending in Z")]
CaseRef = Annotated[str, Field(pattern=CASE_REF_RE, description="sender's opaque reference")]
_REASON = re.compile(REASON_RE)


def _reason_code(value: str) -> str:
    if not _REASON.match(value):
        raise ValueError(
            "a reason code is 1 to 64 lower-case letters, digits, '.', '_' or '-', such as "
            + ", ".join(vocab.REASON_EXAMPLES)
        )
    return value


ReasonCode = Annotated[
    str,
    AfterValidator(_reason_code),
    WithJsonSchema({"type": "string", "pattern": REASON_RE,
                    "description": "a reason code, e.g. " + ", ".join(vocab.REASON_EXAMPLES)}),
]
Ciphertext = Annotated[
    str,
    Field(
        min_length=54,  # 24-byte nonce + 16-byte tag, at least
        max_length=MAX_CIPHERTEXT_CHARS,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="base64url(nonce || XChaCha20-Poly1305 ciphertext)",
    ),
]
Disclosure = Annotated[
    str,
    Field(
        min_length=4,
        max_length=MAX_DISCLOSURE_CHARS,
        pattern=DISCLOSURE_RE,
        description="RFC 9901 disclosure: base64url of the JSON array [salt, type, value]",
    ),
]


class MemberOf:
    """A validator and JSON schema admitting the given vocabulary values (and ``extra``)."""

    def __init__(self, values: Iterable[str], *extra: str) -> None:
        self.allowed = frozenset(str(v) for v in values) | frozenset(extra)
        self.values = sorted(self.allowed)

    def __call__(self, value: str) -> str:
        if value not in self.allowed:
            raise ValueError(f"must be one of {', '.join(self.values)}")
        return value

    def schema(self) -> WithJsonSchema:
        return WithJsonSchema({"type": "string", "enum": self.values})


_SERVICE = MemberOf(vocab.Service)
_URGENCY = MemberOf(vocab.Urgency)
_PURPOSE = MemberOf(vocab.Purpose, vocab.SENDER_PURPOSE)
_TASK_STATUS = MemberOf(vocab.TaskStatus)
_POSTABLE = MemberOf(vocab.POSTABLE_STATUSES)
ServiceName = Annotated[str, AfterValidator(_SERVICE), _SERVICE.schema()]
UrgencyName = Annotated[str, AfterValidator(_URGENCY), _URGENCY.schema()]
PurposeName = Annotated[str, AfterValidator(_PURPOSE), _PURPOSE.schema()]
TaskStatus = Annotated[str, AfterValidator(_TASK_STATUS), _TASK_STATUS.schema()]
"""A ``vocab.TaskStatus`` value."""
PostableStatus = Annotated[str, AfterValidator(_POSTABLE), _POSTABLE.schema()]
"""A status a recipient may post (``vocab.POSTABLE_STATUSES``)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Manifest(_Strict):
    """The signed manifest: only digests, never a field name or a recipient list."""

    v: Literal[2]
    referral_id: Uuid
    sender_agency: AgencyId
    sender_kid: Kid
    created_at: Time
    version: int = Field(ge=1, le=1_000_000)
    digests: list[Digest] = Field(
        min_length=8,
        max_length=MAX_DIGESTS,
        description="sorted digests of every disclosure plus decoys; a multiple of 8",
    )


class FieldValue(_Strict):
    """Value of a ``field`` disclosure."""

    fid: Fid
    ciphertext_sha256: Digest
    commitment: B64_32


class GrantValue(_Strict):
    """Value of a ``grant`` disclosure: one wrapped key of one field for one agency."""

    fid: Fid
    recipient: AgencyId
    kid: Kid
    wrapped_key_sha256: Digest
    purpose: PurposeName
    expires_at: Time | None
    release_ref: Annotated[str, Field(min_length=1, max_length=256,
                                      pattern=r"^[A-Za-z0-9._~:/+=-]+$")] | None


class RequestValue(_Strict):
    """Value of a ``request`` disclosure: what one recipient is asked to do."""

    recipient: AgencyId
    services: list[ServiceName] = Field(min_length=1, max_length=18)
    urgency: UrgencyName
    case_ref: CaseRef | None


class WrappedKeyIn(_Strict):
    fid: Fid
    recipient: AgencyId
    kid: Kid
    wrapped_key: WrappedKey


class EnvelopeIn(_Strict):
    """``POST /v1/referrals``: a referral as its sender's client sealed it."""

    manifest: Manifest
    signature: Signature
    disclosures: list[Disclosure] = Field(min_length=3, max_length=MAX_DISCLOSURES)
    ciphertexts: dict[Fid, Ciphertext] = Field(min_length=1)
    wrapped_keys: list[WrappedKeyIn] = Field(min_length=1, max_length=MAX_WRAPPED_KEYS)


class Amendment(_Strict):
    """``POST /v1/referrals/{id}/grants``: a new manifest version and what it adds."""

    manifest: Manifest
    signature: Signature
    disclosures: list[Disclosure] = Field(min_length=1, max_length=MAX_DISCLOSURES)
    wrapped_keys: list[WrappedKeyIn] = Field(min_length=1, max_length=MAX_WRAPPED_KEYS)


class StatusIn(_Strict):
    """``POST /v1/referrals/{id}/status``: a recipient's signed status change."""

    status: PostableStatus
    reason: ReasonCode | None
    note: Annotated[str, Field(min_length=64, max_length=MAX_NOTE_CHARS,
                               pattern=r"^[A-Za-z0-9_-]+$")] | None
    signed_at: Time
    signature: Signature


class StatusSigned(_Strict):
    """The object whose RFC 8785 bytes a status signature covers (after its prefix)."""

    referral_id: Uuid
    recipient: AgencyId
    status: TaskStatus
    reason: ReasonCode | None
    note_sha256: Digest | None
    signed_at: Time


class Revocation(_Strict):
    fid: Fid
    recipient: AgencyId


class Revocations(_Strict):
    """``POST /v1/referrals/{id}/revocations``."""

    revocations: list[Revocation] = Field(min_length=1, max_length=1024)
