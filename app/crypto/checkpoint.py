"""Signed checkpoints of the audit log: C2SP ``signed-note`` + ``tlog-checkpoint``, Ed25519.

A checkpoint is the note text ::

    <origin>\\n<decimal tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]

followed by a blank line and one or more signature lines
``— <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>\\n``
(U+2014 EM DASH, space). The signature covers the note text up to and
including its final newline. The key ID is ``SHA-256(name || 0x0A || 0x01 ||
public key)[:4]`` and the verifier key is published as
``<name>+<8 hex digits of key ID>+<base64(0x01 || public key)>``, the
format of ``golang.org/x/mod/sumdb/note``, which other tlog tooling reads.

Guarantees of ``open_checkpoint``: it returns only a checkpoint whose text was
signed by the given key, whose origin is that key's name, and whose every
line parses strictly (one spelling per value). Signature lines of other keys
are ignored (witness cosignatures, rotated keys); a line that claims the given
key but does not verify rejects the whole note. Every refusal is a
``CheckpointError`` (a ``ValueError``) saying what was wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from app.crypto import note as note_format
from app.crypto.encoding import EncodingError, b64_decode, b64_encode

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "directory_line",
    "VerifierKey",
    "open_checkpoint",
    "open_note",
    "parse_verifier_key",
    "sign_checkpoint",
    "sign_note",
    "verifier_key",
]

_ALG_ED25519 = 0x01
_PUBLIC_KEY_SIZE = 32
_SIGNATURE_SIZE = 64
_HASH_SIZE = 32
# Tree sizes are stored in signed 64-bit columns.
_MAX_TREE_SIZE = 2**63 - 1
_SIG_PREFIX = "\u2014 "
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_KEY_HASH_HEX = re.compile(r"[0-9a-f]{8}", re.ASCII)


class CheckpointError(ValueError):
    """A note, checkpoint or verifier key is malformed or not validly signed."""


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A parsed note verifier key: name, 4-byte key ID and raw Ed25519 public key."""

    name: str
    key_hash: bytes
    public_key: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A verified checkpoint; ``note`` is the signed note it was opened from."""

    origin: str
    size: int
    root: bytes
    note: str
    extensions: tuple[str, ...] = ()
    directory: tuple[int, bytes] | None = None
    """``(number of agencies, root)`` of the key directory the ``directory``
    extension line commits to, or ``None`` when the checkpoint has none."""


def _check_name(name: str) -> None:
    if not note_format.is_valid_key_name(name):
        raise CheckpointError(f"invalid key name {name!r}: must be non-empty, no spaces or '+'")


def _key_hash(name: str, public_key: bytes) -> bytes:
    return note_format.key_id(name, _ALG_ED25519, public_key)


def verifier_key(name: str, public_key: bytes) -> str:
    """Encode ``<name>+<hex key ID>+<base64(0x01 || public_key)>`` for an Ed25519 key."""
    _check_name(name)
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise CheckpointError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    key_id = _key_hash(name, public_key).hex()
    return f"{name}+{key_id}+{b64_encode(bytes([_ALG_ED25519]) + public_key)}"


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parse and validate a verifier key string.

    Refuses anything but the canonical encoding: a valid name, exactly 8
    lowercase hex digits equal to the key ID recomputed from name and key,
    strict base64 of algorithm byte 0x01 followed by a 32-byte key.
    """
    # The base64 key may itself contain '+'; name and hash cannot.
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise CheckpointError("verifier key must be <name>+<key hash>+<key>")
    name, hash_hex, key_b64 = parts
    _check_name(name)
    if not _KEY_HASH_HEX.fullmatch(hash_hex):
        raise CheckpointError("verifier key hash must be 8 lowercase hex digits")
    try:
        key = b64_decode(key_b64)
    except EncodingError as exc:
        raise CheckpointError("verifier key is not canonical base64") from exc
    if not key or key[0] != _ALG_ED25519:
        raise CheckpointError("verifier key algorithm is not Ed25519 (0x01)")
    public_key = key[1:]
    if len(public_key) != _PUBLIC_KEY_SIZE:
        raise CheckpointError(f"Ed25519 public key must be 32 bytes, got {len(public_key)}")
    key_hash = _key_hash(name, public_key)
    if key_hash.hex() != hash_hex:
        raise CheckpointError("verifier key hash does not match name and key")
    return VerifierKey(name=name, key_hash=key_hash, public_key=public_key)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CheckpointError(f"{what} is not valid UTF-8") from exc
    for c in text:
        if c < " " and c != "\n":
            raise CheckpointError(f"{what} contains control character U+{ord(c):04X}")


def _as_text(note: str | bytes) -> str:
    if isinstance(note, str):
        return note
    try:
        return note.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError("note is not valid UTF-8") from exc


def sign_note(text: str, signing_seed: bytes, name: str) -> str:
    """Sign ``text`` (which must end in a newline) as a C2SP signed note with one signature.

    ``signing_seed`` is the 32-byte Ed25519 seed. Ed25519 is deterministic,
    so the same inputs always give the same note.
    """
    _check_name(name)
    _check_text(text, "note text")
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    if len(signing_seed) != 32:
        raise CheckpointError(f"Ed25519 seed must be 32 bytes, got {len(signing_seed)}")
    key = SigningKey(signing_seed)
    body = text.encode("utf-8")
    signature = key.sign(body).signature
    key_id = _key_hash(name, key.verify_key.encode())
    return f"{text}\n{_SIG_PREFIX}{name} {b64_encode(key_id + signature)}\n"


