"""The server stores ciphertext only: known plaintext written through the API, and
every field name, is nowhere in the raw database (SQLite file and WAL, or a
PostgreSQL dump) nor in the logs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.crypto import envelope as env
from tests.rawdb import raw_database
from tests.taskforce import TaskForce, rfc3339

SECRETS = {
    "full_name": "Zephyrine Quillfeather-Okonkwo",
    "narrative": "Recruited in Tallinn by a man called Viktor Marchetti-Olawale",
    "contact": "+1-555-0199-7731 zqo-contact@example.invalid",
    "immigration_status": "Overstayed a seasonal-worker visa issued in Rotterdam",
    "xq_custom_intake_marker": "Quokkaberry rendezvous",
}
NOTE = "Safe-house intake at Larkspur Lane 88"


async def test_known_plaintext_and_field_names_never_reach_the_database_or_the_logs(
    app: Any,
    client: httpx.AsyncClient,
    tf: TaskForce,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    sealed = tf.sealed(
        "shelter",
        SECRETS,
        {f: {"legal": "service_provision", "police": "investigation"} for f in SECRETS},
    )
    body = sealed.body
    rid = body["manifest"]["referral_id"]
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    legal = await tf.headers("legal")
    read = (await client.get(f"/v1/referrals/{rid}", headers=legal)).json()
    opened = env.open_envelope(
        read,
        agency_id=tf["legal"].agency_id,
        enc_private=tf["legal"].keys.enc_private,
        sender_sig_public=tf["shelter"].keys.sig_public,
    )
    assert opened.fields == SECRETS
    note = env.seal_note(NOTE, tf["shelter"].keys.enc_public)
    status = env.sign_status(
        referral_id=rid, recipient=tf["legal"].agency_id, status="accepted", reason=None,
        note=note, signed_at=rfc3339(datetime.now(UTC)), sig_seed=tf["legal"].keys.sig_seed,
    )
    r = await client.post(f"/v1/referrals/{rid}/status", json=status, headers=legal)
    assert r.status_code == 200, r.text
    await tf.sequence()

    raw = await raw_database(settings)
    assert rid.encode() in raw  # the dump is real: routing data is there
    for fid in sealed.fids.values():
        assert fid.encode() in raw  # fields are stored, by their opaque ids
    logs = caplog.text.encode()
    for secret in [*SECRETS.values(), NOTE]:
        for form in (secret.encode("utf-8"), secret.encode("utf-16-le")):
            assert form not in raw, f"plaintext {secret!r} found in the database"
        for word in secret.split():
            if len(word) >= 8:
                assert word.encode() not in raw, f"a plaintext word {word!r} is in the database"
                assert word.encode() not in logs, f"a plaintext word {word!r} is in the logs"
    # the server never sees a field name: not in a row, an audit event, a webhook or a log
    for name in SECRETS:
        for form in (name.encode("utf-8"), name.encode("utf-16-le")):
            assert form not in raw, f"field name {name!r} found in the database"
        assert name.encode() not in logs, f"field name {name!r} found in the logs"
    # ciphertexts and wrapped keys are in the database, never in the logs or the audit events
    for ciphertext in body["ciphertexts"].values():
        assert ciphertext.encode() in raw
        assert ciphertext.encode() not in logs
    for wrapped in body["wrapped_keys"]:
        assert wrapped["wrapped_key"].encode() not in logs
