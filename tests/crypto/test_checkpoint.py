"""C2SP signed-note / tlog-checkpoint: published vectors, round trips, tampering, strict parsing."""

from __future__ import annotations

import hashlib

import pytest
from nacl.signing import SigningKey

from app.crypto.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    open_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
)
from app.crypto.encoding import b64_decode, b64_encode, b64url_encode

# ---------------------------------------------------------------------------
# Published vectors: golang/mod sumdb/note/note_test.go (TestNewVerifier,
# TestSign, TestOpen) and the package documentation in sumdb/note/note.go.
# ---------------------------------------------------------------------------

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
    "dngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwn"
    "WLox33WWd1RvMc+QQ=\n"
)


def peter_seed() -> bytes:
    # The Go signer key is base64(0x01 || 32-byte Ed25519 seed).
    raw = b64_decode(PETER_SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return raw[1:]


def test_verifier_key_matches_published_peter_neumann_key() -> None:
    public_key = SigningKey(peter_seed()).verify_key.encode()
    assert verifier_key("PeterNeumann", public_key) == PETER_VKEY
    parsed = parse_verifier_key(PETER_VKEY)
    assert parsed.name == "PeterNeumann"
    assert parsed.key_hash == bytes.fromhex("c74f20a3")
    assert parsed.public_key == public_key


def test_sign_note_reproduces_published_signed_note() -> None:
    assert sign_note(TEXT, peter_seed(), "PeterNeumann") == TEXT + "\n" + PETER_SIG


def test_open_note_verifies_published_note_and_ignores_other_signers() -> None:
    both = TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert open_note(both, PETER_VKEY) == TEXT
    assert open_note(both, ENOCH_VKEY) == TEXT
    assert open_note(both.encode("utf-8"), PETER_VKEY) == TEXT
    # Duplicated lines by the same key, all valid (TestOpen "Duplicated verified").
    assert open_note(TEXT + "\n" + PETER_SIG + PETER_SIG + ENOCH_SIG, PETER_VKEY) == TEXT


def test_open_note_refuses_note_signed_only_by_others() -> None:
    with pytest.raises(CheckpointError, match="not signed by PeterNeumann\\+c74f20a3"):
        open_note(TEXT + "\n" + ENOCH_SIG, PETER_VKEY)
    # A line with the right key ID under another name is another key (TestOpen).
    misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego")
    with pytest.raises(CheckpointError, match="not signed by"):
        open_note(TEXT + "\n" + misnamed, PETER_VKEY)
    wrong_hash = PETER_SIG.replace("x08g", "xxxx")
    with pytest.raises(CheckpointError, match="not signed by"):
        open_note(TEXT + "\n" + wrong_hash, PETER_VKEY)


def test_open_note_refuses_invalid_signature_by_the_key() -> None:
    # TestOpen "Invalid signature": four base64 characters spliced into the signature.
    spliced = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(CheckpointError, match="PeterNeumann"):
        open_note(TEXT + "\n" + spliced, PETER_VKEY)
    # Same length, one byte of the signature changed: verification itself fails.
    raw = bytearray(b64_decode(PETER_SIG.split(" ")[2].strip()))
    raw[10] ^= 1
    tampered = f"\u2014 PeterNeumann {b64_encode(bytes(raw))}\n"
    with pytest.raises(CheckpointError, match="invalid signature by PeterNeumann"):
        open_note(TEXT + "\n" + tampered, PETER_VKEY)
    # A bad line by the key rejects the note even next to a good one.
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_note(TEXT + "\n" + PETER_SIG + tampered, PETER_VKEY)


@pytest.mark.parametrize(
    "note",
    [
        # TestOpen badMsgs
        TEXT,
        TEXT + "\n",
        TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + TEXT + "\n" + PETER_SIG,
        TEXT
        + "\n"
        + "\u2014 Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
        + "dngotpRZb6KE6RyyBwJnAM=",
        TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        # and more
        TEXT + "\n" + PETER_SIG.replace("\u2014", "-"),
        TEXT + "\n" + PETER_SIG.replace(" x08", "  x08"),
        TEXT + "\n" + PETER_SIG.replace("AM=", "AM"),
        TEXT + "\n" + PETER_SIG + "\n",
        TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG,
        TEXT + "\t\n" + PETER_SIG,
        TEXT + "\n" + PETER_SIG * 101,
        "\ud800" + TEXT + "\n" + PETER_SIG,
        TEXT + "\n\u2014 PeterNeumann AAAA\n",
    ],
)
def test_open_note_refuses_malformed_notes(note: str) -> None:
    with pytest.raises(CheckpointError):
        open_note(note, PETER_VKEY)


def test_open_note_refuses_invalid_utf8() -> None:
    with pytest.raises(CheckpointError, match="UTF-8"):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), PETER_VKEY)


