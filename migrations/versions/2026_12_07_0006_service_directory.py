"""Service directory: agencies' services with live capacity, and the filter index.

``directory_term`` holds one row per (kind, value, service) for categories,
populations and language ranges: its primary key makes each filter one
indexed equality. ``ix_directory_service_order`` serves the search order
(accepting first, freshest capacity, id) and its cursor.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07 07:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.models.types import UTCDateTime

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table('directory_service',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('agency_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('categories', sa.Text(), nullable=False),
    sa.Column('languages', sa.Text(), nullable=False),
    sa.Column('populations', sa.Text(), nullable=False),
    sa.Column('eligibility', sa.Text(), nullable=True),
    sa.Column('service_area', sa.Text(), nullable=True),
    sa.Column('hours', sa.Text(), nullable=True),
    sa.Column('intake', sa.Text(), nullable=True),
    sa.Column('accepting', sa.String(length=16), nullable=False),
    sa.Column('accepting_rank', sa.Integer(), nullable=False),
    sa.Column('available', sa.Integer(), nullable=True),
    sa.Column('unit', sa.String(length=16), nullable=False),
    _ts('capacity_updated_at'),
    sa.Column('capacity_updated_by', sa.String(length=64), nullable=True),
    sa.Column('search_text', sa.Text(), nullable=False),
    _ts('created_at'),
    _ts('updated_at'),
    sa.ForeignKeyConstraint(['agency_id'], ['agency.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_directory_service_agency_id', 'directory_service', ['agency_id'])
    op.create_index('ix_directory_service_order', 'directory_service',
                    ['accepting_rank', 'capacity_updated_at', 'id'])
    op.create_table('directory_term',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('value', sa.String(length=64), nullable=False),
    sa.Column('service_id', sa.String(length=36), nullable=False),
    sa.ForeignKeyConstraint(['service_id'], ['directory_service.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('kind', 'value', 'service_id')
    )
    op.create_index('ix_directory_term_service', 'directory_term', ['service_id'])


def downgrade() -> None:
    op.drop_table('directory_term')
    op.drop_table('directory_service')
