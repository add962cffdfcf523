"""The ``add-checkpoint`` request of C2SP ``tlog-witness``, parsed and judged (no I/O).

Request body::

    old <size>\\n
    <base64 hash>\\n        (0 to 63 consistency proof lines)
    \\n
    <checkpoint: a signed note>

``parse_add_checkpoint`` refuses a malformed body with ``ProtocolError``
(HTTP 400). ``judge`` applies the spec's checks, in its order, to a parsed
submission whose origin is known and whose log signature verified, against
the witness's latest cosigned ``(size, root)`` for that origin, and says
what to answer: cosign, or refuse with the status the spec names.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.crypto import merkle
from app.crypto.encoding import EncodingError, b64_decode, b64_encode
from app.crypto.note import CheckpointBody, NoteError, SignedNote, parse_checkpoint_body, parse_note

MAX_PROOF_LINES = 63
MAX_BODY_BYTES = 1024 * 1024  # a checkpoint with 100 post-quantum signatures fits
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]{0,18})", re.ASCII)


class ProtocolError(ValueError):
    """A malformed ``add-checkpoint`` body (400 Bad Request)."""


@dataclass(frozen=True, slots=True)
class Submission:
    old_size: int
    proof: tuple[bytes, ...]
    note: SignedNote
    checkpoint: CheckpointBody


def parse_add_checkpoint(body: bytes) -> Submission:
    """Parse an ``add-checkpoint`` request body strictly (see the module docstring)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("request body is not UTF-8") from exc
    head, sep, note_text = text.partition("\n\n")
    if not sep:
        raise ProtocolError("request body needs an old size line, proof lines and an empty line")
    lines = head.split("\n")
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise ProtocolError(
            "first line must be 'old <size>' in decimal without leading zeros"
        )
    old_size = int(match.group(1))
    if old_size > 2**63 - 1:
        raise ProtocolError("old size out of range")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise ProtocolError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof: list[bytes] = []
    for line in proof_lines:
        try:
            proof.append(b64_decode(line, length=merkle.HASH_SIZE))
        except EncodingError as exc:
            raise ProtocolError("a consistency proof line is not base64 of 32 bytes") from exc
    try:
        note = parse_note(note_text)
        checkpoint = parse_checkpoint_body(note.text)
    except NoteError as exc:
        raise ProtocolError(f"checkpoint: {exc}") from exc
    return Submission(old_size, tuple(proof), note, checkpoint)


class Verdict(StrEnum):
    COSIGN = "cosign"
    OLD_SIZE_TOO_LARGE = "old-size-too-large"
    STALE_OLD_SIZE = "stale-old-size"
    BAD_PROOF = "bad-consistency-proof"
    ROOT_MISMATCH = "root-mismatch"  # the same size with another root: a fork

    @property
    def status(self) -> int:
        """The HTTP status tlog-witness prescribes for this outcome."""
        return _STATUS[self]


_STATUS = {
    Verdict.COSIGN: 200,
    Verdict.OLD_SIZE_TOO_LARGE: 400,
    Verdict.STALE_OLD_SIZE: 409,
    Verdict.BAD_PROOF: 422,
    Verdict.ROOT_MISMATCH: 409,
}


def judge(sub: Submission, latest_size: int, latest_root: bytes) -> tuple[Verdict, str]:
    """The spec's checks after origin and signature, in its order, with a reason."""
    size = sub.checkpoint.size
    if sub.old_size > size:
        return Verdict.OLD_SIZE_TOO_LARGE, f"old size {sub.old_size} exceeds checkpoint size {size}"
    if sub.old_size != latest_size:
        return Verdict.STALE_OLD_SIZE, (
            f"old size {sub.old_size} is not the latest cosigned size {latest_size}"
        )
    if sub.old_size == size:
        if not hmac.compare_digest(sub.checkpoint.root, latest_root):
            return Verdict.ROOT_MISMATCH, (
                f"checkpoint of size {size} has a different root than the one cosigned: "
                "the log forked"
            )
        if sub.proof:
            return Verdict.BAD_PROOF, "the consistency proof between equal sizes must be empty"
        return Verdict.COSIGN, "same checkpoint"
    if not merkle.verify_consistency(
        sub.old_size, size, list(sub.proof), latest_root, sub.checkpoint.root
    ):
        return Verdict.BAD_PROOF, (
            f"consistency proof from size {sub.old_size} to {size} does not verify"
        )
    return Verdict.COSIGN, f"extends size {sub.old_size} to {size}"


def size_body(size: int) -> bytes:
    """The ``text/x.tlog.size`` body of a 409: the latest cosigned size and a newline."""
    return f"{size}\n".encode()


def request_body(old_size: int, proof: Sequence[bytes], checkpoint_note: str) -> bytes:
    """An ``add-checkpoint`` request body (what a log sends)."""
    if len(proof) > MAX_PROOF_LINES:
        raise ValueError(f"a consistency proof has at most {MAX_PROOF_LINES} hashes")
    lines = [f"old {old_size}", *(b64_encode(h) for h in proof)]
    return ("\n".join(lines) + "\n\n" + checkpoint_note).encode()