def test_published_verifier_key_manglings_are_refused() -> None:
    # TestNewVerifier: every proper substring and every single-character increment.
    b = PETER_VKEY
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if (i, j) != (0, len(b)):
                with pytest.raises(CheckpointError):
                    parse_verifier_key(b[i:j])
    for i in range(len(b)):
        with pytest.raises(CheckpointError):
            parse_verifier_key(b[:i] + chr(ord(b[i]) + 1) + b[i + 1 :])


def test_verifier_key_with_wrong_length_or_algorithm_is_refused() -> None:
    # TestNewVerifier: both have a key hash adjusted to match their (bad) key bytes.
    # (This one's base64 is also non-canonical, which refgate refuses first.)
    with pytest.raises(CheckpointError, match="base64"):
        parse_verifier_key(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
    with pytest.raises(CheckpointError, match="algorithm"):
        parse_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")
    with pytest.raises(CheckpointError, match="lowercase hex"):
        parse_verifier_key(PETER_VKEY.replace("c74f20a3", "C74F20A3"))


def test_key_hash_is_sha256_of_name_newline_alg_and_key() -> None:
    key = parse_verifier_key(PETER_VKEY)
    data = b"PeterNeumann\n\x01" + key.public_key
    assert key.key_hash == hashlib.sha256(data).digest()[:4]


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------

ORIGIN = "refgate.example/audit"
SEED = bytes(range(32))
ROOT = hashlib.sha256(b"root").digest()
PLUS_SLASH_ROOT = b"\xfb\xff" * 16  # standard base64 "+/+/...", url-safe "-_-_..."


def vkey_for(seed: bytes, name: str = ORIGIN) -> str:
    return verifier_key(name, SigningKey(seed).verify_key.encode())


def test_checkpoint_round_trip_and_exact_format() -> None:
    note = sign_checkpoint(ORIGIN, 1234, ROOT, SEED)
    body, sig_line = note.split("\n\n")
    assert body == f"{ORIGIN}\n1234\n{b64_encode(ROOT)}"
    assert sig_line.startswith(f"\u2014 {ORIGIN} ")
    raw = b64_decode(sig_line.split(" ")[2].rstrip("\n"))
    assert raw[:4] == parse_verifier_key(vkey_for(SEED)).key_hash
    assert len(raw) == 4 + 64
    assert open_checkpoint(note, vkey_for(SEED)) == Checkpoint(
        origin=ORIGIN, size=1234, root=ROOT, note=note
    )
    assert open_checkpoint(note.encode(), vkey_for(SEED)).size == 1234


def test_checkpoint_is_deterministic() -> None:
    assert sign_checkpoint(ORIGIN, 7, ROOT, SEED) == sign_checkpoint(ORIGIN, 7, ROOT, SEED)


@pytest.mark.parametrize("size", [0, 1, 2**63 - 1])
def test_checkpoint_sizes_at_the_edges_round_trip(size: int) -> None:
    note = sign_checkpoint(ORIGIN, size, ROOT, SEED)
    assert open_checkpoint(note, vkey_for(SEED)).size == size


def test_checkpoint_under_another_key_is_refused() -> None:
    note = sign_checkpoint(ORIGIN, 5, ROOT, SEED)
    with pytest.raises(CheckpointError, match="not signed by"):
        open_checkpoint(note, vkey_for(bytes(32)))


def test_checkpoint_with_tampered_body_is_refused() -> None:
    note = sign_checkpoint(ORIGIN, 5, ROOT, SEED)
    forged = note.replace("\n5\n", "\n6\n", 1)
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(forged, vkey_for(SEED))
    other_root = note.replace(b64_encode(ROOT), b64_encode(hashlib.sha256(b"x").digest()))
    with pytest.raises(CheckpointError, match="invalid signature"):
        open_checkpoint(other_root, vkey_for(SEED))


def test_checkpoint_with_tampered_signature_is_refused() -> None:
    note = sign_checkpoint(ORIGIN, 5, ROOT, SEED)
    body, line = note.split("\n\n")
    prefix, sig = line.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(b64_decode(sig))
    for position in (4, 40, 67):
        raw[position] ^= 0x80
        forged = f"{body}\n\n{prefix} {b64_encode(bytes(raw))}\n"
        raw[position] ^= 0x80
        with pytest.raises(CheckpointError, match="invalid signature"):
            open_checkpoint(forged, vkey_for(SEED))


def test_checkpoint_whose_origin_is_not_the_key_name_is_refused() -> None:
    note = sign_checkpoint("other.example/log", 5, ROOT, SEED, name=ORIGIN)
    with pytest.raises(CheckpointError, match="origin 'other.example/log' is not the key name"):
        open_checkpoint(note, vkey_for(SEED))


def test_checkpoint_cosigned_by_others_opens_with_the_log_key() -> None:
    note = sign_checkpoint(ORIGIN, 9, ROOT, SEED)
    body = note.split("\n\n")[0] + "\n"
    witness = sign_note(body, bytes([7]) * 32, "witness.example/w1")
    witness_line = witness.split("\n\n")[1]
    cosigned = witness.split("\n\n")[0] + "\n\n" + witness_line + note.split("\n\n")[1]
    assert open_checkpoint(cosigned, vkey_for(SEED)).size == 9
    assert open_note(cosigned, vkey_for(bytes([7]) * 32, "witness.example/w1")) == body
    # Only the witness signed: not a checkpoint of this log.
    with pytest.raises(CheckpointError, match="not signed by"):
        open_checkpoint(witness, vkey_for(SEED))


def test_checkpoint_extension_lines_are_kept() -> None:
    body = f"{ORIGIN}\n3\n{b64_encode(ROOT)}\next one\next two\n"
    opened = open_checkpoint(sign_note(body, SEED, ORIGIN), vkey_for(SEED))
    assert opened.extensions == ("ext one", "ext two")
    assert opened.size == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{ORIGIN}\n01\n{b64_encode(ROOT)}\n", "leading zeros"),
        (f"{ORIGIN}\n-1\n{b64_encode(ROOT)}\n", "decimal"),
        (f"{ORIGIN}\n+1\n{b64_encode(ROOT)}\n", "decimal"),
        (f"{ORIGIN}\n 1\n{b64_encode(ROOT)}\n", "decimal"),
        (f"{ORIGIN}\n1.0\n{b64_encode(ROOT)}\n", "decimal"),
        (f"{ORIGIN}\n\u0661\n{b64_encode(ROOT)}\n", "decimal"),  # ARABIC-INDIC DIGIT ONE
        (f"{ORIGIN}\n\n{b64_encode(ROOT)}\n", "decimal"),
        (f"{ORIGIN}\n{2**63}\n{b64_encode(ROOT)}\n", "out of range"),
        (f"{ORIGIN}\n{'9' * 5000}\n{b64_encode(ROOT)}\n", "out of range"),
        (f"{ORIGIN}\n1\n{b64_encode(ROOT[:31])}\n", "32 bytes"),
        (f"{ORIGIN}\n1\n{b64_encode(ROOT + b'x')}\n", "32 bytes"),
        (f"{ORIGIN}\n1\n{b64_encode(ROOT).rstrip('=')}\n", "32 bytes"),
        (f"{ORIGIN}\n1\n{b64url_encode(PLUS_SLASH_ROOT)}=\n", "32 bytes"),
        (f"{ORIGIN}\n1\n", "origin, size and root"),
        (f"{ORIGIN}\n1\n{b64_encode(ROOT)}\n\next\n", "extension lines"),
        (f"{ORIGIN} \n1\n{b64_encode(ROOT)}\n", "not the key name"),
    ],
)
def test_malformed_checkpoint_bodies_are_refused_even_when_signed(body: str, message: str) -> None:
    note = sign_note(body, SEED, ORIGIN)
    with pytest.raises(CheckpointError, match=message):
        open_checkpoint(note, vkey_for(SEED))


