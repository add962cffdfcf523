"""Retention: delete what consent and the retention periods no longer allow.

A referral is purged when one of these held for its period
(``settings.retention``):

- *withdrawn*: the sender withdrew it ``withdrawn_days`` ago;
- *closed*: every recipient is ``completed``, ``failed`` or ``rejected``, the
  last of them for ``closed_days``;
- *expired*: no recipient holds an active grant any more, and the last grant
  expired or was revoked ``expired_days`` ago.

Purging deletes the referral's ciphertexts (``referral_field``) and every
wrapped key (the sender's too) and sets ``referral.purged_at``. The referral
row, its metadata, statuses, grants (as records of consent) and the audit log
stay. Independently of any period, the wrapped key of every expired grant is
deleted: an expired consent leaves no path to the field key on the server.

Each purge that deleted something is one ``retention:purge`` audit event with
the counts and the referral ids, in the same transaction as the deletions.

On SQLite the deletions run with ``secure_delete`` (freed pages are zeroed) and
the WAL is checkpointed and truncated afterwards, so the bytes leave the
database files. On PostgreSQL deleted tuples are reclaimed by (auto)vacuum;
the rows are gone from every query and every dump at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, and_, case, delete, exists, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlmodel import col

from app.config import Settings
from app.db import sessionmaker
from app.dialect import is_postgres
from app.models.tables import Referral, ReferralField, ReferralGrant, ReferralRecipient, WrappedKey
from app.models.types import utcnow
from app.services import audit
from app.services.audit import Action, Actor

CLOSED = ("completed", "failed", "rejected")


@dataclass
class PurgeReport:
    dry_run: bool
    referrals: int = 0
    withdrawn: int = 0
    closed: int = 0
    expired: int = 0
    fields: int = 0
    wrapped_keys: int = 0
    expired_grant_keys: int = 0
    referral_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _live() -> Any:
    return col(Referral.purged_at).is_(None)


async def _withdrawn(db: AsyncSession, cutoff: datetime, limit: int) -> list[str]:
    rows = await db.scalars(
        select(col(Referral.id))
        .where(
            _live(), col(Referral.withdrawn_at).is_not(None), col(Referral.withdrawn_at) <= cutoff
        )
        .order_by(col(Referral.withdrawn_at))
        .limit(limit)
    )
    return list(rows)


async def _closed(db: AsyncSession, cutoff: datetime, limit: int) -> list[str]:
    open_ = func.sum(case((col(ReferralRecipient.status).in_(CLOSED), 0), else_=1))
    last = func.max(col(ReferralRecipient.updated_at))
    rows = await db.scalars(
        select(col(ReferralRecipient.referral_id))
        .join(Referral, col(Referral.id) == col(ReferralRecipient.referral_id))
        .where(_live(), col(Referral.withdrawn_at).is_(None))
        .group_by(col(ReferralRecipient.referral_id))
        .having(open_ == 0, last <= cutoff)
        .order_by(last)
        .limit(limit)
    )
    return list(rows)


async def _expired(db: AsyncSession, now: datetime, cutoff: datetime, limit: int) -> list[str]:
    g = ReferralGrant
    active = and_(
        col(g.revoked_at).is_(None), or_(col(g.expires_at).is_(None), col(g.expires_at) > now)
    )
    ended = func.max(func.coalesce(col(g.revoked_at), col(g.expires_at)))
    rows = await db.scalars(
        select(col(g.referral_id))
        .join(Referral, col(Referral.id) == col(g.referral_id))
        .where(_live(), col(g.recipient) != col(Referral.sender_agency))
        .group_by(col(g.referral_id))
        .having(func.sum(case((active, 1), else_=0)) == 0, ended <= cutoff)
        .order_by(ended)
        .limit(limit)
    )
    return list(rows)


def _expired_key_condition(now: datetime) -> Any:
    """SQL condition: a wrapped key whose grant expired or was revoked."""
    g = ReferralGrant
    return exists().where(
        col(g.referral_id) == col(WrappedKey.referral_id),
        col(g.fid) == col(WrappedKey.fid),
        col(g.recipient) == col(WrappedKey.recipient),
        or_(
            col(g.revoked_at).is_not(None),
            and_(col(g.expires_at).is_not(None), col(g.expires_at) <= now),
        ),
    )


async def _count(db: AsyncSession, table: Any, condition: Any) -> int:
    return int(await db.scalar(select(func.count()).select_from(table).where(condition)) or 0)


async def _choose(db: AsyncSession, settings: Settings, now: datetime, report: PurgeReport) -> None:
    """Pick at most ``batch_size`` referrals due for purge (withdrawn, closed, consent
    expired: the first reason found counts), into ``report``."""
    cfg = settings.retention
    chosen: dict[str, str] = {}
    limit = cfg.batch_size
    for reason, ids in (
        ("withdrawn", await _withdrawn(db, now - timedelta(days=cfg.withdrawn_days), limit)),
        ("closed", await _closed(db, now - timedelta(days=cfg.closed_days), limit)),
        ("expired", await _expired(db, now, now - timedelta(days=cfg.expired_days), limit)),
    ):
        for rid in ids:
            if len(chosen) < limit:
                chosen.setdefault(rid, reason)
    report.referral_ids = sorted(chosen)
    report.referrals = len(chosen)
    for reason in chosen.values():
        setattr(report, reason, getattr(report, reason) + 1)


async def _count_what_would_go(db: AsyncSession, report: PurgeReport, stale_keys: Any) -> None:
    """The dry run: count the rows a purge would delete, change nothing."""
    ids = report.referral_ids
    if ids:
        report.fields = await _count(db, ReferralField, col(ReferralField.referral_id).in_(ids))
        report.wrapped_keys = await _count(db, WrappedKey, col(WrappedKey.referral_id).in_(ids))
    report.expired_grant_keys = await _count(
        db, WrappedKey, and_(stale_keys, col(WrappedKey.referral_id).not_in(ids))
    )


async def _delete(db: AsyncSession, report: PurgeReport, stale_keys: Any, now: datetime) -> None:
    """Delete the chosen referrals' fields and wrapped keys (marking them purged) and every
    wrapped key whose grant ended, counting the rows into ``report``."""
    ids = report.referral_ids
    if ids:
        # a DELETE's result is a CursorResult (AsyncSession.execute is typed as Result)
        report.fields = cast(
            CursorResult[Any],
            await db.execute(delete(ReferralField).where(col(ReferralField.referral_id).in_(ids))),
        ).rowcount
        report.wrapped_keys = cast(
            CursorResult[Any],
            await db.execute(delete(WrappedKey).where(col(WrappedKey.referral_id).in_(ids))),
        ).rowcount
        await db.execute(
            update(Referral)
            .where(col(Referral.id).in_(ids))
            .values(purged_at=now)
            .execution_options(synchronize_session=False)
        )
    report.expired_grant_keys = cast(
        CursorResult[Any], await db.execute(delete(WrappedKey).where(stale_keys))
    ).rowcount


async def purge(
    db: AsyncSession,
    settings: Settings,
    now: datetime | None = None,
    *,
    dry_run: bool = False,
    actor: Actor | None = None,
) -> PurgeReport:
    """Purge in the caller's transaction (flush only); ``dry_run`` changes nothing."""
    now = now or utcnow()
    report = PurgeReport(dry_run=dry_run)
    await _choose(db, settings, now, report)
    stale_keys = _expired_key_condition(now)
    if dry_run:
        await _count_what_would_go(db, report, stale_keys)
        return report
    if not is_postgres(db, Referral):
        await db.execute(text("PRAGMA secure_delete = ON"))
    await _delete(db, report, stale_keys, now)
    if report.referrals or report.expired_grant_keys:
        detail = report.as_dict()
        detail.pop("dry_run")
        await audit.record(
            db, actor or Actor.system(), Action.RETENTION_PURGE, "retention", None, detail=detail
        )
    return report


async def run(
    engine: AsyncEngine,
    settings: Settings,
    now: datetime | None = None,
    *,
    dry_run: bool = False,
    actor: Actor | None = None,
) -> PurgeReport:
    """One purge in its own transaction (the periodic job and ``refgate-server purge``)."""
    async with sessionmaker(engine)() as db, db.begin():
        report = await purge(db, settings, now, dry_run=dry_run, actor=actor)
    if not is_postgres(engine) and not dry_run and (
        report.referrals or report.expired_grant_keys
    ):
        await checkpoint_sqlite(engine)
    return report


async def checkpoint_sqlite(engine: AsyncEngine) -> None:
    """Copy the WAL into the database file and truncate it, so that the pages the
    purge zeroed replace the old ones and no older frame keeps the deleted bytes."""
    async with engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
