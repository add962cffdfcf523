"""Key transparency and log pinning on the client: trust the log key, never the server.

What a client holds (the **pin store**, ``<key file>.pins.json`` beside the key
file, mode 0600)::

    {"version": 1, "log_key": "<note verifier key>",
     "checkpoint": {"size": N, "root": "<base64>"},
     "witnesses": ["<verifier key>", ...], "quorum": k}

``witnesses``/``quorum``: the task force's witness keys and how many of them
must have cosigned every checkpoint this client accepts (C2SP tlog-cosignature;
``app.crypto.cosignature``). With a quorum, the client asks the server for the
newest checkpoint with that many cosignatures and refuses one without them, so
a log that shows this client a tree the witnesses have not seen (a split view)
is refused.

What :class:`Transparency` guarantees before the SDK encrypts to an agency or
trusts its signature:

1. **The log key** is the pinned one. It is pinned on purpose (``refgate
   configure --log-key``, ``log_key=``) or, when none is configured, on first
   use (the key is announced with the advice to compare it with the one the
   task force published). A server signing with another key gets
   :class:`PinMismatchError` naming both keys.
2. **The checkpoint** verifies with that key, commits to a key directory, and
   extends the pinned checkpoint: a smaller size is a rollback, an equal size
   with another root a fork, a larger one needs a consistency proof
   (:class:`LogConsistencyError`). Then the pin advances to it.
3. **The agency's directory leaf** (``GET /v1/agencies/{id}/keys/proof``) and
   its neighbours' are included in the signed directory, which proves there is
   exactly one leaf for the agency (``app.crypto.keydir.verify_entry``). A
   suspended agency, or a directory entry whose current key is not the kid the
   leaf states, is refused (:class:`AgencyKeyError`) once ``key_proof_timeout``
   has passed without a newer checkpoint resolving it (a rotation is visible in
   the directory a little before a checkpoint covers it). Only the kid the leaf
   states is ever used.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from app.client.errors import (
    AgencyKeyError,
    KeyTransparencyError,
    LogConsistencyError,
    PinMismatchError,
    VerificationError,
    WitnessQuorumError,
)
from app.crypto import keydir, keys, merkle
from app.crypto.checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_verifier_key
from app.crypto.cosignature import CosignatureError, verify_cosignatures
from app.crypto.encoding import EncodingError, b64_decode, b64_encode, b64url_decode

__all__ = ["Pins", "Transparency", "pins_path"]

PINS_VERSION = 1
PINS_SUFFIX = ".pins.json"
_RETRY_SLEEP = 0.5


def pins_path(key_file: Path) -> Path:
    """Where the pins of a key file live: beside it, ``<key file>.pins.json``."""
    return key_file.with_name(key_file.name + PINS_SUFFIX)


@dataclass
class Pins:
    """The pinned log key, newest verified checkpoint, witness keys and quorum."""

    log_key: str | None = None
    size: int | None = None
    root: bytes | None = None
    witnesses: list[str] = field(default_factory=list)
    quorum: int = 0
    path: Path | None = None

    @classmethod
    def load(cls, path: Path | None) -> Pins:
        """Read the pin store at ``path`` (empty pins when it does not exist yet)."""
        if path is None or not path.exists():
            return cls(path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            key = data.get("log_key")
            cp = data.get("checkpoint")
            size = None if cp is None else int(cp["size"])
            root = None if cp is None else b64_decode(cp["root"], length=merkle.HASH_SIZE)
            witnesses = [str(w) for w in data.get("witnesses", [])]
            quorum = int(data.get("quorum", 0))
            if key is not None:
                parse_verifier_key(key)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VerificationError(
                f"the pin store {path} is unreadable ({exc}); if you did not edit it, someone "
                "else did. Re-pin on purpose with `refgate configure --log-key KEY`."
            ) from None
        return cls(log_key=key, size=size, root=root, witnesses=witnesses, quorum=quorum,
                   path=path)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": PINS_VERSION,
            "log_key": self.log_key,
            "checkpoint": None if self.size is None or self.root is None
            else {"size": self.size, "root": b64_encode(self.root)},
            "witnesses": self.witnesses,
            "quorum": self.quorum,
        }

    def save(self) -> None:
        """Write atomically with mode 0600 (a crash leaves the old pins or the new)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".",
                                   suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(self.as_json(), indent=2) + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def repin(self, log_key: str, witnesses: list[str] | None, quorum: int | None) -> None:
        """Pin ``log_key`` on purpose; a new key forgets the pinned checkpoint."""
        parse_verifier_key(log_key)
        if log_key != self.log_key:
            self.size = self.root = None
        self.log_key = log_key
        if witnesses is not None:
            for w in witnesses:
                parse_verifier_key(w)
            self.witnesses = list(witnesses)
        if quorum is not None:
            self.quorum = quorum
        if self.quorum > len(self.witnesses):
            raise ValueError(
                f"a quorum of {self.quorum} needs at least as many witness keys "
                f"({len(self.witnesses)} given)"
            )
        self.save()

    def where(self) -> str:
        return str(self.path) if self.path is not None else "this client's memory"


