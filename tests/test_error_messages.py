"""Error messages say what happened and what to do (issue 18), each checked by its text."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from app.client.keyfile import KeyFile, KeyFileError
from app.crypto import envelope as env
from app.vocab import REASON_EXAMPLES
from tests.taskforce import TaskForce, rfc3339


def test_a_file_that_is_not_a_key_file_is_named_as_such_not_given_chmod_advice(
    tmp_path: Path,
) -> None:
    other = tmp_path / "notes.json"
    other.write_text(json.dumps({"hello": "world"}))
    os.chmod(other, 0o644)
    with pytest.raises(KeyFileError) as caught:
        KeyFile.load(other)
    assert "is not a refgate key file" in str(caught.value)
    assert "refgate keygen" in str(caught.value)
    assert "chmod" not in str(caught.value)


def test_a_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="refgate keygen --out FILE"):
        KeyFile.load(tmp_path / "nope.key.json")


async def test_an_invalid_reason_code_is_answered_with_examples_not_a_regex(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal("shelter", {"full_name": "Maria"}, {"full_name": {"legal": "service_provision"}})
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text
    rid = body["manifest"]["referral_id"]
    status = env.sign_status(
        referral_id=rid, recipient=tf["legal"].agency_id, status="rejected",
        reason="No Capacity!", note=None, signed_at=rfc3339(datetime.now(UTC)),
        sig_seed=tf["legal"].keys.sig_seed,
    )
    r = await client.post(f"/v1/referrals/{rid}/status", json=status,
                          headers=await tf.headers("legal"))
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "a reason code is 1 to 64 lower-case letters" in detail
    assert all(code in detail for code in REASON_EXAMPLES[:3])
    assert "^[a-z0-9" not in detail
