"""PostgreSQL: an audit event's query columns derived by one trigger, not nine expressions.

Each of the nine generated columns (``actor`` ... ``ts_leaf``) parsed ``canonical`` as
jsonb on its own: nine parses per event, about 0.05 ms of PostgreSQL's CPU for a read's
event (600 bytes) and 0.24 ms for a create's (3 KB, its grants listed), measured on a
copy of the schema (3,000 inserts each: 0.086 -> 0.038 ms and 0.32 -> 0.086 ms). Every
request writes an event, so this was paid by every route.

A ``BEFORE INSERT OR UPDATE`` trigger now parses ``canonical`` once and sets the nine
columns from it, whatever the statement gave them: they still say what the leaf says
(DESIGN.md "Queries cannot be bent"). The trigger is ``ENABLE ALWAYS`` (it still fires
under ``session_replication_role = replica``); an UPDATE that names a column gets the
leaf's value back instead of an error. Whoever can disable it (the table's owner, a
superuser: DDL) could as well have dropped the columns' expressions, so nobody gains a
way to bend a query. SQLite keeps its virtual generated columns (computed when read).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:20:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# (column, member of the canonical event object)
_COLUMNS = (
    ('actor', 'actor'),
    ('actor_agency', 'actor_agency'),
    ('subject_agency', 'subject_agency'),
    ('role', 'role'),
    ('action', 'action'),
    ('resource_type', 'resource_type'),
    ('resource_id', 'resource_id'),
    ('outcome', 'outcome'),
    ('ts_leaf', 'ts'),
)

_PG_DERIVE = (
    "CREATE OR REPLACE FUNCTION refgate_audit_columns() RETURNS trigger "
    "LANGUAGE plpgsql AS $$\n"
    "DECLARE leaf jsonb := NEW.canonical::jsonb;\n"
    "BEGIN\n"
    + "".join(f"  NEW.{column} := leaf ->> '{member}';\n" for column, member in _COLUMNS)
    + "  RETURN NEW;\n"
    "END\n"
    "$$"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    # DROP EXPRESSION keeps each column's values and indexes (no table rewrite)
    op.execute(
        'ALTER TABLE audit_event '
        + ', '.join(f'ALTER COLUMN {column} DROP EXPRESSION' for column, _ in _COLUMNS)
    )
    op.execute(_PG_DERIVE)
    op.execute(
        'CREATE TRIGGER audit_event_columns BEFORE INSERT OR UPDATE ON audit_event '
        'FOR EACH ROW EXECUTE FUNCTION refgate_audit_columns()'
    )
    op.execute('ALTER TABLE audit_event ENABLE ALWAYS TRIGGER audit_event_columns')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute('DROP TRIGGER IF EXISTS audit_event_columns ON audit_event')
    op.execute('DROP FUNCTION IF EXISTS refgate_audit_columns()')
    # a column cannot be made generated again in place: each is added anew (as 0005 did)
    lengths = {'actor': 64, 'actor_agency': 36, 'subject_agency': 36, 'role': 16,
               'action': 64, 'resource_type': 32, 'resource_id': 128, 'outcome': 8,
               'ts_leaf': 40}
    indexes = (
        ('ix_audit_event_actor', 'actor, ts_leaf, id'),
        ('ix_audit_event_agency', 'actor_agency, ts_leaf, id'),
        ('ix_audit_event_resource', 'resource_id, ts_leaf, id'),
        ('ix_audit_event_subject_agency', 'subject_agency, ts_leaf, id'),
        ('ix_audit_event_action', 'action, ts_leaf, id'),
        ('ix_audit_event_ts_leaf', 'ts_leaf, id'),
    )
    for name, _ in indexes:
        op.execute(f'DROP INDEX IF EXISTS {name}')
    for column, member in _COLUMNS:
        op.execute(f'ALTER TABLE audit_event DROP COLUMN {column}')
        op.execute(
            f"ALTER TABLE audit_event ADD COLUMN {column} varchar({lengths[column]}) "
            f"GENERATED ALWAYS AS ((canonical)::jsonb ->> '{member}') STORED"
        )
    for name, columns in indexes:
        op.execute(f'CREATE INDEX {name} ON audit_event ({columns})')
