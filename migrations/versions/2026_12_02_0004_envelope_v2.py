"""Envelope v2: referrals by opaque field ids with their disclosures; signed statuses.

No deployment holds v1 referrals (DESIGN.md retires v1), so the referral
tables are replaced rather than converted: v1 rows, if any, are dropped.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 19:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models.types import UTCDateTime

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

_TABLES = ('wrapped_key', 'referral_grant', 'referral_recipient', 'referral_field', 'referral')


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    for table in _TABLES:
        op.drop_table(table)
    op.create_table('referral',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('sender_agency', sa.String(length=36), nullable=False),
    sa.Column('sender_kid', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.String(length=40), nullable=False),
    _ts('received_at'),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('manifest_json', sa.Text(), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    _ts('withdrawn_at', True),
    _ts('purged_at', True),
    sa.ForeignKeyConstraint(['sender_agency'], ['agency.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_referral_sender_received', 'referral', ['sender_agency', 'received_at'])
    op.create_table('referral_field',
    sa.Column('referral_id', sa.String(length=36), nullable=False),
    sa.Column('fid', sa.String(length=32), nullable=False),
    sa.Column('disclosure', sa.Text(), nullable=False),
    sa.Column('ciphertext', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'fid')
    )
    op.create_table('referral_recipient',
    sa.Column('referral_id', sa.String(length=36), nullable=False),
    sa.Column('recipient', sa.String(length=36), nullable=False),
    _ts('received_at'),
    sa.Column('request', sa.Text(), nullable=False),
    sa.Column('request_json', sa.Text(), nullable=False),
    sa.Column('urgency', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.String(length=64), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('signed_at', sa.String(length=40), nullable=True),
    sa.Column('signature', sa.String(length=128), nullable=True),
    _ts('updated_at'),
    sa.ForeignKeyConstraint(['recipient'], ['agency.id'], ),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'recipient')
    )
    op.create_index('ix_referral_recipient_inbox', 'referral_recipient',
                    ['recipient', 'received_at'])
    op.create_table('referral_grant',
    sa.Column('referral_id', sa.String(length=36), nullable=False),
    sa.Column('fid', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=36), nullable=False),
    sa.Column('disclosure', sa.Text(), nullable=False),
    sa.Column('kid', sa.String(length=32), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    _ts('expires_at', True),
    _ts('created_at'),
    _ts('revoked_at', True),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'fid', 'recipient')
    )
    op.create_index('ix_referral_grant_expires_at', 'referral_grant', ['expires_at'])
    op.create_index('ix_referral_grant_recipient', 'referral_grant', ['recipient', 'referral_id'])
    op.create_table('wrapped_key',
    sa.Column('referral_id', sa.String(length=36), nullable=False),
    sa.Column('fid', sa.String(length=32), nullable=False),
    sa.Column('recipient', sa.String(length=36), nullable=False),
    sa.Column('kid', sa.String(length=32), nullable=False),
    sa.Column('wrapped_key', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'fid', 'recipient')
    )
    # idempotency records replay v1 response bodies: drop them with the v1 rows
    op.execute("DELETE FROM idempotency_record")


def downgrade() -> None:
    raise NotImplementedError("v1 referrals cannot be restored: Envelope v1 is retired")
