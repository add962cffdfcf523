"""The server stores ciphertext only: known plaintext written through the API is
nowhere in the raw database (SQLite file and WAL, or a PostgreSQL dump)."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.crypto import envelope as env
from tests.rawdb import raw_database
from tests.taskforce import TaskForce

SECRETS = {
    "full_name": "Zephyrine Quillfeather-Okonkwo",
    "narrative": "Recruited in Tallinn by a man called Viktor Marchetti-Olawale",
    "contact": "+1-555-0199-7731 zqo-contact@example.invalid",
}
NOTE = "Safe-house intake at Larkspur Lane 88"


async def test_known_plaintext_never_reaches_the_database_or_the_logs(
    app: Any,
    client: httpx.AsyncClient,
    tf: TaskForce,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = tf.seal(
        "shelter",
        SECRETS,
        {f: {"legal": "service_provision", "police": "investigation"} for f in SECRETS},
    )
    rid = body["manifest"]["referral_id"]
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    legal = await tf.headers("legal")
    read = (await client.get(f"/v1/referrals/{rid}", headers=legal)).json()
    assert (
        env.open_envelope(
            read,
            agency_id=tf["legal"].agency_id,
            enc_private=tf["legal"].keys.enc_private,
            sender_sig_public=tf["shelter"].keys.sig_public,
        )
        == SECRETS
    )
    note = env.seal_note(NOTE, tf["shelter"].keys.enc_public)
    r = await client.post(
        f"/v1/referrals/{rid}/status", json={"status": "accepted", "note": note}, headers=legal
    )
    assert r.status_code == 200, r.text
    await tf.sequence()

    raw = await raw_database(settings)
    assert rid.encode() in raw  # the dump is real: routing data is there
    logs = caplog.text.encode()
    for secret in [*SECRETS.values(), NOTE]:
        for form in (secret.encode("utf-8"), secret.encode("utf-16-le")):
            assert form not in raw, f"plaintext {secret!r} found in the database"
        for word in secret.split():
            if len(word) >= 8:
                assert word.encode() not in raw, f"a plaintext word {word!r} is in the database"
                assert word.encode() not in logs, f"a plaintext word {word!r} is in the logs"
    # ciphertexts and wrapped keys are in the database, never in the logs or the audit events
    for ciphertext in body["ciphertexts"].values():
        assert ciphertext.encode() not in logs
    for wrapped in body["wrapped_keys"]:
        assert wrapped["wrapped_key"].encode() not in logs
