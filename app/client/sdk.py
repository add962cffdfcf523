"""The refgate Python SDK: ``RefgateClient`` (async, httpx).

What the SDK guarantees, trusting only the key file and the audit log's
verifier key (never the server):

* **Sending** encrypts on the client (``app.crypto.envelope.seal_envelope``,
  Envelope v2: field names only inside the ciphertext, one salted disclosure
  per field, grant and request, the manifest signing only their digests)
  to each recipient's *current* X25519 key, and only after checking that the
  key's kid is the hash of the key served and that the key's registration is
  in the audit log (key transparency, below). A server that swaps a key in the
  directory is caught before anything is encrypted to it.
* **Opening** (``open_referral``) verifies the sender's manifest signature with
  the sender's signing key (itself checked against the log), that every
  disclosure served hashes to a digest of the manifest, every ciphertext hash
  and every key commitment, and every recipient's status signature, before
  returning any plaintext; any failure raises :class:`VerificationError` and
  nothing is returned.
* **Widening consent** (``grant``) re-verifies the referral as stored (the
  sender's signature, hashes, commitments) before wrapping a field key for
  anyone, and applies the same key checks as sending.

Key transparency and pinning live in ``app.client.transparency``: before
anything is encrypted to an agency or its signature trusted, the latest
checkpoint is verified with the pinned log key and against the pinned
checkpoint (which then advances), and the agency's leaf in the signed key
directory is proven; only the kid the leaf states is used, and a suspended
agency or a kid the directory serves against the log is refused. Sending also
checks that the log states this key file's own keys. Pins are kept in
``pins`` (a ``Pins`` or the path of a pin store; ``from_key_file`` puts it
beside the key file) or in memory. ``verify_keys=False`` turns key
transparency off: it exists for tests that run no sequencer, never for
production.

Authentication is OAuth 2.0 client credentials with ``private_key_jwt``
(RFC 7523) through Authlib: :class:`PrivateKeyJWT` is an ``httpx.Auth`` whose
tokens come from Authlib's ``AsyncOAuth2Client``
(``authlib.integrations.httpx_client``) with a ``private_key_jwt`` client
authentication method that signs a fresh single-use Ed25519 assertion
(``alg`` Ed25519, ``aud`` = ``{base_url}/oauth/token``) valid for
``assertion_lifetime`` seconds, 60 by default. **The server refuses an
assertion whose ``exp`` is more than 300 seconds ahead**; Authlib's stock
``PrivateKeyJWT`` signs for an hour, so set ``expires_in`` (see
``app.client.oauth``). The access token is cached, refreshed shortly before
it expires and, once, when the server answers 401 ``invalid_token``.

Results are typed (``app.client.results``: frozen dataclasses whose
docstrings show an example; ``to_json()`` gives the server's JSON back).
Lists: ``inbox`` and ``sent`` return one :class:`Page` of :class:`InboxItem`
(``audit_events`` one of event dicts) with ``items`` and ``next_cursor``;
pass ``cursor=page.next_cursor`` for the next one. ``agencies`` follows the
cursors itself (the directory is small) and returns :class:`Agency` entries. The
service directory's methods (``find_services``, ``set_capacity``,
``resolve_agency`` …) are in ``app.client.directory``.

Errors::

    RefgateSDKError
    ├── RefgateError          the server refused (problem+json): .status, .problem
    └── VerificationError     something served does not verify (signature, hash,
                              commitment, note, checkpoint); its subclasses for
                              keys and pins are in ``app.client.errors``

Invalid arguments (an unknown field name, a consent for an unlisted
recipient) raise ``ValueError`` (``EnvelopeError`` is one); network failures
raise :class:`ServerUnreachable` (an ``httpx.TransportError`` too), whose
message names the URL.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx

from app import __version__
from app.client.directory import AgencyNotFound, AmbiguousAgency, DirectoryMethods
from app.client.errors import (
    AgencyKeyError,
    KeyTransparencyError,
    LogConsistencyError,
    PinMismatchError,
    RefgateSDKError,
    ServerUnreachable,
    VerificationError,
)
from app.client.keyfile import KeyFile
from app.client.oauth import DEFAULT_ASSERTION_LIFETIME, TokenRefused, token_client
from app.client.results import Agency, AgencyKey, InboxItem, Page, ReferralRequest, Status
from app.client.transparency import Pins, Transparency, pins_path
from app.crypto import envelope as env
from app.crypto import keys
from app.crypto.checkpoint import Checkpoint, CheckpointError, parse_verifier_key
from app.crypto.encoding import EncodingError, b64url_decode

__all__ = [
    "Agency",
    "AgencyKey",
    "AgencyKeyError",
    "AgencyNotFound",
    "AmbiguousAgency",
    "KeyTransparencyError",
    "LogConsistencyError",
    "PinMismatchError",
    "Pins",
    "OpenedReferral",
    "Page",
    "PrivateKeyJWT",
    "RefgateClient",
    "RefgateError",
    "RefgateSDKError",
    "SealedReferral",
    "ServerUnreachable",
    "VerificationError",
    "InboxItem",
    "ReferralRequest",
    "Status",
    "idempotency_key_for",
]

_RETRYABLE = frozenset({502, 503, 504})


class RefgateError(RefgateSDKError):
    """The server answered with an error; ``problem`` is its RFC 9457 body."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        self.status = status
        self.problem = dict(problem)
        super().__init__(f"{status} {self.title}: {self.detail}")

    @property
    def title(self) -> str:
        return str(self.problem.get("title") or "error")

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("error_description") or "")

    @property
    def type(self) -> str | None:
        value = self.problem.get("type")
        return value if isinstance(value, str) else None


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {"title": response.reason_phrase, "status": response.status_code,
            "detail": response.text[:300]}


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise RefgateError(response.status_code, _problem_of(response))


