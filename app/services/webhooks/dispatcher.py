"""The dispatcher: claim due deliveries under a lease, sign and send them outside any
transaction, record each outcome only if the row is still the attempt it claimed;
exponential backoff with jitter, dead letter after ``max_attempts``."""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import nacl.exceptions
import nacl.secret
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from app import __version__
from app.config import Settings, WebhookSettings
from app.crypto.encoding import EncodingError
from app.dialect import is_postgres
from app.models.types import utcnow
from app.models.webhook_tables import Webhook, WebhookDelivery
from app.services.webhooks.signing import open_secret, signature_header
from app.services.webhooks.targets import TargetRefused, check_target
from app.vocab import DeliveryStatus

log = logging.getLogger("refgate.webhooks")
USER_AGENT = f"refgate-webhooks/{__version__}"
_rng = random.SystemRandom()


def backoff(attempt: int, settings: WebhookSettings) -> float:
    """Seconds before retry number ``attempt`` (1-based): exponential, capped, with
    "equal jitter" (a random point in the upper half) so that retries spread out."""
    delay = min(settings.backoff_cap, settings.backoff_base * 2.0 ** max(attempt - 1, 0))
    return delay / 2 + _rng.uniform(0, delay / 2)


def _lease(settings: WebhookSettings) -> timedelta:
    rounds = math.ceil(settings.batch_size / settings.concurrency)
    return timedelta(seconds=300 + rounds * (settings.timeout + 5))


@dataclass
class _Claimed:
    id: str
    attempts: int
    event_type: str
    payload: str
    url: str
    secret: str  # as stored (sealed) until dispatch_once opens it
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    webhook_id: str


@dataclass(frozen=True)
class _Result:
    claimed: _Claimed
    ok: bool
    status_code: int | None
    error: str | None


@dataclass
class DispatchReport:
    claimed: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0


async def _lease_due(db: AsyncSession, settings: WebhookSettings, now: datetime) -> list[str]:
    """Push the due pending deliveries' ``next_attempt_at`` forward by a lease (counting
    the attempt) and return their ids; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL."""
    due = (
        select(col(WebhookDelivery.id))
        .where(
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
            col(WebhookDelivery.next_attempt_at) <= now,
        )
        .order_by(col(WebhookDelivery.next_attempt_at))
        .limit(settings.batch_size)
    )
    if is_postgres(db, WebhookDelivery):
        due = due.with_for_update(skip_locked=True)
    leased = await db.execute(
        update(WebhookDelivery)
        .where(
            col(WebhookDelivery.id).in_(due.scalar_subquery()),
            col(WebhookDelivery.status) == DeliveryStatus.PENDING,
            col(WebhookDelivery.next_attempt_at) <= now,
        )
        .values(
            attempts=col(WebhookDelivery.attempts) + 1,
            last_attempt_at=now,
            next_attempt_at=now + _lease(settings),
        )
        .returning(col(WebhookDelivery.id))
        .execution_options(synchronize_session=False)
    )
    return list(leased.scalars().all())


async def _claim(
    maker: async_sessionmaker[AsyncSession], settings: WebhookSettings
) -> list[_Claimed]:
    """Lease the due deliveries (in a transaction of their own) with what sending needs."""
    now = utcnow()
    async with maker() as db, db.begin():
        ids = await _lease_due(db, settings, now)
        if not ids:
            return []
        rows = await db.execute(
            select(
                col(WebhookDelivery.id),
                col(WebhookDelivery.attempts),
                col(WebhookDelivery.event_type),
                col(WebhookDelivery.payload),
                col(Webhook.url),
                col(Webhook.secret),
                col(Webhook.previous_secret),
                col(Webhook.previous_secret_expires_at),
                col(Webhook.id),
            )
            .join(Webhook, col(Webhook.id) == col(WebhookDelivery.webhook_id))
            .where(col(WebhookDelivery.id).in_(ids))
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
        )
        return [_Claimed(*row) for row in rows]


