"""Typed results of the SDK: directory entries, inbox items, statuses, requests.

Each is a frozen, slotted dataclass built from the server's JSON by
``from_json`` (a malformed answer raises :class:`VerificationError`), and
``to_json()`` gives back exactly the JSON it was built from (what
``refgate ... --json`` prints). Example::

    page = await rc.inbox(status="requested")
    for item in page.items:                      # InboxItem
        print(item.referral_id, item.sender_agency, item.request.urgency)
        for s in item.statuses:                  # Status
            print(s.recipient, s.status, s.updated_at)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.client.errors import VerificationError

__all__ = ["Agency", "AgencyKey", "InboxItem", "Page", "ReferralRequest", "Status"]

T = TypeVar("T")


def _obj(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise VerificationError(f"the server's answer is malformed: {what} is not an object")
    return value


def _str(data: Mapping[str, Any], key: str, what: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise VerificationError(f"the server's answer is malformed: {what}.{key}")
    return value


def _opt_str(data: Mapping[str, Any], key: str, what: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise VerificationError(f"the server's answer is malformed: {what}.{key}")
    return value


def _list(data: Mapping[str, Any], key: str, what: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise VerificationError(f"the server's answer is malformed: {what}.{key}")
    return value


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, newest first; ``next_cursor`` is None on the last page.

    Example::

        cursor = None
        while True:
            page = await rc.inbox(cursor=cursor)
            handle(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    """

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class AgencyKey:
    """One public key of an agency as the directory serves it (checked against the
    audit log only when it is used).

    Example: ``AgencyKey(kid="k_3f…", use="enc", public_key="b64url…",
    status="current", created_at="2026-12-01T09:00:00Z")``
    """

    kid: str
    use: str
    """``enc`` (X25519, referrals are sealed to it) or ``sig`` (Ed25519, it signs)."""
    public_key: str
    status: str
    """``current`` or ``retired``."""
    created_at: str

    @classmethod
    def from_json(cls, data: object) -> AgencyKey:
        d = _obj(data, "key")
        return cls(kid=_str(d, "kid", "key"), use=_str(d, "use", "key"),
                   public_key=_str(d, "public_key", "key"), status=_str(d, "status", "key"),
                   created_at=_str(d, "created_at", "key"))

    def to_json(self) -> dict[str, Any]:
        return {"kid": self.kid, "use": self.use, "public_key": self.public_key,
                "status": self.status, "created_at": self.created_at}


@dataclass(frozen=True, slots=True)
class Agency:
    """A task-force directory entry (``GET /v1/agencies``).

    Example::

        Agency(id="0b6c…", name="Eastside Legal Aid Clinic", kind="legal_aid",
               status="active", keys=(AgencyKey(use="enc", …), AgencyKey(use="sig", …)))

    ``status`` is ``active`` or ``suspended`` (a suspended agency receives
    nothing). What the directory says is what the agency says about itself,
    relayed by the server: keys are verified against the audit log when used.
    """

    id: str
    name: str
    kind: str
    status: str
    keys: tuple[AgencyKey, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                   kw_only=True)

    @classmethod
    def from_json(cls, data: object) -> Agency:
        d = _obj(data, "agency")
        return cls(id=_str(d, "id", "agency"), name=_str(d, "name", "agency"),
                   kind=_str(d, "kind", "agency"), status=_str(d, "status", "agency"),
                   keys=tuple(AgencyKey.from_json(k) for k in _list(d, "keys", "agency")),
                   raw=dict(d))

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)

    def current_kid(self, use: str) -> str | None:
        """The kid of the current ``enc`` or ``sig`` key the directory serves."""
        return next((k.kid for k in self.keys if k.use == use and k.status == "current"), None)