def _retry_after(response: httpx.Response, cap: float) -> float:
    try:
        value = float(response.headers.get("Retry-After", "1"))
    except ValueError:
        value = 1.0
    return max(0.05, min(value, cap))


def _request(recipient: str, spec: Mapping[str, Any]) -> env.Request:
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


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expect(value: object, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise VerificationError(f"the server's answer is malformed: {what}")
    return value


# ---------------------------------------------------------------- authentication


class PrivateKeyJWT(httpx.Auth):
    """``httpx.Auth`` for OAuth 2.0 client credentials with ``private_key_jwt`` (RFC 7523).

    Tokens come from Authlib's ``AsyncOAuth2Client`` (``app.client.oauth``),
    which signs a fresh single-use Ed25519 assertion valid for
    ``assertion_lifetime`` seconds (the server accepts at most 300) for each
    token request. The token is fetched on first use, refreshed
    ``refresh_margin`` seconds (at most half its lifetime) before it expires,
    and fetched again once if a request comes back 401 ``invalid_token``.
    Concurrent requests share one token fetch. Async only.
    """

    requires_response_body = False

    def __init__(
        self, client_id: str, auth_seed: bytes, token_url: str, *, refresh_margin: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None, timeout: float = 30.0,
        assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
    ) -> None:
        self.client_id = client_id
        self.token_url = token_url
        self._margin = refresh_margin
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self._oauth = token_client(client_id, auth_seed, token_url, transport=transport,
                                   timeout=timeout, assertion_lifetime=assertion_lifetime)

    def _fresh(self) -> bool:
        return self._token is not None and time.monotonic() < self._refresh_at

    async def _fetch(self) -> str:
        base = self.token_url.rsplit("/oauth/token", 1)[0]
        try:
            token = await self._oauth.fetch_token(self.token_url, grant_type="client_credentials")
        except TokenRefused as exc:
            raise RefgateError(exc.status, exc.problem) from None
        except httpx.TransportError as exc:
            raise ServerUnreachable(base, exc) from exc
        access = token.get("access_token")
        lifetime = token.get("expires_in")
        if not isinstance(access, str) or not isinstance(lifetime, int) or lifetime <= 0:
            raise RefgateError(200, {
                "title": "Bad token response",
                "detail": "the token endpoint answered without access_token/expires_in",
            })
        self._token = access
        self._refresh_at = time.monotonic() + lifetime - min(self._margin, lifetime / 2)
        return access

    async def token(self) -> str:
        """The current access token, fetched if it is missing or expiring."""
        async with self._lock:
            if not self._fresh():
                await self._fetch()
            return str(self._token)

    async def aclose(self) -> None:
        await self._oauth.aclose()

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("PrivateKeyJWT works with httpx.AsyncClient only")

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        used = await self.token()
        request.headers["Authorization"] = f"Bearer {used}"
        response = yield request
        challenge = response.headers.get("WWW-Authenticate", "")
        if response.status_code == 401 and "invalid_token" in challenge:
            async with self._lock:
                if self._token == used:
                    self._token = None
                    await self._fetch()
                request.headers["Authorization"] = f"Bearer {self._token}"
            yield request


# ---------------------------------------------------------------- results


class _Client(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose network failures name the server (:class:`ServerUnreachable`)."""

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            return await super().send(request, **kwargs)
        except ServerUnreachable:
            raise
        except httpx.TransportError as exc:
            raise ServerUnreachable(str(self.base_url).rstrip("/"), exc) from exc


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
        return {"referral_id": self.referral_id, "body": self.body, "fids": self.fids,
                "expires_at": self.expires_at}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SealedReferral:
        return cls(referral_id=str(data["referral_id"]), body=dict(data["body"]),
                   fids=dict(data["fids"]), expires_at=dict(data["expires_at"]))


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


# ---------------------------------------------------------------- the client


class RefgateClient(DirectoryMethods):
    """An agency's client of one refgate gateway. Use as ``async with RefgateClient(...)``.

    ``key`` needs ``client_id`` and ``agency_id``; ``base_url`` defaults to the
    key file's ``server``. ``transport`` lets tests run against an in-process
    app (``httpx.ASGITransport(app=app)``). See the module docstring for
    ``log_key`` and ``verify_keys``.
    """

    def __init__(
        self,
        key: KeyFile,
        *,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        log_key: str | None = None,
        pins: Pins | Path | None = None,
        announce: Callable[[str], None] | None = None,
        verify_keys: bool = True,
        timeout: float = 30.0,
        key_proof_timeout: float = 15.0,
        assertion_lifetime: int = DEFAULT_ASSERTION_LIFETIME,
    ) -> None:
        url = (base_url or key.server or "").rstrip("/")
        if not url:
            raise ValueError(
                "no server URL: pass base_url=... (the CLI flag is --server URL) or record it "
                "in the key file (refgate configure --server URL)"
            )
        if not key.client_id or not key.agency_id:
            raise ValueError(
                "the key file has no client_id/agency_id yet: run refgate configure"
            )
        if log_key is not None:
            try:
                parse_verifier_key(log_key.strip())
            except CheckpointError as exc:
                raise ValueError(f"log_key is not a note verifier key: {exc}") from None
        self.key = key
        self.base_url = url
        self.agency_id: str = key.agency_id
        self.client_id: str = key.client_id
        self.verify_keys = verify_keys
        self._auth = PrivateKeyJWT(key.client_id, key.auth_seed, f"{url}/oauth/token",
                                   transport=transport, timeout=timeout,
                                   assertion_lifetime=assertion_lifetime)
        self._http = _Client(
            base_url=url,
            transport=transport,
            auth=self._auth,
            timeout=timeout,
            headers={"User-Agent": f"refgate-sdk/{__version__}", "Accept": "application/json"},
        )
        if not isinstance(pins, Pins):
            pins = Pins.load(pins)
        self.transparency = Transparency(
            self._raw_get, _raise_for, pins=pins, log_key=log_key, announce=announce,
            key_proof_timeout=key_proof_timeout,
        )
        self._limits: dict[str, Any] | None = None

    @classmethod
    def from_key_file(
        cls, path: Path, *, passphrase: bytes | None = None, **kwargs: Any
    ) -> RefgateClient:
        """Load a key file and build a client whose pins live beside it
        (``<key file>.pins.json``). Blocking: a sealed file runs Argon2id."""
        kwargs.setdefault("pins", pins_path(path))
        return cls(KeyFile.load(path, passphrase), **kwargs)

    async def __aenter__(self) -> RefgateClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._auth.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The authenticated ``httpx.AsyncClient`` (``base_url`` set, tokens refreshed)."""
        return self._http

    # ------------------------------------------------------------ plumbing

    async def _request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        response = await self._http.request(method, path, json=json, params=clean,
                                            headers=headers)
        _raise_for(response)
        return response

    async def _raw_get(self, path: str, params: Mapping[str, Any] | None) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return await self._http.get(path, params=clean)

    async def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return (await self._request("GET", path, params=params)).json()

    async def _post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return (await self._request("POST", path, json=body, **kwargs)).json()

    async def access_token(self) -> str:
        """A valid access token (cached until shortly before it expires)."""
        return await self._auth.token()

    # ------------------------------------------------------------ directory

    async def agencies(self) -> list[Agency]:
        """The whole task-force directory (follows the cursors).

        Example::

            for a in await rc.agencies():   # Agency
                print(a.name, a.id, a.status, a.current_kid("enc"))
        """
        out: list[Agency] = []
        cursor: str | None = None
        while True:
            page = _expect(await self._get_json("/v1/agencies", {"limit": 500, "cursor": cursor}),
                           dict, "agency list")
            out.extend(Agency.from_json(item) for item in _expect(page.get("items"), list,
                                                                  "agency list"))
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    async def agency(self, agency_id: str) -> Agency:
        """One directory entry (unverified: keys are checked when they are used)."""
        return Agency.from_json(await self._get_json(f"/v1/agencies/{agency_id}"))

    async def agency_key(
        self, agency_id: str, use: Literal["enc", "sig"],
        *, entry: Agency | Mapping[str, Any] | None = None,
    ) -> tuple[str, bytes]:
        """(kid, raw public key) of an agency's current ``use`` key, as the signed key
        directory states it (``app.client.transparency``): raises
        :class:`AgencyKeyError` for a suspended agency or a kid the directory serves
        against the log, :class:`KeyTransparencyError` for a proof that does not
        verify. ``entry`` is the directory entry if the caller already fetched it.
        With ``verify_keys=False`` only the kid is checked against the key served."""
        if isinstance(entry, Agency):
            entry = entry.raw
        first: list[Mapping[str, Any]] = [entry] if entry is not None else []

        async def fetch() -> Mapping[str, Any]:
            return first.pop() if first else (await self.agency(agency_id)).raw

        if self.verify_keys:
            return await self.transparency.agency_key(agency_id, use, fetch)
        served = [k for k in (await fetch()).get("keys", [])
                  if isinstance(k, dict) and k.get("use") == use and k.get("status") == "current"]
        if len(served) != 1:
            raise KeyTransparencyError(f"agency {agency_id} has no single current {use} key")
        try:
            public = b64url_decode(served[0].get("public_key"), length=keys.KEY_SIZE)  # type: ignore[arg-type]
        except EncodingError:
            raise KeyTransparencyError(f"agency {agency_id}'s {use} key is malformed") from None
        if served[0].get("kid") != keys.kid(public):
            raise KeyTransparencyError(
                f"agency {agency_id}'s {use} key does not hash to its kid {served[0].get('kid')}"
            )
        return keys.kid(public), public

    async def _check_own_keys(self) -> None:
        """Refuse to sign or be sealed to keys the log does not state as this agency's."""
        if self.verify_keys:
            own = self.key.agency_keys
            await self.transparency.own_keys(self.agency_id, own.enc_kid, own.sig_kid)

    async def trusted_log_key(self) -> str:
        """The pinned log verifier key (pinned on first use when none was configured)."""
        return await self.transparency.log_key()

    async def check_log(self) -> Checkpoint:
        """Verify the latest checkpoint against the pins and advance them (every CLI
        command runs this first)."""
        return await self.transparency.checkpoint(fresh=True)

    # ------------------------------------------------------------ referrals

    async def limits(self) -> dict[str, Any]:
        """The server's limits and vocabularies (``GET /v1/limits``), fetched once."""
        if self._limits is None:
            self._limits = _expect(await self._get_json("/v1/limits"), dict, "limits")
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
        self, consent: Mapping[str, Mapping[str, str]], expires_at: str, release_ref: str | None,
    ) -> list[env.Grant]:
        enc_keys = await self._recipient_keys(r for per in consent.values() for r in per)
        return [
            env.Grant(field=name, recipient=recipient, enc_public=enc_keys[recipient][1],
                      purpose=purpose, expires_at=expires_at, release_ref=release_ref)
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
        return now, _rfc3339(now + timedelta(days=expires_in_days))

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
            requests=[_request(r, spec) for r, spec in requests.items()],
            created_at=_rfc3339(now),
        )
        return SealedReferral(referral_id=referral_id, body=sealed.body, fids=sealed.fids,
                              expires_at={r: expires_at for r in requests})

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
        is verified first (module docstring). It is :meth:`seal_referral` then
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
        sealed = await self.seal_referral(fields, consent, requests,
                                          expires_in_days=expires_in_days,
                                          release_ref=release_ref)
        return await self.post_referral(sealed)

    async def _post_idempotent(
        self, path: str, body: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key}
        for attempt in range(3):
            try:
                response = await self._http.post(path, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == 2:
                    raise
            else:
                if response.status_code not in _RETRYABLE or attempt == 2:
                    _raise_for(response)
                    result: dict[str, Any] = response.json()
                    return result
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    async def inbox(
        self, status: str | None = None, urgency: str | None = None,
        since: datetime | str | None = None, limit: int = 50, cursor: str | None = None,
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
        self, status: str | None = None, urgency: str | None = None,
        since: datetime | str | None = None, limit: int = 50, cursor: str | None = None,
    ) -> Page[InboxItem]:
        """One page of sent referrals, newest first, with every recipient's status
        (:class:`InboxItem` whose ``request`` is None).

        Example::

            item = (await rc.sent(limit=1)).items[0]
            answered = {s.recipient: s.status for s in item.statuses if s.status != "requested"}
        """
        return await self._referral_page("sent", status, urgency, since, limit, cursor)

    async def _referral_page(
        self, box: str, status: str | None, urgency: str | None, since: datetime | str | None,
        limit: int, cursor: str | None,
    ) -> Page[InboxItem]:
        params = {"box": box, "status": status, "urgency": urgency, "limit": limit,
                  "cursor": cursor,
                  "since": _rfc3339(since) if isinstance(since, datetime) else since}
        body = _expect(await self._get_json("/v1/referrals", params), dict, "referral list")
        return Page(items=[InboxItem.from_json(i) for i in _expect(body.get("items"), list,
                                                                   "referral list")],
                    next_cursor=body.get("next_cursor"))

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
                document, agency_id=self.agency_id, enc_private=self.key.enc_private,
                sender_sig_public=sig_public,
            )
        except env.EnvelopeError as exc:
            raise VerificationError(f"referral {referral_id} does not verify: {exc}") from exc
        return document, opened

    async def _verified_statuses(
        self, referral_id: str, statuses: object
    ) -> list[dict[str, Any]]:
        """Statuses whose recipient signature verifies; a rewritten one raises."""
        out: list[dict[str, Any]] = []
        for item in _expect(statuses or [], list, "statuses"):
            s = _expect(item, dict, "status")
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
        """Fetch, verify and decrypt a referral (see the module docstring).

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
            manifest=opened.manifest.model_dump(), fields=opened.fields, fids=opened.fids,
            grants=[g.model_dump() for g in opened.grants],
            requests={r: ReferralRequest.from_json(v.model_dump())
                      for r, v in opened.requests.items()},
            statuses=tuple(Status.from_json(s) for s in statuses), notes=notes,
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
            referral_id=referral_id, recipient=self.agency_id, status=status, reason=reason,
            note=sealed, signed_at=_rfc3339(datetime.now(UTC)), sig_seed=self.key.sig_seed,
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
                document, sender_agency=self.agency_id, sender_sig_seed=self.key.sig_seed,
                sender_enc_private=self.key.enc_private, grants=grants,
                requests=[_request(r, spec) for r, spec in (requests or {}).items()],
            )
            try:
                result: dict[str, Any] = await self._post_json(
                    f"/v1/referrals/{referral_id}/grants", body
                )
            except RefgateError as exc:
                if exc.status == 409 and exc.type and exc.type.endswith("version-conflict") \
                        and attempt < 2:
                    continue
                raise
            result["expires_at"] = expires_at
            return result
        raise AssertionError("unreachable")

    async def revoke(
        self, referral_id: str, pairs: list[tuple[str, str]]
    ) -> dict[str, Any]:
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
        result = _expect(await self._post_json(f"/v1/referrals/{referral_id}/withdraw", None),
                         list, "withdrawal")
        return [Status.from_json(s) for s in result]

    # ------------------------------------------------------------ audit

    async def audit_events(
        self,
        *,
        actor: str | None = None,
        agency: str | None = None,
        resource_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[dict[str, Any]]:
        """One page of audit events, newest first (``{seq, event, leaf_hash}`` items)."""
        params = {"actor": actor, "agency": agency, "resource_id": resource_id,
                  "action": action, "outcome": outcome, "limit": limit, "cursor": cursor,
                  "since": _rfc3339(since) if isinstance(since, datetime) else since,
                  "until": _rfc3339(until) if isinstance(until, datetime) else until}
        body = await self._get_json("/v1/audit/events", params)
        return Page(items=body["items"], next_cursor=body.get("next_cursor"))

    async def audit_event(self, seq: int) -> dict[str, Any]:
        """One sequenced event ``{seq, event, leaf_hash}``."""
        result: dict[str, Any] = await self._get_json(f"/v1/audit/events/{seq}")
        return result

    async def checkpoint(self) -> str:
        """The latest signed checkpoint note, as served (verify it with ``open_checkpoint``)."""
        return (await self._request("GET", "/v1/audit/checkpoint")).text

    async def verified_checkpoint(self) -> Checkpoint:
        """The latest checkpoint, verified with the pinned log key and against the pin."""
        return await self.transparency.checkpoint(fresh=True)

    async def log_key(self) -> str:
        """The log verifier key the server publishes (not a trust anchor by itself)."""
        return (await self._request("GET", "/v1/audit/log-key")).text.strip()

    async def inclusion_proof(self, seq: int, tree_size: int | None = None) -> dict[str, Any]:
        """``{index, tree_size, hashes}`` (standard base64) for the event at ``seq``."""
        result: dict[str, Any] = await self._get_json(
            "/v1/audit/proof/inclusion", {"seq": seq, "tree_size": tree_size}
        )
        return result

    async def consistency_proof(self, first: int, second: int | None = None) -> dict[str, Any]:
        """``{first, second, hashes}`` (standard base64) between two tree sizes."""
        result: dict[str, Any] = await self._get_json(
            "/v1/audit/proof/consistency", {"first": first, "second": second}
        )
        return result

    async def export(
        self, format: Literal["ndjson", "csv"] = "ndjson", **filters: str | None
    ) -> AsyncIterator[bytes]:
        """Stream matching audit events in log order as NDJSON or CSV chunks."""
        params = {k: v for k, v in {"format": format, **filters}.items() if v is not None}
        async with self._http.stream("GET", "/v1/audit/export", params=params) as response:
            if response.status_code >= 400:
                await response.aread()
                _raise_for(response)
            async for chunk in response.aiter_bytes():
                yield chunk