async def _send(http: httpx.AsyncClient, settings: WebhookSettings, item: _Claimed) -> _Result:
    try:
        target = await check_target(item.url, settings)
    except TargetRefused as exc:
        return _Result(item, False, None, str(exc)[:200])
    body = item.payload.encode()
    now = utcnow()
    ts = int(now.timestamp())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": item.id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature_header(
            item.secret,
            item.previous_secret,
            item.previous_secret_expires_at,
            item.id,
            ts,
            body,
            now,
        ),
    }
    extensions: dict[str, Any] = {}
    if target.host_header is not None:
        headers["host"] = target.host_header
    if target.sni_hostname is not None and target.url.scheme == "https":
        extensions["sni_hostname"] = target.sni_hostname
    try:
        async with asyncio.timeout(settings.timeout):
            async with http.stream(
                "POST", target.url, content=body, headers=headers, extensions=extensions
            ) as response:
                code = response.status_code
    except TimeoutError:
        return _Result(item, False, None, "timed out")
    except httpx.HTTPError as exc:
        return _Result(item, False, None, f"{type(exc).__name__}: {exc}"[:200])
    if 200 <= code < 300:
        return _Result(item, True, code, None)
    return _Result(item, False, code, f"HTTP {code}")


async def _record(
    maker: async_sessionmaker[AsyncSession],
    settings: WebhookSettings,
    results: Sequence[_Result],
    report: DispatchReport,
) -> None:
    now = utcnow()
    async with maker() as db, db.begin():
        for r in results:
            values: dict[str, Any] = {
                "last_status_code": r.status_code,
                "last_error": r.error,
            }
            if r.ok:
                values.update(status=DeliveryStatus.DELIVERED, delivered_at=now)
                report.delivered += 1
            elif r.claimed.attempts >= settings.max_attempts:
                values.update(status=DeliveryStatus.DEAD)
                report.dead += 1
            else:
                values.update(
                    next_attempt_at=now + timedelta(seconds=backoff(r.claimed.attempts, settings))
                )
                report.retrying += 1
            # Only the attempt that was claimed may settle the row (a replay or a
            # delete in the meantime wins).
            await db.execute(
                update(WebhookDelivery)
                .where(
                    col(WebhookDelivery.id) == r.claimed.id,
                    col(WebhookDelivery.status) == DeliveryStatus.PENDING,
                    col(WebhookDelivery.attempts) == r.claimed.attempts,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )


async def dispatch_once(
    maker: async_sessionmaker[AsyncSession], settings: Settings, http: httpx.AsyncClient
) -> DispatchReport:
    """Claim the deliveries that are due, send them, record the outcomes."""
    cfg = settings.webhooks
    report = DispatchReport()
    claimed = await _claim(maker, cfg)
    report.claimed = len(claimed)
    if not claimed:
        return report
    sendable: list[_Claimed] = []
    unsendable: list[_Result] = []
    for item in claimed:
        try:
            item.secret = open_secret(settings, item.webhook_id, item.secret)
            if item.previous_secret is not None:
                item.previous_secret = open_secret(settings, item.webhook_id, item.previous_secret)
        except (nacl.exceptions.CryptoError, EncodingError, UnicodeDecodeError):
            # another server's key, or a sealed secret moved between rows: never send unsigned
            log.error("webhook signing secret does not open", extra={"webhook": item.webhook_id})
            unsendable.append(_Result(item, False, None, "the signing secret does not open"))
            continue
        sendable.append(item)
    gate = asyncio.Semaphore(cfg.concurrency)

    async def one(item: _Claimed) -> _Result:
        async with gate:
            return await _send(http, cfg, item)

    results = [*await asyncio.gather(*(one(c) for c in sendable)), *unsendable]
    await _record(maker, cfg, results, report)
    return report


def http_client(settings: WebhookSettings) -> httpx.AsyncClient:
    """The dispatcher's client: bounded timeouts, no redirects, no proxies from the env."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.timeout),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=settings.concurrency * 2),
    )