@dataclass(frozen=True, slots=True)
class Status:
    """One recipient's status on a referral.

    Example::

        Status(recipient="0b6c…", status="accepted", updated_at="2026-12-07T10:02:11Z",
               reason=None, note="<sealed to the sender>", signed_at="2026-12-07T10:02:10Z",
               signature="…", verified=True)

    ``status`` is one of requested, received, accepted, declined, completed,
    cancelled; ``requested`` and ``cancelled`` are set by the server (unsigned),
    every other one is signed by the recipient. ``verified`` is True when the
    SDK checked that signature (``open_referral``), False for a server-set
    status, and None where nothing was checked (inbox lists). ``note`` is
    ciphertext: the sender reads it in ``OpenedReferral.notes``.
    """

    recipient: str
    status: str
    updated_at: str | None = None
    reason: str | None = None
    note: str | None = None
    signed_at: str | None = None
    signature: str | None = None
    verified: bool | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                   kw_only=True)

    @classmethod
    def from_json(cls, data: object) -> Status:
        d = _obj(data, "status")
        verified = d.get("verified")
        return cls(recipient=_str(d, "recipient", "status"), status=_str(d, "status", "status"),
                   updated_at=_opt_str(d, "updated_at", "status"),
                   reason=_opt_str(d, "reason", "status"), note=_opt_str(d, "note", "status"),
                   signed_at=_opt_str(d, "signed_at", "status"),
                   signature=_opt_str(d, "signature", "status"),
                   verified=verified if isinstance(verified, bool) else None, raw=dict(d))

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)


@dataclass(frozen=True, slots=True)
class ReferralRequest:
    """What the sender asks one recipient to do.

    Example: ``ReferralRequest(recipient="0b6c…", services=("legal",),
    urgency="urgent", case_ref="c-77")``; ``urgency`` is routine, urgent or
    emergency, ``services`` come from ``app.vocab.Service``.
    """

    recipient: str
    services: tuple[str, ...]
    urgency: str
    case_ref: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                   kw_only=True)

    @classmethod
    def from_json(cls, data: object) -> ReferralRequest:
        d = _obj(data, "request")
        services = _list(d, "services", "request")
        if not all(isinstance(s, str) for s in services):
            raise VerificationError("the server's answer is malformed: request.services")
        return cls(recipient=_str(d, "recipient", "request"), services=tuple(services),
                   urgency=_str(d, "urgency", "request"),
                   case_ref=_opt_str(d, "case_ref", "request"), raw=dict(d))

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)


@dataclass(frozen=True, slots=True)
class InboxItem:
    """A referral in ``inbox()`` (received) or ``sent()``: no content, only routing.

    Example::

        InboxItem(referral_id="5e0f…", sender_agency="9a1d…",
                  created_at="2026-12-07T09:58:00Z", version=1,
                  statuses=(Status(recipient="0b6c…", status="requested", …),),
                  request=ReferralRequest(services=("legal",), urgency="urgent", …),
                  withdrawn=False)

    In the inbox, ``statuses`` holds this agency's own status and ``request``
    what it is asked to do; in ``sent()``, ``statuses`` has every recipient's
    and ``request`` is None. Open the content with ``open_referral``.
    """

    referral_id: str
    sender_agency: str
    created_at: str
    version: int
    statuses: tuple[Status, ...]
    request: ReferralRequest | None = None
    withdrawn: bool = False
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False,
                                   kw_only=True)

    @classmethod
    def from_json(cls, data: object) -> InboxItem:
        d = _obj(data, "referral")
        version = d.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise VerificationError("the server's answer is malformed: referral.version")
        request = d.get("request")
        return cls(
            referral_id=_str(d, "referral_id", "referral"),
            sender_agency=_str(d, "sender_agency", "referral"),
            created_at=_str(d, "created_at", "referral"), version=version,
            statuses=tuple(Status.from_json(s) for s in _list(d, "statuses", "referral")),
            request=None if request is None else ReferralRequest.from_json(request),
            withdrawn=d.get("withdrawn") is True, raw=dict(d),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.raw)
