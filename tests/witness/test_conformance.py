"""The witness alone, driven by a log that is not refgate's (C2SP tlog-witness).

Every status code of ``add-checkpoint``, in the spec's order, on both
databases for the witness's own state; the cosignature checked by an
implementation of tlog-cosignature v1 written here from the spec; the race
of two submissions from the same old size.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import struct
import time

import httpx
import pytest
from fastapi import FastAPI
from nacl.signing import VerifyKey
from sqlalchemy import select

from app.crypto import keys
from app.crypto.cosignature import verify_cosignatures
from app.witness import store
from app.witness.protocol import request_body
from app.witness.service import WitnessConfig, create_witness_app
from tests.witness.testlog import TestLog

ADD = "/add-checkpoint"


def independent_cosignature_check(
    witness_name: str, public_key: bytes, checkpoint_note: str, line: str
) -> int:
    """tlog-cosignature v1 (Ed25519) from the spec text, sharing no code with app/.

    Returns the timestamp; raises on any mismatch.
    """
    assert line.startswith("\u2014 ")
    assert line.endswith("\n")
    name, b64 = line[2:-1].split(" ")
    assert name == witness_name
    raw = base64.b64decode(b64, validate=True)
    key_id = hashlib.sha256(witness_name.encode() + b"\n" + b"\x04" + public_key).digest()[:4]
    assert raw[:4] == key_id
    assert len(raw) == 4 + 8 + 64
    timestamp = struct.unpack(">Q", raw[4:12])[0]
    body = checkpoint_note[: checkpoint_note.rindex("\n\n") + 1]  # note text, no signatures
    message = b"cosignature/v1\n" + f"time {timestamp}\n".encode() + body.encode()
    VerifyKey(public_key).verify(message, raw[12:])
    return int(timestamp)


async def post(http: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await http.post(ADD, content=body)


async def test_first_checkpoint_is_cosigned_and_verifies_independently(
    witness_http: httpx.AsyncClient, witness_config: WitnessConfig, test_log: TestLog
) -> None:
    before = int(time.time())
    r = await post(witness_http, test_log.submission(0, 10))
    assert r.status_code == 200, r.text
    assert r.text.count("\n") == 1
    public = keys.sig_public_from_seed(witness_config.seed)
    ts = independent_cosignature_check(witness_config.name, public, test_log.note(10), r.text)
    assert before <= ts <= int(time.time())
    assert verify_cosignatures(test_log.note(10) + r.text, [witness_config.vkey], 1) == [
        witness_config.name
    ]


async def test_checkpoint_with_extension_lines_is_cosigned_over_them(
    witness_http: httpx.AsyncClient, witness_config: WitnessConfig, test_log: TestLog
) -> None:
    ext = ("directory 4 " + base64.b64encode(bytes(32)).decode(), "other-extension x")
    note = test_log.note(7, extensions=ext)
    r = await post(witness_http, request_body(0, [], note))
    assert r.status_code == 200, r.text
    public = keys.sig_public_from_seed(witness_config.seed)
    independent_cosignature_check(witness_config.name, public, note, r.text)
    # the cosignature commits to the extension lines: without them it does not verify
    with pytest.raises(ValueError, match="0 valid witness cosignature"):
        verify_cosignatures(test_log.note(7) + r.text, [witness_config.vkey], 1)


async def test_growing_log_is_cosigned_with_consistency_proofs(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    sizes = [0, 1, 2, 3, 8, 13, 13, 32, 63, 64]
    old = 0
    for size in sizes:
        r = await post(witness_http, test_log.submission(old, size))
        assert r.status_code == 200, (old, size, r.text)
        old = size


async def test_unknown_origin_is_404(witness_http: httpx.AsyncClient) -> None:
    other = TestLog(origin="unknown.example/log")
    r = await post(witness_http, other.submission(0, 3))
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"


async def test_no_trusted_signature_is_403(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    # same origin and key name, another key (so another key ID): an unknown key, ignored
    impostor = keys.generate_signing_key().seed
    note = test_log.note(5, seed=impostor)
    assert (await post(witness_http, request_body(0, [], note))).status_code == 403
    # the trusted key's name and ID, but a signature over other text
    good = test_log.note(5)
    forged = test_log.note(6).split("\n\n")[0] + "\n\n" + good.split("\n\n")[1]
    assert (await post(witness_http, request_body(0, [], forged))).status_code == 403


async def test_unknown_signatures_beside_a_trusted_one_are_ignored(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    note = test_log.note(5)
    sig = base64.b64encode(b"\x01\x02\x03\x04" + bytes(70)).decode()
    unknown = f"\u2014 someone.else/key {sig}"
    r = await post(witness_http, request_body(0, [], note + unknown + "\n"))
    assert r.status_code == 200, r.text


async def test_old_size_above_checkpoint_size_is_400(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    r = await post(witness_http, request_body(9, [], test_log.note(5)))
    assert r.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 0\n",
        b"old 00\n\n",
        b"old -1\n\n",
        b"new 0\n\n",
        b"old 0\nnot-base64!\n\n",
        b"old 0\n" + base64.b64encode(bytes(31)) + b"\n\n",
        b"old 0\n" + (base64.b64encode(bytes(32)) + b"\n") * 64 + b"\n",
        b"\xff\xfe",
    ],
)
async def test_malformed_submission_is_400(
    witness_http: httpx.AsyncClient, test_log: TestLog, body: bytes
) -> None:
    if body.endswith(b"\n\n"):
        body += test_log.note(3).encode()
    assert (await post(witness_http, body)).status_code == 400


@pytest.mark.parametrize(
    "checkpoint_text",
    [
        "transparency.example.org/log-7\n05\n{root}\n",
        "transparency.example.org/log-7\n5\nnot-a-root\n",
        "transparency.example.org/log-7\n5\n",
        "transparency.example.org/log-7\n5\n{root}\n\n",
    ],
)
async def test_malformed_checkpoint_is_400(
    witness_http: httpx.AsyncClient, test_log: TestLog, checkpoint_text: str
) -> None:
    from app.crypto import checkpoint

    text = checkpoint_text.format(root=base64.b64encode(test_log.root(5)).decode())
    try:
        note = checkpoint.sign_note(text, test_log.seed, test_log.origin)
    except ValueError:
        note = text + "\n\u2014 x AAAAAAA=\n"
    assert (await post(witness_http, request_body(0, [], note))).status_code == 400


async def test_stale_old_size_is_409_with_the_latest_size(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    assert (await post(witness_http, test_log.submission(0, 20))).status_code == 200
    for old in (0, 10, 21):
        r = await post(witness_http, test_log.submission(old, 30))
        assert r.status_code == 409
        assert r.headers["content-type"] == "text/x.tlog.size"
        assert r.content == b"20\n"
    # learning the size and retrying succeeds
    assert (await post(witness_http, test_log.submission(20, 30))).status_code == 200


async def test_proof_that_does_not_verify_is_422(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    assert (await post(witness_http, test_log.submission(0, 20))).status_code == 200
    good = test_log.proof(20, 40)
    bad = [good[0], hashlib.sha256(b"x").digest(), *good[2:]]
    r = await post(witness_http, request_body(20, bad, test_log.note(40)))
    assert r.status_code == 422
    # a missing proof does not verify either
    r = await post(witness_http, request_body(20, [], test_log.note(40)))
    assert r.status_code == 422
    # nothing moved
    assert (await post(witness_http, test_log.submission(20, 40))).status_code == 200


async def test_proof_from_old_size_zero_must_be_empty(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    r = await post(witness_http, request_body(0, [test_log.root(1)], test_log.note(5)))
    assert r.status_code == 422


async def test_forked_tree_is_refused_with_422(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    assert (await post(witness_http, test_log.submission(0, 20))).status_code == 200
    forked = test_log.forked_leaves(5)
    note = test_log.note(40, root=test_log.root(40, forked))
    r = await post(witness_http, request_body(20, test_log.proof(20, 40, forked), note))
    assert r.status_code == 422


async def test_same_size_other_root_is_409(
    witness_http: httpx.AsyncClient, test_log: TestLog
) -> None:
    assert (await post(witness_http, test_log.submission(0, 20))).status_code == 200
    forked_root = test_log.root(20, test_log.forked_leaves(3))
    r = await post(witness_http, request_body(20, [], test_log.note(20, root=forked_root)))
    assert r.status_code == 409
    assert r.headers["content-type"] != "text/x.tlog.size"
    # the same checkpoint again is cosigned again (equal sizes, equal roots, empty proof)
    assert (await post(witness_http, test_log.submission(20, 20))).status_code == 200


async def test_oversized_submission_is_413(witness_http: httpx.AsyncClient) -> None:
    r = await post(witness_http, b"old 0\n" + b"A" * (1024 * 1024 + 1))
    assert r.status_code == 413


async def test_refusals_are_logged_and_inconsistent_checkpoints_kept_as_evidence(
    witness_app: FastAPI,
    witness_http: httpx.AsyncClient,
    test_log: TestLog,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert (await post(witness_http, test_log.submission(0, 20))).status_code == 200
    forked = test_log.forked_leaves(5)
    body = request_body(
        20, test_log.proof(20, 40, forked), test_log.note(40, root=test_log.root(40, forked))
    )
    same_size_fork = request_body(20, [], test_log.note(20, root=test_log.root(20, forked)))
    with caplog.at_level(logging.INFO, logger="refgate.witness"):
        assert (await post(witness_http, body)).status_code == 422
        assert (await post(witness_http, same_size_fork)).status_code == 409
        assert (await post(witness_http, test_log.submission(0, 30))).status_code == 409
        assert (await post(witness_http, TestLog("nobody.example/x").submission(0, 1))).status_code
    refusals = [r for r in caplog.records if r.getMessage().startswith("refused checkpoint")]
    assert len(refusals) == 4
    assert {getattr(r, "origin", None) for r in refusals} == {test_log.origin, "nobody.example/x"}
    assert [r.levelname for r in refusals[:2]] == ["ERROR", "ERROR"]
    engine = witness_app.state.witness.engine
    async with engine.connect() as conn:
        rows = (await conn.execute(select(store.refusal))).mappings().all()
    assert [(r["status"], r["reason"], r["old_size"], r["size"]) for r in rows] == [
        (422, "bad-consistency-proof", 20, 40),
        (409, "root-mismatch", 20, 20),
    ]
    assert rows[0]["submission"] == body.decode()


async def test_racing_submissions_one_wins_and_nothing_rolls_back(
    witness_config: WitnessConfig, test_log: TestLog
) -> None:
    """Two witness processes on one database (two apps, two engines), racing from
    the same old size: exactly one is cosigned, the other is told the winner's size."""
    a, b = create_witness_app(witness_config), create_witness_app(witness_config)
    async with a.router.lifespan_context(a), b.router.lifespan_context(b):
        ha = httpx.AsyncClient(transport=httpx.ASGITransport(app=a), base_url="http://a")
        hb = httpx.AsyncClient(transport=httpx.ASGITransport(app=b), base_url="http://b")
        async with ha, hb:
            assert (await post(ha, test_log.submission(0, 8))).status_code == 200
            old = 8
            for round_ in range(6):
                small, large = old + 1 + round_, old + 4 + round_
                ra, rb = await asyncio.gather(
                    post(ha, test_log.submission(old, small)),
                    post(hb, test_log.submission(old, large)),
                )
                codes = sorted([ra.status_code, rb.status_code])
                assert codes == [200, 409], (ra.text, rb.text)
                winner = small if ra.status_code == 200 else large
                loser = rb if ra.status_code == 200 else ra
                assert loser.content == f"{winner}\n".encode()
                latest = await store.latest(a.state.witness.engine, test_log.origin)
                assert latest.size == winner
                old = winner


async def test_stale_state_cannot_advance(witness_app: FastAPI, test_log: TestLog) -> None:
    """The spec's race, step by step: A and B read size N; B stores N+K; A's store fails."""
    engine = witness_app.state.witness.engine
    origin = test_log.origin
    first = await store.latest(engine, origin)
    assert await store.advance(engine, origin, first, 8, test_log.root(8), test_log.note(8))
    seen_by_a = seen_by_b = await store.latest(engine, origin)
    assert await store.advance(engine, origin, seen_by_b, 12, test_log.root(12), "b")
    assert not await store.advance(engine, origin, seen_by_a, 10, test_log.root(10), "a")
    assert not await store.advance(engine, origin, first, 4, test_log.root(4), "rollback")
    assert (await store.latest(engine, origin)).size == 12
