"""The SDK's retries never duplicate a referral (on SQLite and PostgreSQL).

A transport in front of the real app plays the network losing the answer after
the request reached the server; a sealed referral is posted again, and twice at
once: every answer is the first, and there is one referral.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from app.client.sdk import RefgateError, idempotency_key_for
from tests.client.test_sdk import CONSENT, FIELDS, REQUEST, MakeSdk, consent_ids, sdk
from tests.taskforce import TaskForce

__all__ = ["sdk"]


class LosesFirstAnswer(httpx.AsyncBaseTransport):
    """Forwards to the real app; the first ``POST /v1/referrals`` reaches it, and then
    the connection drops before the answer arrives."""

    def __init__(self, app: Any) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.posts: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path == "/v1/referrals":
            self.posts.append(request.headers.get("idempotency-key"))
            if len(self.posts) == 1:
                await response.aread()
                raise httpx.ReadError("connection reset after the request was sent")
        return response


async def test_a_lost_answer_and_repeated_posts_make_one_referral(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    network = LosesFirstAnswer(app)
    shelter = sdk("shelter", transport=network)
    recipients = {tf[r].agency_id: REQUEST for r in ("legal", "police")}
    sealed = await shelter.seal_referral(FIELDS, consent_ids(tf, CONSENT), recipients)

    first = await shelter.post_referral(sealed)  # retried inside after the lost answer
    assert network.posts == [idempotency_key_for(sealed.referral_id)] * 2
    assert first["referral_id"] == sealed.referral_id

    again, *racing = await asyncio.gather(*(shelter.post_referral(sealed) for _ in range(3)))
    assert again == first
    assert racing == [first, first]
    sent = await shelter.sent()
    assert [item.referral_id for item in sent.items] == [sealed.referral_id]


async def test_another_envelope_under_a_used_referral_id_is_refused(
    app: Any, tf: TaskForce, sdk: MakeSdk
) -> None:
    await tf.sequence()
    shelter = sdk("shelter")
    recipients = {tf["legal"].agency_id: REQUEST}
    consent = consent_ids(tf, {"full_name": {"legal": "service_provision"}})
    sealed = await shelter.seal_referral(FIELDS, consent, recipients)
    await shelter.post_referral(sealed)
    other = await shelter.seal_referral({"full_name": "Someone Else"}, consent, recipients)
    forged = type(sealed)(referral_id=sealed.referral_id, body=other.body, fids=other.fids,
                          expires_at=other.expires_at)
    with pytest.raises(RefgateError) as refused:
        await shelter.post_referral(forged)
    assert refused.value.status == 409
    assert "different request body" in refused.value.detail
