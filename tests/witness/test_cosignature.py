"""tlog-cosignature v1 (Ed25519): keys, signing, the quorum check clients call."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.crypto import checkpoint, keys
from app.crypto.cosignature import (
    CosignatureError,
    CosignatureQuorumError,
    append_signature_lines,
    cosign,
    cosignature_message,
    parse_witness_vkey,
    verified_cosigners,
    verify_cosignatures,
    witness_vkey,
)

LOG_SEED = bytes(range(32))
NOTE = checkpoint.sign_checkpoint("example.com/log", 5, hashlib.sha256(b"r").digest(), LOG_SEED)


def _witness(name: str) -> tuple[bytes, str]:
    seed = keys.generate_signing_key().seed
    return seed, witness_vkey(name, keys.sig_public_from_seed(seed))


def _text(note: str) -> str:
    return note[: note.rindex("\n\n") + 1]


def test_vkey_round_trip_uses_type_byte_4() -> None:
    seed, vkey = _witness("w.example/one")
    public = keys.sig_public_from_seed(seed)
    name, hash_hex, key_b64 = vkey.split("+", 2)
    assert name == "w.example/one"
    assert base64.b64decode(key_b64) == b"\x04" + public
    expected = hashlib.sha256(b"w.example/one\n\x04" + public).digest()[:4]
    assert hash_hex == expected.hex()
    assert parse_witness_vkey(vkey).vkey == vkey


@pytest.mark.parametrize(
    "mutate",
    [
        lambda v: v.replace("+", "x", 1),  # no separator
        lambda v: v.split("+")[0] + "+" + "ABCDEF12" + "+" + v.split("+", 2)[2],
        lambda v: v.split("+")[0] + "+00000000+" + v.split("+", 2)[2],
        lambda v: v + "AA==",  # a 34-byte key
        lambda v: v[:-1] + "*",  # not base64
        lambda v: "bad name" + v[v.index("+") :],
    ],
)
def test_malformed_witness_keys_are_refused(mutate: object) -> None:
    _, vkey = _witness("w.example/one")
    with pytest.raises(CosignatureError):
        parse_witness_vkey(mutate(vkey))  # type: ignore[operator]


def test_a_log_key_is_not_a_witness_key() -> None:
    log_vkey = checkpoint.verifier_key("example.com/log", keys.sig_public_from_seed(LOG_SEED))
    with pytest.raises(CosignatureError, match="0x04"):
        parse_witness_vkey(log_vkey)


def test_message_is_header_time_and_whole_note_text() -> None:
    text = "a.example/log\n3\n" + base64.b64encode(bytes(32)).decode() + "\next line\n"
    assert cosignature_message(text, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + text.encode()
    )
    with pytest.raises(CosignatureError):
        cosignature_message(text, -1)
    with pytest.raises(CosignatureError):
        cosignature_message(text, 2**63)


def test_quorum_met_names_the_witnesses() -> None:
    (s1, v1), (s2, v2), (_, v3) = _witness("w1.example"), _witness("w2.example"), _witness("w3")
    note = NOTE + cosign(_text(NOTE), s1, "w1.example", 100) + cosign(_text(NOTE), s2,
                                                                        "w2.example", 200)
    assert verify_cosignatures(note, [v1, v2, v3], 2) == ["w1.example", "w2.example"]
    assert [c.timestamp for c in verified_cosigners(note, [v2])] == [200]
    with pytest.raises(CosignatureQuorumError) as caught:
        verify_cosignatures(note, [v1, v2, v3], 3)
    assert caught.value.found == ["w1.example", "w2.example"]
    assert caught.value.missing == ["w3"]
    assert "2 valid witness cosignature(s) of the 3 required" in str(caught.value)


def test_unknown_and_invalid_cosignatures_do_not_count() -> None:
    (s1, v1), (s_other, _) = _witness("w1.example"), _witness("w1.example")
    line = cosign(_text(NOTE), s1, "w1.example", 100)
    # same name, another key: another key ID, ignored
    impostor = cosign(_text(NOTE), s_other, "w1.example", 100)
    with pytest.raises(CosignatureQuorumError):
        verify_cosignatures(NOTE + impostor, [v1], 1)
    # the right key ID over another checkpoint's text does not verify here
    other = checkpoint.sign_checkpoint("example.com/log", 6, bytes(32), LOG_SEED)
    moved = cosign(_text(other), s1, "w1.example", 100)
    with pytest.raises(CosignatureQuorumError):
        verify_cosignatures(NOTE + moved, [v1], 1)
    # the timestamp is signed: changing it breaks the signature
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[11] ^= 1
    tampered = f"\u2014 w1.example {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(CosignatureQuorumError):
        verify_cosignatures(NOTE + tampered, [v1], 1)
    assert verify_cosignatures(NOTE + impostor + moved + line, [v1], 1) == ["w1.example"]


def test_quorum_must_be_achievable() -> None:
    _, v1 = _witness("w1.example")
    for quorum in (-1, 2):
        with pytest.raises(CosignatureError, match="between 0 and"):
            verify_cosignatures(NOTE, [v1, v1], quorum)
    assert verify_cosignatures(NOTE, [v1], 0) == []


def test_append_is_idempotent_and_checks_lines() -> None:
    s1, v1 = _witness("w1.example")
    line = cosign(_text(NOTE), s1, "w1.example", 1)
    once = append_signature_lines(NOTE, [line])
    assert append_signature_lines(once, [line]) == once
    with pytest.raises(CosignatureError):
        append_signature_lines(NOTE, ["not a signature line\n"])
    assert verify_cosignatures(once, [v1], 1) == ["w1.example"]


@given(st.integers(min_value=0, max_value=len(_text(NOTE)) - 2), st.integers(1, 255))
def test_any_change_to_the_note_text_breaks_the_cosignature(at: int, flip: int) -> None:
    seed = bytes([7]) * 32
    vkey = witness_vkey("w.example", keys.sig_public_from_seed(seed))
    line = cosign(_text(NOTE), seed, "w.example", 42)
    text = bytearray(_text(NOTE).encode())
    text[at] = (text[at] ^ flip) & 0x7F or 0x41
    if text[at] < 0x20:
        text[at] = 0x41
    changed = text.decode()
    if changed == _text(NOTE):
        return
    with pytest.raises(CosignatureError):
        verify_cosignatures(changed + "\n" + NOTE.split("\n\n")[1] + line, [vkey], 1)


def test_clients_get_the_quorum_check_without_server_dependencies() -> None:
    import subprocess
    import sys

    code = (
        "import sys, app.crypto.cosignature, app.client.audit_verify\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'sqlalchemy', 'sqlmodel', 'asyncpg', 'aiosqlite'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
