"""Witness cosignatures: C2SP ``tlog-cosignature`` v1, Ed25519 (signature type 0x04).

A cosignature is a signed-note signature line on a checkpoint::

    — <witness name> base64(key ID || timestamp || Ed25519 signature)

- key ID = ``SHA-256(name || "\\n" || 0x04 || 32-byte public key)[:4]``;
- timestamp = the POSIX time of cosigning, 8 bytes big-endian, at most 2**63 - 1;
- the signature is over ``"cosignature/v1\\ntime <timestamp>\\n"`` followed by the
  whole note text of the checkpoint (origin, size, root and any extension
  lines, with the final newline; no signature lines).

A witness publishes its verifier key as ``<name>+<8 hex digits of key
ID>+<base64(0x04 || public key)>`` (the ``vkey`` form of signed-note).

What a verified cosignature means: as of its timestamp, that witness had
checked that this tree head is consistent with every earlier one it cosigned
for the origin. A log that showed two clients two different trees cannot get
both cosigned by the same honest witness; a client that requires a quorum of
witnesses it trusts therefore refuses a split view unless the quorum colludes.

Public surface: ``witness_vkey`` / ``parse_witness_vkey``, ``cosign`` (one
signature line), ``cosignature_message``, ``verified_cosigners`` and
``verify_cosignatures`` (the quorum check every client calls). Every refusal
is a ``CosignatureError`` (a ``ValueError``); a missing quorum is the
subclass ``CosignatureQuorumError``, which names who was needed and who was
found.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from app.crypto.encoding import EncodingError, b64_decode, b64_encode
from app.crypto.note import (
    NoteError,
    is_valid_key_name,
    key_id,
    parse_note,
)

__all__ = [
    "COSIGNATURE_TYPE",
    "Cosignature",
    "CosignatureError",
    "CosignatureQuorumError",
    "WitnessKey",
    "append_signature_lines",
    "cosign",
    "cosignature_message",
    "parse_witness_vkey",
    "verified_cosigners",
    "verify_cosignatures",
    "witness_vkey",
]

COSIGNATURE_TYPE = 0x04
_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64
_MAX_TIMESTAMP = 2**63 - 1
_SIG_PREFIX = "\u2014 "


class CosignatureError(ValueError):
    """A witness key, cosignature or cosigned note is malformed or does not verify."""


class CosignatureQuorumError(CosignatureError):
    """Fewer than the required number of trusted witnesses cosigned the checkpoint."""

    def __init__(self, needed: int, found: Sequence[str], missing: Sequence[str]) -> None:
        self.needed = needed
        self.found = list(found)
        self.missing = list(missing)
        have = ", ".join(self.found) if self.found else "none"
        lacking = ", ".join(self.missing) if self.missing else "none"
        super().__init__(
            f"checkpoint has {len(self.found)} valid witness cosignature(s) of the {needed} "
            f"required: cosigned by {have}; not by {lacking}. The log may be showing you a "
            f"different tree than it shows others (a split view), or its witnesses are behind; "
            f"retry later, and if it persists tell the task force's oversight office"
        )


@dataclass(frozen=True, slots=True)
class WitnessKey:
    """A parsed witness verifier key."""

    name: str
    key_id: bytes
    public_key: bytes

    @property
    def vkey(self) -> str:
        return witness_vkey(self.name, self.public_key)


def witness_vkey(name: str, public_key: bytes) -> str:
    """Encode ``<name>+<hex key ID>+<base64(0x04 || public_key)>``."""
    if not is_valid_key_name(name):
        raise CosignatureError(
            f"invalid witness name {name!r}: must be non-empty, without spaces or '+'"
        )
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise CosignatureError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    kid = key_id(name, COSIGNATURE_TYPE, public_key).hex()
    return f"{name}+{kid}+{b64_encode(bytes([COSIGNATURE_TYPE]) + public_key)}"


def parse_witness_vkey(vkey: str) -> WitnessKey:
    """Parse a witness verifier key, refusing anything but its canonical spelling.

    The key hash must be 8 lowercase hex digits equal to the key ID recomputed
    from the name and key; the key must be strict base64 of 0x04 followed by
    32 bytes.
    """
    parts = vkey.strip().split("+", 2)  # the base64 key may itself contain '+'
    if len(parts) != 3:
        raise CosignatureError("witness key must be <name>+<key hash>+<key>")
    name, hash_hex, key_b64 = parts
    if not is_valid_key_name(name):
        raise CosignatureError(f"invalid witness name {name!r}")
    if len(hash_hex) != 8 or any(c not in "0123456789abcdef" for c in hash_hex):
        raise CosignatureError("witness key hash must be 8 lowercase hex digits")
    try:
        raw = b64_decode(key_b64)
    except EncodingError as exc:
        raise CosignatureError("witness key is not canonical base64") from exc
    if not raw or raw[0] != COSIGNATURE_TYPE:
        raise CosignatureError(
            "witness key is not a tlog-cosignature v1 Ed25519 key (type byte 0x04)"
        )
    public_key = raw[1:]
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise CosignatureError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    kid = key_id(name, COSIGNATURE_TYPE, public_key)
    if kid.hex() != hash_hex:
        raise CosignatureError("witness key hash does not match its name and key")
    return WitnessKey(name=name, key_id=kid, public_key=public_key)


def cosignature_message(note_text: str, timestamp: int) -> bytes:
    """The bytes a v1 Ed25519 cosignature signs over a note text ending in a newline."""
    _check_timestamp(timestamp)
    if not note_text.endswith("\n"):
        raise CosignatureError("note text must end with a newline")
    return f"cosignature/v1\ntime {timestamp}\n{note_text}".encode()


def _check_timestamp(timestamp: int) -> None:
    if isinstance(timestamp, bool) or not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise CosignatureError(f"cosignature timestamp out of range: {timestamp!r}")


def cosign(note_text: str, signing_seed: bytes, name: str, timestamp: int) -> str:
    """One cosignature line (with its newline) by the witness ``name`` over ``note_text``."""
    if len(signing_seed) != 32:
        raise CosignatureError(f"Ed25519 seed must be 32 bytes, got {len(signing_seed)}")
    if not is_valid_key_name(name):
        raise CosignatureError(f"invalid witness name {name!r}")
    key = SigningKey(signing_seed)
    kid = key_id(name, COSIGNATURE_TYPE, key.verify_key.encode())
    signature = key.sign(cosignature_message(note_text, timestamp)).signature
    return f"{_SIG_PREFIX}{name} {b64_encode(kid + struct.pack('>Q', timestamp) + signature)}\n"


def append_signature_lines(note: str, lines: Sequence[str]) -> str:
    """``note`` with extra signature lines (each ending in a newline) appended.

    Lines already present are not repeated, so appending is idempotent.
    """
    if not note.endswith("\n"):
        raise CosignatureError("a signed note ends with a newline")
    present = set(note.split("\n"))
    extra = [line for line in lines if line.rstrip("\n") not in present]
    for line in extra:
        if not line.startswith(_SIG_PREFIX) or not line.endswith("\n") or "\n" in line[:-1]:
            raise CosignatureError("a signature line starts with an em dash and ends in a newline")
    return note + "".join(extra)


def _dedupe(keys: Sequence[str]) -> list[WitnessKey]:
    out: dict[tuple[str, bytes], WitnessKey] = {}
    for vkey in keys:
        key = parse_witness_vkey(vkey)
        out.setdefault((key.name, key.key_id), key)
    return list(out.values())


@dataclass(frozen=True, slots=True)
class Cosignature:
    """A verified cosignature line (without its newline) and its timestamp."""

    witness: WitnessKey
    timestamp: int
    line: str


def _verified(note: str | bytes, keys: Sequence[WitnessKey]) -> dict[WitnessKey, Cosignature]:
    try:
        parsed = parse_note(note)
    except NoteError as exc:
        raise CosignatureError(f"not a signed note: {exc}") from exc
    found: dict[WitnessKey, Cosignature] = {}
    for key in keys:
        verify_key = VerifyKey(key.public_key)
        for sig in parsed.signatures:
            if sig.name != key.name or sig.key_id != key.key_id:
                continue
            if len(sig.signature) != 8 + _SIGNATURE_SIZE:
                continue
            (timestamp,) = struct.unpack(">Q", sig.signature[:8])
            if timestamp > _MAX_TIMESTAMP:
                continue
            try:
                verify_key.verify(cosignature_message(parsed.text, timestamp), sig.signature[8:])
            except BadSignatureError:
                continue
            if key not in found or found[key].timestamp < timestamp:
                found[key] = Cosignature(key, timestamp, sig.line)
    return found


def verified_cosigners(note: str | bytes, vkeys: Sequence[str]) -> list[Cosignature]:
    """The newest valid cosignature on ``note`` of each key in ``vkeys`` that has one.

    Signature lines of other keys (the log's own, unknown witnesses) are ignored,
    as signed-note requires; a line that claims a trusted key's name and key ID
    but does not verify does not count for it. Raises ``CosignatureError`` for
    a malformed note or key.
    """
    return list(_verified(note, _dedupe(vkeys)).values())


def verify_cosignatures(note: str, vkeys: Sequence[str], quorum: int) -> list[str]:
    """Names of the witnesses in ``vkeys`` whose cosignature on ``note`` verifies.

    Raises ``CosignatureQuorumError`` (naming who was needed and who was found)
    when fewer than ``quorum`` of them verify, and ``CosignatureError`` for a
    malformed note or key, or a quorum that no configuration could meet
    (negative, or more than the distinct keys given). This checks witnesses
    only: open the checkpoint with the log's key as well.
    """
    keys = _dedupe(vkeys)
    if isinstance(quorum, bool) or not 0 <= quorum <= len(keys):
        raise CosignatureError(
            f"witness quorum {quorum!r} must be between 0 and the {len(keys)} witness key(s) "
            "configured"
        )
    found = _verified(note, keys)
    names = [k.name for k in keys if k in found]
    if len(names) < quorum:
        raise CosignatureQuorumError(quorum, names, [k.name for k in keys if k not in found])
    return names
