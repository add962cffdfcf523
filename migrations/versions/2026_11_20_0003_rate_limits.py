"""Fixed-window rate-limit counters shared by every worker (``app.ratelimit``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-20 23:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('rate_limit',
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('window_start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('key', 'window_start')
    )
    with op.batch_alter_table('rate_limit', schema=None) as batch_op:
        batch_op.create_index('ix_rate_limit_window_start', ['window_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('rate_limit', schema=None) as batch_op:
        batch_op.drop_index('ix_rate_limit_window_start')
    op.drop_table('rate_limit')
