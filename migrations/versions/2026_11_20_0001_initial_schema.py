"""Initial schema: directory, referrals, append-only audit log.

Revision ID: 0001
Revises: 
Create Date: 2026-11-20 23:19:25.705257
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
import sqlmodel
from alembic import op

import app.models.types
from migrations import append_only

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('agency',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('audit_checkpoint',
    sa.Column('tree_size', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('root', sa.LargeBinary(length=32), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tree_size')
    )
    op.create_table('audit_event',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('event_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('ts', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('actor_agency', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('subject_agency', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=True),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('canonical', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_action', ['action', 'id'], unique=False)
        batch_op.create_index('ix_audit_event_actor', ['actor', 'id'], unique=False)
        batch_op.create_index('ix_audit_event_agency', ['actor_agency', 'id'], unique=False)
        batch_op.create_index('ix_audit_event_resource', ['resource_id', 'id'], unique=False)
        batch_op.create_index('ix_audit_event_subject_agency', ['subject_agency', 'id'], unique=False)
        batch_op.create_index('ix_audit_event_ts', ['ts'], unique=False)

    op.create_table('audit_leaf',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('event_id', sa.BigInteger(), nullable=False),
    sa.Column('leaf_hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('seq'),
    sa.UniqueConstraint('event_id')
    )
    op.create_table('audit_node',
    sa.Column('level', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('idx', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.LargeBinary(length=32), nullable=False),
    sa.PrimaryKeyConstraint('level', 'idx')
    )
    op.create_table('audit_pending',
    sa.Column('event_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('audit_tree_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('root', sa.LargeBinary(length=32), nullable=False),
    sa.Column('updated_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('idempotency_record',
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
    sa.Column('request_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('response_json', sa.Text(), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'key')
    )
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_idempotency_record_created_at'), ['created_at'], unique=False)

    op.create_table('used_assertion',
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('jti', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('expires_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('client_id', 'jti')
    )
    with op.batch_alter_table('used_assertion', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_used_assertion_expires_at'), ['expires_at'], unique=False)

    op.create_table('agency_key',
    sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('agency_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('use', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
    sa.Column('public_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retired_at', app.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['agency_id'], ['agency.id'], ),
    sa.PrimaryKeyConstraint('kid')
    )
    with op.batch_alter_table('agency_key', schema=None) as batch_op:
        batch_op.create_index('ix_agency_key_agency_use', ['agency_id', 'use', 'status'], unique=False)

    op.create_table('api_client',
    sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('agency_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('auth_public_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('auth_kid', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agency_id'], ['agency.id'], ),
    sa.PrimaryKeyConstraint('client_id')
    )
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_client_agency_id'), ['agency_id'], unique=False)

    op.create_table('referral',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('sender_agency', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('sender_kid', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('received_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('urgency', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
    sa.Column('metadata_json', sa.Text(), nullable=False),
    sa.Column('manifest_json', sa.Text(), nullable=False),
    sa.Column('signature', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('withdrawn_at', app.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('purged_at', app.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['sender_agency'], ['agency.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('referral', schema=None) as batch_op:
        batch_op.create_index('ix_referral_sender_received', ['sender_agency', 'received_at'], unique=False)

    op.create_table('referral_field',
    sa.Column('referral_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('field', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('ciphertext', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'field')
    )
    op.create_table('referral_grant',
    sa.Column('referral_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('field', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('expires_at', app.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.Column('release_ref', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True),
    sa.Column('wrapped_key_sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('created_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', app.models.types.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'field', 'recipient')
    )
    with op.batch_alter_table('referral_grant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_referral_grant_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index('ix_referral_grant_recipient', ['recipient', 'referral_id'], unique=False)

    op.create_table('referral_recipient',
    sa.Column('referral_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('received_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('updated_at', app.models.types.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['recipient'], ['agency.id'], ),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'recipient')
    )
    with op.batch_alter_table('referral_recipient', schema=None) as batch_op:
        batch_op.create_index('ix_referral_recipient_inbox', ['recipient', 'received_at'], unique=False)

    op.create_table('wrapped_key',
    sa.Column('referral_id', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('field', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('recipient', sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
    sa.Column('kid', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('wrapped_key', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.ForeignKeyConstraint(['referral_id'], ['referral.id'], ),
    sa.PrimaryKeyConstraint('referral_id', 'field', 'recipient')
    )
    op.bulk_insert(
        sa.table(
            "audit_tree_state",
            sa.column("id", sa.Integer()),
            sa.column("size", sa.BigInteger()),
            sa.column("root", sa.LargeBinary()),
            sa.column("updated_at", app.models.types.UTCDateTime()),
        ),
        [{"id": 1, "size": 0, "root": hashlib.sha256(b"").digest(), "updated_at": datetime.now(UTC)}],
    )
    dialect = op.get_bind().dialect.name
    for statement in append_only.install(dialect):
        op.execute(statement)


def downgrade() -> None:
    for statement in append_only.drop(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table('wrapped_key')
    with op.batch_alter_table('referral_recipient', schema=None) as batch_op:
        batch_op.drop_index('ix_referral_recipient_inbox')

    op.drop_table('referral_recipient')
    with op.batch_alter_table('referral_grant', schema=None) as batch_op:
        batch_op.drop_index('ix_referral_grant_recipient')
        batch_op.drop_index(batch_op.f('ix_referral_grant_expires_at'))

    op.drop_table('referral_grant')
    op.drop_table('referral_field')
    with op.batch_alter_table('referral', schema=None) as batch_op:
        batch_op.drop_index('ix_referral_sender_received')

    op.drop_table('referral')
    with op.batch_alter_table('api_client', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_client_agency_id'))

    op.drop_table('api_client')
    with op.batch_alter_table('agency_key', schema=None) as batch_op:
        batch_op.drop_index('ix_agency_key_agency_use')

    op.drop_table('agency_key')
    with op.batch_alter_table('used_assertion', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_used_assertion_expires_at'))

    op.drop_table('used_assertion')
    with op.batch_alter_table('idempotency_record', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_idempotency_record_created_at'))

    op.drop_table('idempotency_record')
    op.drop_table('audit_tree_state')
    op.drop_table('audit_pending')
    op.drop_table('audit_node')
    op.drop_table('audit_leaf')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_ts')
        batch_op.drop_index('ix_audit_event_subject_agency')
        batch_op.drop_index('ix_audit_event_resource')
        batch_op.drop_index('ix_audit_event_agency')
        batch_op.drop_index('ix_audit_event_actor')
        batch_op.drop_index('ix_audit_event_action')

    op.drop_table('audit_event')
    op.drop_table('audit_checkpoint')
    op.drop_table('agency')