def _decode_hash(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError("a proof hash must be a string")
    return b64_decode(value, length=merkle.HASH_SIZE)


Get = Callable[[str, Mapping[str, Any] | None], Awaitable[httpx.Response]]


class Transparency:
    """Checkpoint pinning and directory proofs for one client (see the module docstring).

    ``get(path, params)`` performs an authenticated GET and returns the raw
    response; ``raise_for(response)`` raises the SDK's error for a non-2xx one.
    ``announce(key)`` is called once when a log key is trusted on first use.
    """

    def __init__(
        self,
        get: Get,
        raise_for: Callable[[httpx.Response], None],
        *,
        pins: Pins,
        log_key: str | None = None,
        announce: Callable[[str], None] | None = None,
        key_proof_timeout: float = 15.0,
        refresh: float = 5.0,
    ) -> None:
        self._get = get
        self._raise_for = raise_for
        self.pins = pins
        self._given = log_key.strip() if log_key else None
        self._announce = announce
        self._timeout = key_proof_timeout
        self._refresh = refresh
        self._lock = asyncio.Lock()
        self._current: Checkpoint | None = None
        self._fetched_at = 0.0
        # (agency, use) -> (checkpoint size, kid, public key) verified against that checkpoint
        self._keys: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self.trusted_on_first_use = False

    async def _get_ok(self, path: str, params: Mapping[str, Any] | None = None) -> httpx.Response:
        response = await self._get(path, params)
        self._raise_for(response)
        return response

    # ------------------------------------------------------------ log key

    async def log_key(self) -> str:
        """The pinned log key; pins the configured one, or the server's on first use."""
        pinned = self.pins.log_key
        if pinned is not None:
            if self._given is not None and self._given != pinned:
                raise PinMismatchError(pinned, self._given + " (given with --log-key or "
                                       "REFGATE_LOG_KEY)", self.pins.where())
            return pinned
        if self._given is not None:
            try:
                parse_verifier_key(self._given)
            except CheckpointError as exc:
                raise ValueError(f"the log key given is not a note verifier key: {exc}") from None
            key = self._given
        else:
            key = (await self._get_ok("/v1/audit/log-key")).text.strip()
            try:
                parse_verifier_key(key)
            except CheckpointError as exc:
                raise KeyTransparencyError(f"the server's log key is malformed: {exc}") from None
            self.trusted_on_first_use = True
            if self._announce is not None:
                self._announce(key)
        self.pins.log_key = key
        self.pins.save()
        return key

    # ------------------------------------------------------------ checkpoints

    async def checkpoint(self, *, fresh: bool = False) -> Checkpoint:
        """The server's latest checkpoint, verified and consistent with the pin, which
        advances to it. Re-fetched when older than ``refresh`` seconds or ``fresh``."""
        async with self._lock:
            if (
                self._current is not None
                and not fresh
                and time.monotonic() - self._fetched_at < self._refresh
            ):
                return self._current
            key = await self.log_key()
            note = await self._latest_note()
            self._check_quorum(note)
            try:
                cp = open_checkpoint(note, key)
            except CheckpointError as exc:
                offered = (await self._get("/v1/audit/log-key", None)).text.strip()
                if offered != key:
                    raise PinMismatchError(key, offered, self.pins.where()) from None
                raise VerificationError(
                    f"the server's checkpoint does not verify with the pinned log key: {exc}"
                ) from None
            if cp.directory is None:
                raise KeyTransparencyError(
                    f"the checkpoint of size {cp.size} commits to no key directory, so no "
                    "agency's keys can be verified against it"
                )
            await self._extends_pin(cp)
            self.pins.size, self.pins.root = cp.size, cp.root
            self.pins.save()
            self._current, self._fetched_at = cp, time.monotonic()
            return cp

    def _check_quorum(self, note: str) -> None:
        """Refuse a checkpoint without a quorum of the pinned witnesses' cosignatures."""
        if self.pins.quorum <= 0:
            return
        try:
            verify_cosignatures(note, self.pins.witnesses, self.pins.quorum)
        except CosignatureError as exc:
            raise WitnessQuorumError(
                f"{exc}. The server's checkpoint is not cosigned by enough of the witnesses "
                f"pinned in {self.pins.where()}: it may be showing this client a log the "
                "witnesses have not seen. Do not send; report it to the task-force "
                "administrator."
            ) from None

    async def _latest_note(self) -> str:
        """The served checkpoint note (with a quorum configured, the newest one with that
        many cosignatures); waits up to ``key_proof_timeout`` for the first one."""
        deadline = time.monotonic() + self._timeout
        params = {"cosigned": self.pins.quorum} if self.pins.quorum > 0 else None
        while True:
            response = await self._get("/v1/audit/checkpoint", params)
            if response.status_code in (404, 503) and params and time.monotonic() < deadline:
                await asyncio.sleep(_RETRY_SLEEP)  # not cosigned yet: witnesses lag a little
                continue
            if response.status_code != 503:
                self._raise_for(response)
                return response.text
            if time.monotonic() >= deadline:
                raise KeyTransparencyError(
                    "no key transparency proof is possible yet: the server has not signed a "
                    "checkpoint of its audit log, so no agency's key can be verified. Retry "
                    "in a minute."
                )
            await asyncio.sleep(_RETRY_SLEEP)

    async def _extends_pin(self, cp: Checkpoint) -> None:
        size, root = self.pins.size, self.pins.root
        if size is None or root is None:
            return
        where = self.pins.where()
        if cp.size < size:
            raise LogConsistencyError(
                f"the server's checkpoint (size {cp.size}) is older than the pinned one "
                f"(size {size})", where)
        if cp.size == size:
            if not keydir.same_root(cp.root, root):
                raise LogConsistencyError(
                    f"the server's checkpoint and the pinned one both have size {size} but "
                    "different roots", where)
            return
        proof = (await self._get_ok(
            "/v1/audit/proof/consistency", {"first": size, "second": cp.size}
        )).json()
        try:
            hashes = [_decode_hash(h) for h in proof["hashes"]]
        except (EncodingError, KeyError, TypeError) as exc:
            raise LogConsistencyError(f"malformed consistency proof ({exc})", where) from None
        if not merkle.verify_consistency(size, cp.size, hashes, root, cp.root):
            raise LogConsistencyError(
                f"the server's checkpoint (size {cp.size}) does not extend the pinned one "
                f"(size {size})", where)

    # ------------------------------------------------------------ directory

    async def directory_leaf(self, agency_id: str, *, fresh: bool = False) -> tuple[
        Checkpoint, keydir.DirectoryProof
    ]:
        """The agency's leaf in the directory of the latest verified checkpoint."""
        deadline = time.monotonic() + self._timeout
        while True:
            cp = await self.checkpoint(fresh=fresh)
            response = await self._get(
                f"/v1/agencies/{agency_id}/keys/proof", {"tree_size": cp.size}
            )
            if response.status_code in (409, 503):
                if time.monotonic() < deadline:
                    await asyncio.sleep(_RETRY_SLEEP)
                    fresh = True
                    continue
                raise KeyTransparencyError(
                    f"no key transparency proof for agency {agency_id} yet: its keys are not "
                    f"in a signed checkpoint (checkpoint of size {cp.size}). Retry in a minute."
                )
            self._raise_for(response)
            assert cp.directory is not None  # noqa: S101 (checked by checkpoint())
            body = response.json()
            if not isinstance(body, dict) or body.get("tree_size") != cp.size:
                raise KeyTransparencyError(
                    f"the directory proof for agency {agency_id} is not for the checkpoint of "
                    f"size {cp.size}"
                )
            try:
                leaf = keydir.verify_entry(
                    body, agency_id, *cp.directory, decode=_decode_hash
                )
            except keydir.DirectoryError as exc:
                raise KeyTransparencyError(
                    f"agency {agency_id}: {exc}; the server may be showing a key directory "
                    "that the audit log does not commit to"
                ) from None
            return cp, leaf

    async def agency_key(
        self,
        agency_id: str,
        use: Literal["enc", "sig"],
        fetch_entry: Callable[[], Awaitable[Mapping[str, Any]]],
    ) -> tuple[str, bytes]:
        """(kid, raw public key) of the agency's ``use`` key as the signed directory states it."""
        deadline = time.monotonic() + self._timeout
        fresh = False
        known = self._keys.get((agency_id, use))
        if known is not None and known[0] == (await self.checkpoint()).size:
            return known[1], known[2]
        while True:
            cp, leaf = await self.directory_leaf(agency_id, fresh=fresh)
            if leaf.status != "active":
                raise AgencyKeyError(agency_id, (
                    f"the audit log (checkpoint of size {cp.size}) states that agency "
                    f"{agency_id} is {leaf.status}: nothing may be encrypted to it and its "
                    "signatures are not trusted. Ask the task-force administrator."
                ))
            kid = leaf.enc_kid if use == "enc" else leaf.sig_kid
            entry = await fetch_entry()
            served = _key_of(entry, agency_id, use, kid)
            current = [k.get("kid") for k in entry.get("keys", [])
                       if isinstance(k, dict) and k.get("use") == use
                       and k.get("status") == "current"]
            if kid is not None and served is not None and current == [kid]:
                self._keys[(agency_id, use)] = (cp.size, kid, served)
                return kid, served
            if time.monotonic() >= deadline:
                raise AgencyKeyError(agency_id, (
                    f"the directory serves {', '.join(map(str, current)) or 'no key'} as agency "
                    f"{agency_id}'s current {use} key, but the audit log (checkpoint of size "
                    f"{cp.size}, directory event {leaf.event}) states "
                    f"{kid or 'no ' + use + ' key'}. The server may be rolling back or swapping "
                    "a key: nothing was encrypted or trusted. Retry in a minute; if it "
                    "persists, report it to the task-force administrator."
                ))
            await asyncio.sleep(_RETRY_SLEEP)
            fresh = True

    async def own_keys(self, agency_id: str, enc_kid: str, sig_kid: str) -> None:
        """Refuse to act when the log does not state this key file's keys as the agency's."""
        cp, leaf = await self.directory_leaf(agency_id)
        for use, have, logged in (("encryption", enc_kid, leaf.enc_kid),
                                  ("signing", sig_kid, leaf.sig_kid)):
            if have != logged:
                raise AgencyKeyError(agency_id, (
                    f"the audit log (checkpoint of size {cp.size}) states {logged} as your "
                    f"agency's {use} key, but this key file holds {have}: if your keys were "
                    "rotated, use the new key file; otherwise someone changed your agency's "
                    "keys. Report it to the task-force administrator."
                ))
        if leaf.status != "active":
            raise AgencyKeyError(agency_id, (
                f"the audit log (checkpoint of size {cp.size}) states that your agency is "
                f"{leaf.status}; ask the task-force administrator."
            ))


def _key_of(
    entry: Mapping[str, Any], agency_id: str, use: str, kid: str | None
) -> bytes | None:
    """The raw public key the directory entry serves for ``kid`` (checked to hash to it)."""
    if kid is None or entry.get("id") != agency_id:
        return None
    for k in entry.get("keys", []):
        if isinstance(k, dict) and k.get("use") == use and k.get("kid") == kid:
            try:
                public = b64url_decode(k.get("public_key"), length=keys.KEY_SIZE)  # type: ignore[arg-type]
            except (EncodingError, TypeError):
                raise KeyTransparencyError(
                    f"agency {agency_id}'s {use} key {kid} is malformed in the directory"
                ) from None
            if keys.kid(public) != kid:
                raise KeyTransparencyError(
                    f"agency {agency_id}'s {use} key served for kid {kid} does not hash to it: "
                    "the server swapped the key"
                )
            return public
    return None