def open_note(note: str | bytes, vkey: str) -> str:
    """Verify a signed note against one verifier key and return its text.

    The note must be valid UTF-8 without control characters other than
    newline, its text must be followed by a blank line and 1 to 100
    well-formed signature lines. Lines by other keys (name or key ID
    differs) are ignored; every line by this key must verify, and at least
    one must exist.
    """
    key = parse_verifier_key(vkey)
    try:
        parsed = note_format.parse_note(note)
    except note_format.NoteError as exc:
        raise CheckpointError(str(exc)) from None
    verify_key = VerifyKey(key.public_key)
    body = parsed.text.encode("utf-8")
    verified = False
    for sig in parsed.signatures:
        if sig.name != key.name or sig.key_id != key.key_hash:
            continue
        if len(sig.signature) != _SIGNATURE_SIZE:
            raise CheckpointError(f"signature by {key.name} has the wrong length")
        try:
            verify_key.verify(body, sig.signature)
        except BadSignatureError as exc:
            raise CheckpointError(f"invalid signature by {key.name}") from exc
        verified = True
    if not verified:
        raise CheckpointError(f"note is not signed by {key.name}+{key.key_hash.hex()}")
    return parsed.text


def directory_line(size: int, root: bytes) -> str:
    """The extension line ``directory <number of agencies> <base64 root>``."""
    if isinstance(size, bool) or not 0 <= size <= _MAX_TREE_SIZE:
        raise CheckpointError(f"directory size out of range: {size!r}")
    if len(root) != _HASH_SIZE:
        raise CheckpointError(f"directory root must be 32 bytes, got {len(root)}")
    return f"directory {size} {b64_encode(root)}"


def _parse_directory(extensions: tuple[str, ...]) -> tuple[int, bytes] | None:
    lines = [line for line in extensions if line.startswith("directory ")]
    if not lines:
        return None
    if len(lines) > 1:
        raise CheckpointError("checkpoint has more than one directory line")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not _DECIMAL.fullmatch(parts[1]) or len(parts[1]) > 19:
        raise CheckpointError("directory line must be 'directory <decimal size> <base64 root>'")
    size = int(parts[1])
    if size > _MAX_TREE_SIZE:
        raise CheckpointError("directory size out of range")
    try:
        root = b64_decode(parts[2], length=_HASH_SIZE)
    except EncodingError as exc:
        raise CheckpointError("directory root must be base64 of 32 bytes") from exc
    return size, root


def _checkpoint_body(origin: str, size: int, root: bytes) -> str:
    if not origin or "\n" in origin:
        raise CheckpointError("origin must be a non-empty single line")
    if isinstance(size, bool) or not 0 <= size <= _MAX_TREE_SIZE:
        raise CheckpointError(f"tree size out of range: {size!r}")
    if len(root) != _HASH_SIZE:
        raise CheckpointError(f"root hash must be 32 bytes, got {len(root)}")
    return f"{origin}\n{size}\n{b64_encode(root)}\n"


def sign_checkpoint(
    origin: str,
    size: int,
    root: bytes,
    signing_seed: bytes,
    *,
    name: str | None = None,
    extensions: tuple[str, ...] = (),
) -> str:
    """Produce the signed checkpoint note for ``(origin, size, root)``.

    ``extensions`` are extension lines appended after the root line (C2SP
    tlog-checkpoint: each non-empty, no newline), e.g. ``directory_line(...)``.
    The key name defaults to ``origin`` (what ``open_checkpoint`` requires).
    Raises ``CheckpointError`` for an invalid origin or name, a negative or
    oversized size, or a root, seed or extension line that is malformed.
    """
    body = _checkpoint_body(origin, size, root)
    for line in extensions:
        if not line or "\n" in line:
            raise CheckpointError("extension lines must be non-empty single lines")
        body += line + "\n"
    _parse_directory(tuple(extensions))
    return sign_note(body, signing_seed, origin if name is None else name)


def open_checkpoint(note: str | bytes, vkey: str) -> Checkpoint:
    """Verify a signed checkpoint against ``vkey`` and parse it strictly.

    Beyond ``open_note``: the origin line must equal the key name, the size
    must be ASCII decimal without leading zeros (at most 2**63 - 1), the root
    canonical base64 of exactly 32 bytes, extension lines non-empty, and at most one
    ``directory <n> <root>`` line, strictly formed (parsed as ``Checkpoint.directory``).
    """
    note = _as_text(note)
    text = open_note(note, vkey)
    origin_name = parse_verifier_key(vkey).name
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise CheckpointError("checkpoint needs origin, size and root lines")
    origin, size_text, root_b64, *extensions = lines
    if origin != origin_name:
        raise CheckpointError(f"checkpoint origin {origin!r} is not the key name {origin_name!r}")
    if not _DECIMAL.fullmatch(size_text):
        raise CheckpointError("checkpoint tree size must be decimal without leading zeros")
    # Length first: int() of a huge digit string is slow (and capped by Python).
    if len(size_text) > len(str(_MAX_TREE_SIZE)) or int(size_text) > _MAX_TREE_SIZE:
        raise CheckpointError("checkpoint tree size out of range")
    size = int(size_text)
    try:
        root = b64_decode(root_b64, length=_HASH_SIZE)
    except EncodingError as exc:
        raise CheckpointError("checkpoint root must be base64 of 32 bytes") from exc
    if any(not line for line in extensions):
        raise CheckpointError("checkpoint extension lines must be non-empty")
    return Checkpoint(
        origin=origin,
        size=size,
        root=root,
        note=note,
        extensions=tuple(extensions),
        directory=_parse_directory(tuple(extensions)),
    )
