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

Where it lives: this module is the facade, :class:`RefgateClient` composed of
one mixin per responsibility, each a module of ``app.client``: ``http``
(requests, problem+json, the idempotent POST's retries), ``auth`` (tokens),
``agencies`` (the directory and verified agency keys), ``referrals`` (send,
list, open, statuses, consent), ``audit`` (events, checkpoints, proofs, pins)
and ``directory`` (the service directory). Every name below is importable from
here (``from app.client.sdk import RefgateClient, RefgateError, ...``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from app import __version__
from app.client.audit import AuditMethods
from app.client.auth import PrivateKeyJWT
from app.client.directory import AgencyNotFound, AmbiguousAgency, DirectoryMethods
from app.client.errors import (
    AgencyKeyError,
    KeyTransparencyError,
    LogConsistencyError,
    PinMismatchError,
    RefgateError,
    RefgateSDKError,
    ServerUnreachable,
    VerificationError,
)
from app.client.http import GatewayClient, raise_for
from app.client.keyfile import KeyFile
from app.client.oauth import DEFAULT_ASSERTION_LIFETIME
from app.client.referrals import (
    OpenedReferral,
    ReferralMethods,
    SealedReferral,
    idempotency_key_for,
)
from app.client.results import Agency, AgencyKey, InboxItem, Page, ReferralRequest, Status
from app.client.transparency import Pins, Transparency, pins_path
from app.crypto.checkpoint import CheckpointError, parse_verifier_key

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


class RefgateClient(ReferralMethods, AuditMethods, DirectoryMethods):
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
            raise ValueError("the key file has no client_id/agency_id yet: run refgate configure")
        if log_key is not None:
            try:
                parse_verifier_key(log_key.strip())
            except CheckpointError as exc:
                raise ValueError(f"log_key is not a note verifier key: {exc}") from None
        self.key = key
        self.base_url = url
        self.agency_id = key.agency_id
        self.client_id = key.client_id
        self.verify_keys = verify_keys
        self._auth = PrivateKeyJWT(
            key.client_id,
            key.auth_seed,
            f"{url}/oauth/token",
            transport=transport,
            timeout=timeout,
            assertion_lifetime=assertion_lifetime,
        )
        self._http = GatewayClient(
            base_url=url,
            transport=transport,
            auth=self._auth,
            timeout=timeout,
            headers={"User-Agent": f"refgate-sdk/{__version__}", "Accept": "application/json"},
        )
        if not isinstance(pins, Pins):
            pins = Pins.load(pins)
        self.transparency = Transparency(
            self._raw_get,
            raise_for,
            pins=pins,
            log_key=log_key,
            announce=announce,
            key_proof_timeout=key_proof_timeout,
        )

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
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
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

    async def access_token(self) -> str:
        """A valid access token (cached until shortly before it expires)."""
        return await self._auth.token()