def test_non_canonical_root_encoding_is_refused() -> None:
    # "...Q=" vs "...R=": same bytes under a lax decoder, different text.
    canonical = b64_encode(ROOT)
    last = canonical[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sloppy = canonical[:-2] + alphabet[alphabet.index(last) ^ 1] + "="
    note = sign_note(f"{ORIGIN}\n1\n{sloppy}\n", SEED, ORIGIN)
    with pytest.raises(CheckpointError, match="base64"):
        open_checkpoint(note, vkey_for(SEED))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((ORIGIN, -1, ROOT, SEED), "tree size"),
        ((ORIGIN, 2**63, ROOT, SEED), "tree size"),
        ((ORIGIN, True, ROOT, SEED), "tree size"),
        ((ORIGIN, 1, ROOT[:31], SEED), "root hash must be 32 bytes"),
        ((ORIGIN, 1, ROOT, SEED[:31]), "seed must be 32 bytes"),
        (("", 1, ROOT, SEED), "origin"),
        (("a\nb", 1, ROOT, SEED), "origin"),
        (("log+1", 1, ROOT, SEED), "key name"),
        (("my log", 1, ROOT, SEED), "key name"),
    ],
)
def test_sign_checkpoint_refuses_bad_inputs(
    args: tuple[str, int, bytes, bytes], message: str
) -> None:
    with pytest.raises(CheckpointError, match=message):
        sign_checkpoint(*args)


def test_sign_note_refuses_text_without_final_newline() -> None:
    with pytest.raises(CheckpointError, match="newline"):
        sign_note("abc", SEED, ORIGIN)
    with pytest.raises(CheckpointError, match="control character"):
        sign_note("a\rb\n", SEED, ORIGIN)


def test_verifier_keys_round_trip_including_plus_in_the_base64() -> None:
    keys = [vkey_for(bytes([i]) * 32, "log.example/x") for i in range(16)]
    assert any("+" in k.split("+", 2)[2] for k in keys)
    for i, vkey in enumerate(keys):
        parsed = parse_verifier_key(vkey)
        assert parsed.public_key == SigningKey(bytes([i]) * 32).verify_key.encode()
        assert verifier_key(parsed.name, parsed.public_key) == vkey
