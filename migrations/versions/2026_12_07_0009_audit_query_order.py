"""Audit queries newest first by the event's time: indexes ``(column, ts_leaf, id)``.

``GET /v1/audit/events`` ordered by id, with one index ``(column, id)`` per
filter. A ``since``/``until`` window in the past then made PostgreSQL walk every
newer event of the filter before reaching the window (1.4 s for one agency's
week a year back in a log of 10,000,000 events). The list is now ordered by the
event's own time (``ts_leaf``, what its leaf says), then id, and each filter's
index is ``(column, ts_leaf, id)``, so a page is one backward range scan
whatever the window. ``ix_audit_event_ts`` (on the ``ts`` column) served no
query and is dropped: an index fewer for every event written.

On a large PostgreSQL log this rebuilds six indexes (minutes at 10,000,000
events, with audit writes waiting): plan it like any index rebuild.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 14:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

_BY_COLUMN = (
    ('ix_audit_event_actor', 'actor'),
    ('ix_audit_event_agency', 'actor_agency'),
    ('ix_audit_event_resource', 'resource_id'),
    ('ix_audit_event_subject_agency', 'subject_agency'),
    ('ix_audit_event_action', 'action'),
)


def upgrade() -> None:
    for name, column in _BY_COLUMN:
        op.execute(f'DROP INDEX IF EXISTS {name}')
        op.execute(f'CREATE INDEX {name} ON audit_event ({column}, ts_leaf, id)')
    op.execute('DROP INDEX IF EXISTS ix_audit_event_ts_leaf')
    op.execute('CREATE INDEX ix_audit_event_ts_leaf ON audit_event (ts_leaf, id)')
    op.execute('DROP INDEX IF EXISTS ix_audit_event_ts')


def downgrade() -> None:
    op.execute('CREATE INDEX ix_audit_event_ts ON audit_event (ts)')
    op.execute('DROP INDEX IF EXISTS ix_audit_event_ts_leaf')
    op.execute('CREATE INDEX ix_audit_event_ts_leaf ON audit_event (ts_leaf)')
    for name, column in _BY_COLUMN:
        op.execute(f'DROP INDEX IF EXISTS {name}')
        op.execute(f'CREATE INDEX {name} ON audit_event ({column}, id)')
