"""SDK methods of referrals (mixed into ``RefgateClient``): send, list, open, answer, amend.

Sending is :meth:`ReferralMethods.seal_referral` (checked against the
server's limits, every recipient's key verified, encrypted and signed here)
then :meth:`ReferralMethods.post_referral` (an ``Idempotency-Key`` derived from
the referral id: a re-post never creates a second referral). Opening verifies
the sender's signature, every digest, hash and commitment and every recipient's
status signature before any plaintext is returned; a consent is widened only
after the referral as stored verifies again. See ``app.client.sdk`` for what
these guarantees rest on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from app.client.agencies import AgencyMethods
from app.client.errors import RefgateError, VerificationError
from app.client.http import expect, rfc3339
from app.client.results import InboxItem, Page, ReferralRequest, Status
from app.crypto import envelope as env

__all__ = ["OpenedReferral", "ReferralMethods", "SealedReferral", "idempotency_key_for"]


def _envelope_request(recipient: str, spec: Mapping[str, Any]) -> env.Request:
    return env.Request(
        recipient=recipient,
        services=tuple(spec.get("services") or ()),
        urgency=str(spec.get("urgency", "routine")),
        case_ref=spec.get("case_ref"),
    )


def _check_request_shape(
    fields: Mapping[str, str],
    consent: Mapping[str, Mapping[str, str]],
    requests: Mapping[str, Mapping[str, Any]],
    limits: Mapping[str, Any],
) -> None:
    """Refuse locally what the server would refuse, with the words of the CLI."""
    if not fields:
        raise ValueError("a referral needs at least one field (refgate send --field name=value)")
    if not requests:
        raise ValueError("a referral needs at least one recipient (refgate send --to)")
    unknown = sorted(set(consent) - set(fields))
    if unknown:
        raise ValueError(f"consent names field {unknown[0]!r}, which is not in the referral")
    consented = {r for per in consent.values() for r in per}
    for recipient in requests:
        if recipient not in consented:
            raise ValueError(
                f"recipient {recipient} has no consented field: it would receive nothing "
                "(add --consent FIELD:RECIPIENT:PURPOSE, or leave it out)"
            )
    for recipient in sorted(consented - set(requests)):
        raise ValueError(f"consent names {recipient}, which is not a recipient (--to)")
    purposes = set(limits.get("purposes", ()))
    for per in consent.values():
        for purpose in per.values():
            if purpose not in purposes:
                raise ValueError(
                    f"unknown purpose {purpose!r}: one of {', '.join(sorted(purposes))}"
                )
    services, urgencies = set(limits.get("services", ())), set(limits.get("urgencies", ()))
    for recipient, spec in requests.items():
        asked = list(spec.get("services") or [])
        if not asked:
            raise ValueError(f"say which services {recipient} is asked for (--service)")
        for service in asked:
            if service not in services:
                raise ValueError(
                    f"unknown service {service!r}: one of {', '.join(sorted(services))}"
                )
        if spec.get("urgency", "routine") not in urgencies:
            raise ValueError(f"urgency must be one of {', '.join(sorted(urgencies))}")
    if len(fields) > int(limits.get("max_fields", 64)):
        raise ValueError(f"at most {limits['max_fields']} fields")
    if len(requests) > int(limits.get("max_recipients", 32)):
        raise ValueError(f"at most {limits['max_recipients']} recipients")


def idempotency_key_for(referral_id: str) -> str:
    """The ``Idempotency-Key`` of the POST that creates ``referral_id``: every
    (re)post of one sealed referral carries the same key."""
    return f"refgate-send-{referral_id}"


@dataclass(frozen=True)
class SealedReferral:
    """A referral encrypted and signed but not yet sent (:meth:`RefgateClient.seal_referral`).

    ``body`` is the ``POST /v1/referrals`` request (ciphertext, salted
    disclosures and the signed manifest: nothing readable without a
    recipient's key); ``fids`` maps field names to their opaque ids and
    ``expires_at`` maps each recipient to its consent's expiry.
    """

    referral_id: str
    body: dict[str, Any]
    fids: dict[str, str]
    expires_at: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "referral_id": self.referral_id,
            "body": self.body,
            "fids": self.fids,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SealedReferral:
        return cls(
            referral_id=str(data["referral_id"]),
            body=dict(data["body"]),
            fids=dict(data["fids"]),
            expires_at=dict(data["expires_at"]),
        )


@dataclass(frozen=True, slots=True)
class OpenedReferral:
    """A referral whose signature, digests, hashes, commitments and statuses all verified.

    ``fields`` maps field name to value for exactly the fields addressed to
    the caller (``fids``: name to opaque id). ``grants`` (dicts: ``fid``,
    ``recipient``, ``kid``, ``purpose``, ``expires_at``, ``release_ref``,
    ``wrapped_key_sha256``) and ``requests`` (recipient ->
    :class:`ReferralRequest`) are the disclosures served to the caller (a
    recipient: its own; the sender: all). ``statuses`` are :class:`Status`
    with ``verified`` set. For the sender, ``notes`` maps a recipient to its
    decrypted status note; notes that do not open with the sender's key are
    listed in ``unreadable_notes``.

    Example::

        opened = await rc.open_referral("5e0f…")
        opened.fields      # {"full_name": "Maria Example", "narrative": "Recruited …"}
        opened.requests    # {"0b6c…": ReferralRequest(services=("legal",), urgency="urgent", …)}
        opened.statuses    # (Status(recipient="0b6c…", status="accepted", verified=True, …),)
        opened.notes       # {"0b6c…": "Intake Tuesday"}  (the sender only)
    """

    manifest: dict[str, Any]
    fields: dict[str, str]
    fids: dict[str, str]
    grants: list[dict[str, Any]]
    requests: dict[str, ReferralRequest]
    statuses: tuple[Status, ...]
    notes: dict[str, str] = field(default_factory=dict)
    unreadable_notes: tuple[str, ...] = ()

    @property
    def referral_id(self) -> str:
        return str(self.manifest["referral_id"])

    @property
    def sender_agency(self) -> str:
        return str(self.manifest["sender_agency"])

    def field_of(self, fid: str) -> str | None:
        """The name of field ``fid`` if the caller could open it."""
        return next((name for name, f in self.fids.items() if f == fid), None)


class ReferralMethods(AgencyMethods):
    """Referrals: seal and send, list, open, answer with a status, widen or revoke consent."""

    _limits: dict[str, Any] | None = None

    async def limits(self) -> dict[str, Any]:
        """The server's limits and vocabularies (``GET /v1/limits``), fetched once."""
        if self._limits is None:
            self._limits = expect(await self._get_json("/v1/limits"), dict, "limits")
        return self._limits

    async def _recipient_keys(self, recipients: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        """Each recipient's verified current encryption key; refuses an inactive agency."""
        out: dict[str, tuple[str, bytes]] = {}
        for recipient in dict.fromkeys(recipients):
            entry = await self.agency(recipient)
            if entry.status != "active":
                raise ValueError(
                    f"recipient {recipient} ({entry.name}) is not "
                    f"active ({entry.status}): it cannot receive referrals"
                )
            out[recipient] = await self.agency_key(recipient, "enc", entry=entry)
        return out

    async def _grants(
        self,
        consent: Mapping[str, Mapping[str, str]],
        expires_at: str,
        release_ref: str | None,
    ) -> list[env.Grant]:
        enc_keys = await self._recipient_keys(r for per in consent.values() for r in per)
        return [
            env.Grant(
                field=name,
                recipient=recipient,
                enc_public=enc_keys[recipient][1],
                purpose=purpose,
                expires_at=expires_at,
                release_ref=release_ref,
            )
            for name, per in consent.items()
            for recipient, purpose in per.items()
        ]

    async def _expiry(self, expires_in_days: int) -> tuple[datetime, str]:
        """(now, expires_at) after checking ``expires_in_days`` against the server's maximum."""
        maximum = int((await self.limits())["max_consent_days"])
        if not 1 <= expires_in_days <= maximum:
            raise ValueError(
                f"consent must last 1 to {maximum} days (the server's maximum); "
                f"{expires_in_days} was asked for (refgate send --days)"
            )
        now = datetime.now(UTC).replace(microsecond=0)
        return now, rfc3339(now + timedelta(days=expires_in_days))

    async def seal_referral(
        self,
        fields: Mapping[str, str],
        consent: Mapping[str, Mapping[str, str]],
        requests: Mapping[str, Mapping[str, Any]],
        *,
        expires_in_days: int = 90,
        release_ref: str | None = None,
    ) -> SealedReferral:
        """Check and encrypt a referral without sending it (arguments as :meth:`send_referral`).

        The referral id is chosen here, by the client; post the result with
        :meth:`post_referral`, as often as needed: every post carries the same
        ``Idempotency-Key`` (:func:`idempotency_key_for`), so a re-post after
        an interrupted or failed send is answered like the first and never
        creates a second referral. The ``refgate`` CLI saves it in an outbox
        (``app.client.outbox``) between the two steps.
        """
        _check_request_shape(fields, consent, requests, await self.limits())
        await self._check_own_keys()
        now, expires_at = await self._expiry(expires_in_days)
        grants = await self._grants(consent, expires_at, release_ref)
        referral_id = str(uuid.uuid4())
        sealed = env.seal_envelope(
            referral_id=referral_id,
            sender_agency=self.agency_id,
            sender_sig_seed=self.key.sig_seed,
            sender_enc_public=self.key.enc_public,
            fields=dict(fields),
            grants=grants,
            requests=[_envelope_request(r, spec) for r, spec in requests.items()],
            created_at=rfc3339(now),
        )
        return SealedReferral(
            referral_id=referral_id,
            body=sealed.body,
            fids=sealed.fids,
            expires_at={r: expires_at for r in requests},
        )

    async def post_referral(self, sealed: SealedReferral) -> dict[str, Any]:
        """Post a sealed referral (``POST /v1/referrals``); returns the server's summary.

        The ``Idempotency-Key`` is derived from the referral id, so posting the
        same ``sealed`` again (after a timeout, a Ctrl-C, a lost answer) is
        answered with the first answer and stores nothing new. Retried here on
        a network error or 502/503/504.
        """
        result = await self._post_idempotent(
            "/v1/referrals", sealed.body, idempotency_key_for(sealed.referral_id)
        )
        result["expires_at"] = dict(sealed.expires_at)
        result["fids"] = dict(sealed.fids)
        return result

    async def send_referral(
        self,
        fields: Mapping[str, str],
        consent: Mapping[str, Mapping[str, str]],
        requests: Mapping[str, Mapping[str, Any]],
        *,
        expires_in_days: int = 90,
        release_ref: str | None = None,
    ) -> dict[str, Any]:
        """Encrypt and send a referral (Envelope v2); returns the server's summary.

        ``fields`` maps field names (``full_name``, ``narrative``, … or a custom
        ``^[a-z][a-z0-9_]{0,63}$``) to their values; ``consent`` is
        ``{field name: {recipient agency id: purpose}}`` (purposes:
        ``service_provision``, ``investigation``, ``prosecution``,
        ``safety_planning``); ``requests`` is ``{recipient agency id:
        {"services": [...], "urgency": "routine"|"urgent"|"emergency",
        "case_ref": None or "ABC-123"}}``, one per recipient. Every consent
        expires ``expires_in_days`` from now; more than the server's maximum
        (``GET /v1/limits``) is refused here, before anything is sent.

        Refused locally (``ValueError``): a recipient with no consented field,
        a consent to an agency with no request, an unknown field in a consent,
        an unknown service or urgency. Each recipient's current encryption key
        is verified first (``app.client.sdk``). It is :meth:`seal_referral` then
        :meth:`post_referral`: the ``Idempotency-Key`` is derived from the
        referral id the client chose, so a retry never creates a second
        referral; to survive a crash between the two, keep the
        :class:`SealedReferral` and post it again. The result adds
        ``expires_at`` (recipient -> effective expiry) and ``fids`` (field
        name -> its opaque id).

        Example::

            async with RefgateClient.from_key_file("shelter.json") as rc:
                summary = await rc.send_referral(
                    {"full_name": "Maria Example"},
                    {"full_name": {legal_id: "service_provision"}},
                    {legal_id: {"services": ["legal"], "urgency": "urgent"}},
                )
                print(summary["referral_id"])
        """
        sealed = await self.seal_referral(
            fields, consent, requests, expires_in_days=expires_in_days, release_ref=release_ref
        )
        return await self.post_referral(sealed)

    async def inbox(
        self,
        status: str | None = None,
        urgency: str | None = None,
        since: datetime | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[InboxItem]:
        """One page of received referrals, newest first.

        Each item is an :class:`InboxItem`: ``referral_id``,
        ``sender_agency``, ``created_at``, ``version``, ``statuses`` (this
        agency's own), ``request`` (a :class:`ReferralRequest`: what this
        agency is asked to do: ``services``, ``urgency``, ``case_ref``) and
        ``withdrawn``. No content: open an item with :meth:`open_referral`.
        Poll with ``since`` (the newest ``created_at`` seen) or subscribe to
        the ``referral.received`` webhook.

        Example::

            page = await rc.inbox(status="requested")
            for item in page.items:
                print(item.referral_id, item.request.urgency, item.request.services)
                opened = await rc.open_referral(item.referral_id)
        """
        return await self._referral_page("received", status, urgency, since, limit, cursor)

    async def sent(
        self,
        status: str | None = None,
        urgency: str | None = None,
        since: datetime | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[InboxItem]:
        """One page of sent referrals, newest first, with every recipient's status
        (:class:`InboxItem` whose ``request`` is None).

        Example::

            item = (await rc.sent(limit=1)).items[0]
            answered = {s.recipient: s.status for s in item.statuses if s.status != "requested"}
        """
        return await self._referral_page("sent", status, urgency, since, limit, cursor)

    async def _referral_page(
        self,
        box: str,
        status: str | None,
        urgency: str | None,
        since: datetime | str | None,
        limit: int,
        cursor: str | None,
    ) -> Page[InboxItem]:
        params = {
            "box": box,
            "status": status,
            "urgency": urgency,
            "limit": limit,
            "cursor": cursor,
            "since": rfc3339(since) if isinstance(since, datetime) else since,
        }
        body = expect(await self._get_json("/v1/referrals", params), dict, "referral list")
        return Page(
            items=[
                InboxItem.from_json(i) for i in expect(body.get("items"), list, "referral list")
            ],
            next_cursor=body.get("next_cursor"),
        )

    async def _sender_sig_public(self, manifest: Mapping[str, Any]) -> bytes:
        sender = manifest.get("sender_agency")
        if not isinstance(sender, str):
            raise VerificationError("the referral's manifest names no sender")
        return (await self.agency_key(sender, "sig"))[1]

    async def _read_verified(self, referral_id: str) -> tuple[dict[str, Any], env.Opened]:
        document = await self._get_json(f"/v1/referrals/{referral_id}")
        if not isinstance(document, dict) or not isinstance(document.get("manifest"), dict):
            raise VerificationError("the server's answer is not a referral")
        if document["manifest"].get("referral_id") != referral_id:
            raise VerificationError("the server answered with another referral")
        sig_public = await self._sender_sig_public(document["manifest"])
        try:
            opened = env.open_envelope(
                document,
                agency_id=self.agency_id,
                enc_private=self.key.enc_private,
                sender_sig_public=sig_public,
            )
        except env.EnvelopeError as exc:
            raise VerificationError(f"referral {referral_id} does not verify: {exc}") from exc
        return document, opened

    async def _verified_statuses(self, referral_id: str, statuses: object) -> list[dict[str, Any]]:
        """Statuses whose recipient signature verifies; a rewritten one raises."""
        out: list[dict[str, Any]] = []
        for item in expect(statuses or [], list, "statuses"):
            s = expect(item, dict, "status")
            recipient = s.get("recipient")
            if s.get("signature") is None:
                # set by the server: requested at creation, cancelled by a withdraw
                if s.get("status") not in ("requested", "cancelled") or s.get("note") is not None:
                    raise VerificationError(
                        f"the status of {recipient} is not signed by it: an operator may "
                        "have rewritten it"
                    )
                out.append({**s, "verified": False})
                continue
            _, sig_public = await self.agency_key(str(recipient), "sig")
            try:
                env.verify_status(s, referral_id=referral_id, sig_public=sig_public)
            except env.EnvelopeError as exc:
                raise VerificationError(
                    f"the status of {recipient} on referral {referral_id}: {exc.message}; "
                    "it was not written by that agency"
                ) from exc
            out.append({**s, "verified": True})
        return out

    async def open_referral(self, referral_id: str) -> OpenedReferral:
        """Fetch, verify and decrypt a referral (see ``app.client.sdk``).

        Every status signed by a recipient is verified with that agency's
        current signing key before it is returned (``verified`` is True on
        it); a status or note rewritten on the server raises
        :class:`VerificationError`.
        """
        document, opened = await self._read_verified(referral_id)
        statuses = await self._verified_statuses(referral_id, document.get("statuses"))
        notes: dict[str, str] = {}
        unreadable: list[str] = []
        if opened.manifest.sender_agency == self.agency_id:
            for s in statuses:
                if isinstance(s.get("note"), str):
                    try:
                        notes[s["recipient"]] = env.open_note(s["note"], self.key.enc_private)
                    except env.EnvelopeError:
                        unreadable.append(str(s.get("recipient")))
        return OpenedReferral(
            manifest=opened.manifest.model_dump(),
            fields=opened.fields,
            fids=opened.fids,
            grants=[g.model_dump() for g in opened.grants],
            requests={
                r: ReferralRequest.from_json(v.model_dump()) for r, v in opened.requests.items()
            },
            statuses=tuple(Status.from_json(s) for s in statuses),
            notes=notes,
            unreadable_notes=tuple(unreadable),
        )

    async def update_status(
        self, referral_id: str, status: str, reason: str | None = None, note: str | None = None
    ) -> Status:
        """Post this recipient's signed status; ``note`` is sealed to the sender.

        The referral is opened first (its manifest signature verified), so the
        note is sealed to the current key of the agency that signed it.
        ``status`` is received, accepted, declined or completed (forward
        only); ``reason`` a code such as ``no_capacity`` (``GET /v1/limits``
        lists them). Returns the :class:`Status` as stored.

        Example::

            await rc.update_status(rid, "declined", reason="no_capacity",
                                   note="Full until Monday; try Harbor House")
        """
        sealed: str | None = None
        if note is not None:
            _, opened = await self._read_verified(referral_id)
            _, sender_enc = await self.agency_key(opened.manifest.sender_agency, "enc")
            sealed = env.seal_note(note, sender_enc)
        body = env.sign_status(
            referral_id=referral_id,
            recipient=self.agency_id,
            status=status,
            reason=reason,
            note=sealed,
            signed_at=rfc3339(datetime.now(UTC)),
            sig_seed=self.key.sig_seed,
        )
        return Status.from_json(await self._post_json(f"/v1/referrals/{referral_id}/status", body))

    def read_note(self, note: str) -> str:
        """Decrypt a status note addressed to this agency (raises VerificationError)."""
        try:
            return env.open_note(note, self.key.enc_private)
        except env.EnvelopeError as exc:
            raise VerificationError(f"the note does not open: {exc}") from exc

    async def grant(
        self,
        referral_id: str,
        consent: Mapping[str, Mapping[str, str]],
        requests: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        expires_in_days: int = 90,
        release_ref: str | None = None,
    ) -> dict[str, Any]:
        """Widen consent on a referral this agency sent: ``{field name: {recipient: purpose}}``.

        ``requests`` is needed for recipients new to the referral (as in
        :meth:`send_referral`). The referral as stored is verified first
        (signature, digests, hashes, commitments) and each recipient's key as
        in :meth:`send_referral`. If another amendment is stored first (409
        ``version-conflict``), the referral is read again and the amendment
        rebuilt on the new version, up to three times.
        """
        await self._check_own_keys()
        _, expires_at = await self._expiry(expires_in_days)
        grants = await self._grants(consent, expires_at, release_ref)
        for attempt in range(3):
            document, _ = await self._read_verified(referral_id)
            body = env.amend(
                document,
                sender_agency=self.agency_id,
                sender_sig_seed=self.key.sig_seed,
                sender_enc_private=self.key.enc_private,
                grants=grants,
                requests=[_envelope_request(r, spec) for r, spec in (requests or {}).items()],
            )
            try:
                result: dict[str, Any] = await self._post_json(
                    f"/v1/referrals/{referral_id}/grants", body
                )
            except RefgateError as exc:
                if (
                    exc.status == 409
                    and exc.type
                    and exc.type.endswith("version-conflict")
                    and attempt < 2
                ):
                    continue
                raise
            result["expires_at"] = expires_at
            return result
        raise AssertionError("unreachable")

    async def revoke(self, referral_id: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        """Revoke consent for (field name, recipient) pairs: the server deletes those keys.

        Field names are mapped to their ids by opening the referral as its sender.
        """
        _, opened = await self._read_verified(referral_id)
        unknown = sorted({f for f, _ in pairs} - set(opened.fids))
        if unknown:
            raise ValueError(f"the referral has no field {unknown[0]!r}")
        result: dict[str, Any] = await self._post_json(
            f"/v1/referrals/{referral_id}/revocations",
            {"revocations": [{"fid": opened.fids[f], "recipient": r} for f, r in pairs]},
        )
        return result

    async def withdraw(self, referral_id: str) -> list[Status]:
        """Withdraw a referral this agency sent: recipients' keys deleted, statuses cancelled
        (each recipient's :class:`Status` after the withdrawal)."""
        result = expect(
            await self._post_json(f"/v1/referrals/{referral_id}/withdraw", None), list, "withdrawal"
        )
        return [Status.from_json(s) for s in result]
