"""Operator-proof audit log: key directory, generated query columns, a guarded queue.

- ``directory_entry`` (append-only): the history of every agency's directory
  leaf, written by the sequencer; ``audit_tree_state`` gains the directory's
  size and root at the current tree size. Backfilled from the key events
  already in the tree.
- The query columns of ``audit_event`` become generated from ``canonical``
  (STORED on PostgreSQL; VIRTUAL with indexes on SQLite, whose ALTER TABLE
  cannot add a STORED column), plus ``ts_leaf``, the leaf's own time.
- ``audit_pending``: a row may only be deleted once its event has a leaf
  (a trigger, ENABLE ALWAYS on PostgreSQL); on PostgreSQL the sequencer
  deletes through ``refgate_dequeue``, a SECURITY DEFINER function, so the
  deployment role needs no DELETE privilege on the queue (deploy/postgres/grants.sql).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 07:00:00.000000
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from app.crypto import keydir
from app.crypto.canonical import canonical_json
from migrations import append_only

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

# (column, leaf member, length)
_COLUMNS = (
    ('actor', 'actor', 64),
    ('actor_agency', 'actor_agency', 36),
    ('subject_agency', 'subject_agency', 36),
    ('role', 'role', 16),
    ('action', 'action', 64),
    ('resource_type', 'resource_type', 32),
    ('resource_id', 'resource_id', 128),
    ('outcome', 'outcome', 8),
    ('ts_leaf', 'ts', 40),
)
_INDEXES = (
    ('ix_audit_event_actor', 'actor'),
    ('ix_audit_event_agency', 'actor_agency'),
    ('ix_audit_event_resource', 'resource_id'),
    ('ix_audit_event_subject_agency', 'subject_agency'),
    ('ix_audit_event_action', 'action'),
)

_PG_QUEUE_GUARD = """
CREATE OR REPLACE FUNCTION refgate_queue_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM audit_leaf WHERE event_id = OLD.event_id) THEN
    RAISE EXCEPTION 'refgate: audit event % is not in the log yet; its queue entry stays',
      OLD.event_id USING ERRCODE = 'insufficient_privilege';
  END IF;
  RETURN OLD;
END
$$
"""

_PG_DEQUEUE = """
CREATE OR REPLACE FUNCTION refgate_dequeue(ids bigint[]) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = public, pg_temp AS $$
  WITH gone AS (
    DELETE FROM audit_pending p WHERE p.event_id = ANY(ids)
      AND EXISTS (SELECT 1 FROM audit_leaf l WHERE l.event_id = p.event_id)
    RETURNING 1)
  SELECT count(*)::integer FROM gone
$$
"""


def _generated_columns(dialect: str) -> None:
    for name, _ in _INDEXES:
        op.execute(f'DROP INDEX IF EXISTS {name}')
    for column, _, _ in _COLUMNS:
        if column != 'ts_leaf':
            op.execute(f'ALTER TABLE audit_event DROP COLUMN {column}')
    for column, member, length in _COLUMNS:
        if dialect == 'postgresql':
            op.execute(
                f"ALTER TABLE audit_event ADD COLUMN {column} varchar({length}) "
                f"GENERATED ALWAYS AS ((canonical)::jsonb ->> '{member}') STORED"
            )
        else:
            op.execute(
                f"ALTER TABLE audit_event ADD COLUMN {column} VARCHAR({length}) "
                f"GENERATED ALWAYS AS (json_extract(canonical, '$.{member}')) VIRTUAL"
            )
    for name, column in _INDEXES:
        op.execute(f'CREATE INDEX {name} ON audit_event ({column}, id)')
    op.execute('CREATE INDEX ix_audit_event_ts_leaf ON audit_event (ts_leaf)')


def _queue_guard(dialect: str) -> None:
    if dialect == 'postgresql':
        op.execute(_PG_QUEUE_GUARD)
        op.execute(
            'CREATE TRIGGER audit_pending_guard BEFORE DELETE ON audit_pending '
            'FOR EACH ROW EXECUTE FUNCTION refgate_queue_guard()'
        )
        op.execute('ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER audit_pending_guard')
        op.execute(
            'CREATE TRIGGER audit_pending_no_truncate BEFORE TRUNCATE ON audit_pending '
            'FOR EACH STATEMENT EXECUTE FUNCTION refgate_append_only()'
        )
        op.execute('ALTER TABLE audit_pending ENABLE ALWAYS TRIGGER audit_pending_no_truncate')
        op.execute(_PG_DEQUEUE)
        op.execute('REVOKE ALL ON FUNCTION refgate_dequeue(bigint[]) FROM PUBLIC')
    else:
        op.execute(
            'CREATE TRIGGER audit_pending_guard BEFORE DELETE ON audit_pending '
            'WHEN NOT EXISTS (SELECT 1 FROM audit_leaf WHERE event_id = OLD.event_id) BEGIN '
            "SELECT RAISE(ABORT, 'refgate: audit event is not in the log yet; "
            "its queue entry stays'); END"
        )


def _backfill_directory() -> None:
    """Fold the key events already in the tree into directory entries and the root."""
    bind = op.get_bind()
    rows = bind.execute(sa.text(
        "SELECT l.seq, e.canonical FROM audit_leaf l JOIN audit_event e ON e.id = l.event_id "
        "WHERE e.action IN ('agency:create', 'key:register', 'key:rotate', 'agency:suspend') "
        "ORDER BY l.seq"
    )).all()
    state: dict[str, dict[str, object]] = {}
    entries = []
    for seq, canonical in rows:
        agency = keydir.apply_event(state, int(seq), json.loads(canonical))
        if agency is not None:
            entries.append({
                'seq': int(seq), 'agency': agency,
                'leaf': canonical_json(state[agency]).decode('utf-8'),
            })
    if entries:
        op.bulk_insert(
            sa.table('directory_entry', sa.column('seq', sa.BigInteger()),
                     sa.column('agency', sa.String()), sa.column('leaf', sa.Text())),
            entries,
        )
    size, root = keydir.root_of(keydir.sorted_leaves(state))
    bind.execute(
        sa.text('UPDATE audit_tree_state SET directory_size = :n, directory_root = :r'),
        {'n': size, 'r': root},
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table('directory_entry',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('agency', sa.String(length=36), nullable=False),
    sa.Column('leaf', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_index('ix_directory_entry_agency', 'directory_entry', ['agency', 'seq'])
    with op.batch_alter_table('audit_tree_state') as batch_op:
        batch_op.add_column(sa.Column('directory_size', sa.BigInteger(), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('directory_root', sa.LargeBinary(length=32),
                                      nullable=True))
    _generated_columns(dialect)
    _backfill_directory()
    for statement in append_only.install(dialect, ('directory_entry',)):
        op.execute(statement)
    _queue_guard(dialect)


def downgrade() -> None:
    raise NotImplementedError("the generated audit columns are not turned back into plain ones")
