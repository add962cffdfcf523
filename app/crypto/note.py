"""Any C2SP signed note, and any tlog checkpoint, as a third party reads them.

``app.crypto.checkpoint`` opens *our* checkpoints with *our* key and refuses
anything unusual. A witness serves other logs too, so it needs the general
reading: split a note into its text and signature lines without caring which
keys made them, parse a checkpoint body whatever its origin or extension
lines, and check Ed25519 (type 0x01) note signatures against the keys it
trusts for an origin, ignoring every other line (C2SP ``signed-note``:
"verifiers MUST ignore signatures from unknown keys").

Guarantees: ``parse_note`` returns only a note that is valid UTF-8 without
control characters other than newline, whose text ends in a newline and is
followed by a blank line and 1 to ``MAX_SIGNATURES`` well-formed signature
lines (em dash, space, key name without spaces or '+', space, standard base64
of more than 4 bytes). ``parse_checkpoint_body`` accepts exactly the
``tlog-checkpoint`` note text: a non-empty origin, a decimal size without
leading zeros (at most 2**63 - 1), the base64 of a 32-byte root, then
non-empty extension lines. Every refusal is a ``NoteError`` (a
``ValueError``) saying what was wrong.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from app.crypto.encoding import EncodingError, b64_decode

if TYPE_CHECKING:  # checkpoint.py builds on this module; the key type is only annotated here
    from app.crypto.checkpoint import VerifierKey

__all__ = [
    "MAX_SIGNATURES",
    "CheckpointBody",
    "NoteError",
    "NoteSignature",
    "SignedNote",
    "is_valid_key_name",
    "key_id",
    "parse_signature_line",
    "parse_checkpoint_body",
    "parse_note",
    "verified_by",
]

MAX_SIGNATURES = 100
"""More than the 16 the spec requires verifiers to accept; bounds the work per note."""
KEY_ID_SIZE = 4
_HASH_SIZE = 32
_MAX_TREE_SIZE = 2**63 - 1
_SIG_PREFIX = "\u2014 "
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)


class NoteError(ValueError):
    """A note or checkpoint body is malformed."""


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key ID and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes
    line: str  # the line as it was, without its newline


@dataclass(frozen=True, slots=True)
class SignedNote:
    text: str  # the signed text, including its final newline
    signatures: tuple[NoteSignature, ...]


@dataclass(frozen=True, slots=True)
class CheckpointBody:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]


def is_valid_key_name(name: str) -> bool:
    """Non-empty, without Unicode spaces or '+' (C2SP signed-note)."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || type || public key)[:4]``, the recommended key ID."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key).digest()[
        :KEY_ID_SIZE
    ]


def _as_text(note: str | bytes) -> str:
    if isinstance(note, str):
        try:
            note.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise NoteError("note is not valid UTF-8") from exc
        return note
    try:
        return note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NoteError("note is not valid UTF-8") from exc


def parse_signature_line(line: str) -> NoteSignature:
    """Parse ``— <name> <base64(key ID || signature)>`` (without its newline)."""
    if not line.startswith(_SIG_PREFIX):
        raise NoteError("malformed signature line: must start with an em dash and a space")
    name, sep, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
    if not sep or not is_valid_key_name(name):
        raise NoteError("malformed signature line: bad key name")
    try:
        raw = b64_decode(sig_b64)
    except EncodingError as exc:
        raise NoteError("malformed signature line: signature is not base64") from exc
    if len(raw) <= KEY_ID_SIZE:
        raise NoteError("malformed signature line: signature too short")
    return NoteSignature(name, raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:], line)


def parse_note(note: str | bytes) -> SignedNote:
    """Split a signed note into its text and signature lines (see the module docstring)."""
    note = _as_text(note)
    for c in note:
        if c < " " and c != "\n":
            raise NoteError(f"note contains control character U+{ord(c):04X}")
    # The text is separated from the signatures by the *last* blank line.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("note signature block must end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    return SignedNote(text, tuple(parse_signature_line(line) for line in lines))


def parse_checkpoint_body(text: str) -> CheckpointBody:
    """Parse a ``tlog-checkpoint`` note text (ending in a newline), any origin."""
    if not text.endswith("\n"):
        raise NoteError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs origin, size and root lines")
    origin, size_text, root_b64, *extensions = lines
    if not origin:
        raise NoteError("checkpoint origin line is empty")
    if not _DECIMAL.fullmatch(size_text):
        raise NoteError("checkpoint tree size must be decimal without leading zeros")
    if len(size_text) > len(str(_MAX_TREE_SIZE)) or int(size_text) > _MAX_TREE_SIZE:
        raise NoteError("checkpoint tree size out of range")
    try:
        root = b64_decode(root_b64, length=_HASH_SIZE)
    except EncodingError as exc:
        raise NoteError("checkpoint root hash must be base64 of 32 bytes") from exc
    if any(not line for line in extensions):
        raise NoteError("checkpoint extension lines must be non-empty")
    return CheckpointBody(origin, int(size_text), root, tuple(extensions))


def verified_by(note: SignedNote, keys: Iterable[VerifierKey]) -> list[VerifierKey]:
    """The Ed25519 (0x01) keys among ``keys`` that validly signed ``note``.

    Lines whose name and key ID do not both match a key are ignored; a line
    that matches a key but does not verify does not count for it.
    """
    body = note.text.encode("utf-8")
    good: list[VerifierKey] = []
    for key in keys:
        for sig in note.signatures:
            if sig.name != key.name or sig.key_id != key.key_hash or len(sig.signature) != 64:
                continue
            try:
                VerifyKey(key.public_key).verify(body, sig.signature)
            except BadSignatureError:
                continue
            good.append(key)
            break
    return good
