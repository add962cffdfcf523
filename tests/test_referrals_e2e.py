"""The acceptance scenario of the referrals issue, end to end through HTTP."""

from __future__ import annotations

import httpx

from app.crypto import envelope as env
from tests.taskforce import TaskForce


def _open(tf: TaskForce, name: str, sender: str, body: dict) -> dict[str, str]:
    m = tf[name]
    return env.open_envelope(
        body,
        agency_id=m.agency_id,
        enc_private=m.keys.enc_private,
        sender_sig_public=tf[sender].keys.sig_public,
    )


async def test_consent_is_enforced_field_by_field_and_agency_by_agency(
    client: httpx.AsyncClient, tf: TaskForce
) -> None:
    body = tf.seal(
        "shelter",
        {"full_name": "Maria Example", "narrative": "She was recruited with a false job offer."},
        {
            "full_name": {"legal": "service_provision", "police": "investigation"},
            "narrative": {"legal": "service_provision"},
        },
    )
    rid = body["manifest"]["referral_id"]
    r = await client.post("/v1/referrals", json=body, headers=await tf.headers("shelter"))
    assert r.status_code == 201, r.text

    legal = (await client.get(f"/v1/referrals/{rid}", headers=await tf.headers("legal"))).json()
    assert _open(tf, "legal", "shelter", legal) == {
        "full_name": "Maria Example",
        "narrative": "She was recruited with a false job offer.",
    }

    police_h = await tf.headers("police", "liaison")
    police = (await client.get(f"/v1/referrals/{rid}", headers=police_h)).json()
    assert set(police["ciphertexts"]) == {"full_name"}
    assert {(w["field"], w["recipient"]) for w in police["wrapped_keys"]} == {
        ("full_name", tf["police"].agency_id)
    }
    assert _open(tf, "police", "shelter", police) == {"full_name": "Maria Example"}

    inbox = (await client.get("/v1/referrals?box=received", headers=police_h)).json()
    assert [i["referral_id"] for i in inbox["items"]] == [rid]

    r = await client.post(
        f"/v1/referrals/{rid}/revocations",
        json={"revocations": [{"field": "full_name", "recipient": tf["police"].agency_id}]},
        headers=await tf.headers("shelter"),
    )
    assert r.status_code == 200, r.text
    assert (await client.get(f"/v1/referrals/{rid}", headers=police_h)).status_code == 404
    inbox = (await client.get("/v1/referrals?box=received", headers=police_h)).json()
    assert inbox["items"] == []

    ngo_h = await tf.headers("ngo")
    for method, path in [
        ("GET", f"/v1/referrals/{rid}"),
        ("POST", f"/v1/referrals/{rid}/status"),
        ("POST", f"/v1/referrals/{rid}/withdraw"),
        ("POST", f"/v1/referrals/{rid}/revocations"),
    ]:
        payload = (
            {"status": "accepted"}
            if path.endswith("status")
            else (
                {"revocations": [{"field": "full_name", "recipient": tf["legal"].agency_id}]}
                if path.endswith("revocations")
                else None
            )
        )
        r = await client.request(method, path, json=payload, headers=ngo_h)
        assert r.status_code == 404, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"

    legal_h = await tf.headers("legal")
    r = await client.post(
        f"/v1/referrals/{rid}/status", json={"status": "accepted"}, headers=legal_h
    )
    assert r.status_code == 200, r.text
    sent = (await client.get("/v1/referrals?box=sent", headers=await tf.headers("shelter"))).json()
    statuses = {s["recipient"]: s["status"] for s in sent["items"][0]["statuses"]}
    assert statuses == {tf["legal"].agency_id: "accepted", tf["police"].agency_id: "requested"}

    assert await tf.sequence() > 0
