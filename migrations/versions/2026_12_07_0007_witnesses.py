"""Witness cosignatures of checkpoints and the state of each configured witness.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.models.types

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoint_cosignature',
    sa.Column('tree_size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('witness_vkey', sa.String(length=512), nullable=False),
    sa.Column('witness_name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('line', sa.Text(), nullable=False),
    sa.Column('timestamp', sa.BigInteger(), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tree_size'], ['audit_checkpoint.tree_size'], ),
    sa.PrimaryKeyConstraint('tree_size', 'witness_vkey')
    )
    op.create_table('witness_state',
    sa.Column('witness_vkey', sa.String(length=512), nullable=False),
    sa.Column('witness_name', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
    sa.Column('cosigned_size', sa.BigInteger(), nullable=True),
    sa.Column('cosigned_at', app.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('failures', sa.BigInteger(), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), nullable=False),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=True),
    sa.Column('next_attempt_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('witness_vkey')
    )


def downgrade() -> None:
    op.drop_table('witness_state')
    op.drop_table('checkpoint_cosignature')
