"""PostgreSQL: a referral's rows refer to it without foreign keys; referrals are never deleted.

A new referral writes about 60 rows (8 fields, 3 recipients, 24 grants, 24 wrapped
keys) and each of them made PostgreSQL run a referential-integrity check against
``referral`` (a locking lookup of the referral's row per inserted row): about a
fifth of PostgreSQL's CPU per create (4.35 -> 3.47 ms per create transaction,
measured on a copy of the schema).

What those four keys (``referral_field``, ``referral_recipient``, ``referral_grant``,
``wrapped_key`` -> ``referral.id``) assured is assured otherwise:

- no child row without its referral at insert: create writes the referral and its
  rows in one statement, the rows selected FROM the referral's ``RETURNING`` (an id
  that exists already inserts nothing anywhere, ``app.services.referrals.store``);
  amend adds grants, keys and recipients to a referral it has read and locked;
- no referral removed under its rows: nothing in refgate deletes a referral
  (retention deletes fields and wrapped keys and marks the referral purged), and
  from this revision a trigger refuses DELETE and TRUNCATE on ``referral``
  (``ENABLE ALWAYS``), so the application's role cannot orphan rows either, where
  with the keys it could have deleted the children first.

Whoever can drop that trigger (the tables' owner, a superuser) could as well have
dropped the keys: nobody gains a way to orphan a referral's rows. SQLite keeps its
keys (its create is one statement per table, and its checks cost little).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 16:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_CHILDREN = ('referral_field', 'referral_recipient', 'referral_grant', 'wrapped_key')

_PG_KEEP_REFERRALS = """
CREATE OR REPLACE FUNCTION refgate_referral_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'refgate: referrals are never deleted (% refused)', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    op.execute(_PG_KEEP_REFERRALS)
    op.execute(
        'CREATE TRIGGER referral_kept BEFORE DELETE ON referral '
        'FOR EACH ROW EXECUTE FUNCTION refgate_referral_kept()'
    )
    op.execute(
        'CREATE TRIGGER referral_no_truncate BEFORE TRUNCATE ON referral '
        'FOR EACH STATEMENT EXECUTE FUNCTION refgate_referral_kept()'
    )
    # ENABLE ALWAYS: still fires under session_replication_role = replica
    op.execute('ALTER TABLE referral ENABLE ALWAYS TRIGGER referral_kept')
    op.execute('ALTER TABLE referral ENABLE ALWAYS TRIGGER referral_no_truncate')
    bind = op.get_bind()
    for table in _CHILDREN:
        keys = bind.execute(sa.text(
            "SELECT conname FROM pg_constraint WHERE contype = 'f' "
            "AND conrelid = CAST(:t AS regclass) AND confrelid = CAST('referral' AS regclass)"
        ), {'t': table}).scalars().all()
        for name in keys:
            op.execute(f'ALTER TABLE {table} DROP CONSTRAINT {name}')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table in _CHILDREN:
        op.execute(
            f'ALTER TABLE {table} ADD CONSTRAINT {table}_referral_id_fkey '
            'FOREIGN KEY (referral_id) REFERENCES referral (id)'
        )
    op.execute('DROP TRIGGER IF EXISTS referral_no_truncate ON referral')
    op.execute('DROP TRIGGER IF EXISTS referral_kept ON referral')
    op.execute('DROP FUNCTION IF EXISTS refgate_referral_kept()')
