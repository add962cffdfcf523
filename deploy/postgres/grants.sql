-- refgate table privileges: run AFTER EVERY `refgate-server migrate`.
--
--   psql -v ON_ERROR_STOP=1 -X -U refgate_owner -d refgate -f deploy/postgres/grants.sql
--
-- Run as refgate_owner (owner of the tables) or a superuser, after roles.sql
-- has created the roles. Plain SQL, no psql variables: any client can run it.
-- One transaction, so the gateway never sees a moment without its grants.
--
-- It sets the exact privileges of refgate_app on every table of the schema:
-- REVOKE ALL, then GRANT what the service needs. A table it does not list
-- (new migration, rename) keeps no privileges and is named in a warning:
-- update this file in the same change as the migration.
--
--   append-only (the audit trail and the key directory history; triggers
--   refuse UPDATE/DELETE/TRUNCATE, and the role cannot ask for them):
--                                              SELECT, INSERT
--   audit_pending (sequencer queue):           SELECT, INSERT (no DELETE: the
--     sequencer dequeues integrated events through refgate_dequeue(), a
--     SECURITY DEFINER function that only deletes rows whose event has a leaf,
--     so the deployment role cannot hold an event out of the log)
--   audit_tree_state (one row):                SELECT, UPDATE
--   checkpoint_cosignature (evidence):         SELECT, INSERT
--   alembic_version (read by the app only):    SELECT
--   everything else:                           SELECT, INSERT, UPDATE, DELETE
--
-- Note: SELECT ... FOR UPDATE needs UPDATE privilege, so the app can lock the
-- tree-state row but not rows of audit_pending or of the append-only tables.

\set ON_ERROR_STOP on

BEGIN;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM refgate_app;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM refgate_app;

-- Append-only.
GRANT SELECT, INSERT ON TABLE
  audit_event, audit_leaf, audit_node, audit_checkpoint, directory_entry
  TO refgate_app;

-- Queue: rows are added with their events; the sequencer removes them only once
-- integrated, through refgate_dequeue (migration 0005), never with DELETE.
GRANT SELECT, INSERT ON TABLE audit_pending TO refgate_app;
REVOKE ALL ON FUNCTION refgate_dequeue(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION refgate_dequeue(bigint[]) TO refgate_app;

-- Tree state: one row, locked and updated once per batch.
GRANT SELECT, UPDATE ON TABLE audit_tree_state TO refgate_app;

-- Witness cosignatures are evidence: stored once when they verify, never changed.
DO $$
BEGIN
  IF to_regclass('public.checkpoint_cosignature') IS NULL THEN
    RAISE NOTICE 'grants.sql: no table checkpoint_cosignature, skipped';
  ELSE
    GRANT SELECT, INSERT ON TABLE checkpoint_cosignature TO refgate_app;
  END IF;
END
$$;

-- Migrations are applied by refgate_owner; the app may only read the version.
GRANT SELECT ON TABLE alembic_version TO refgate_app;

-- Mutable state. A listed table that this schema version does not have yet
-- (or any more) is skipped with a notice; the audit tables above must exist.
DO $$
DECLARE
  t text;
BEGIN
  FOREACH t IN ARRAY ARRAY[
    'agency', 'agency_key', 'api_client', 'used_assertion',
    'referral', 'referral_field', 'referral_recipient', 'referral_grant', 'wrapped_key',
    'idempotency_record', 'webhook', 'webhook_delivery', 'rate_limit',
    'directory_service', 'directory_term', 'witness_state']
  LOOP
    IF to_regclass(format('public.%I', t)) IS NULL THEN
      RAISE NOTICE 'grants.sql: no table %, skipped', t;
    ELSE
      EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE public.%I TO refgate_app', t);
    END IF;
  END LOOP;
END
$$;

-- Identity / serial columns.
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO refgate_app;

-- Partitions (the audit log may be partitioned by month): a partition is a
-- table of its own and reachable directly, so it gets its parent's grants.
DO $$
DECLARE
  parent text;
  part regclass;
BEGIN
  FOREACH parent IN ARRAY ARRAY['audit_event', 'audit_leaf', 'audit_node', 'audit_checkpoint',
                                'directory_entry']
  LOOP
    FOR part IN
      SELECT relid FROM pg_catalog.pg_partition_tree(format('public.%I', parent)::regclass)
       WHERE relid <> format('public.%I', parent)::regclass
    LOOP
      EXECUTE format('REVOKE ALL ON TABLE %s FROM refgate_app', part);
      EXECUTE format('GRANT SELECT, INSERT ON TABLE %s TO refgate_app', part);
    END LOOP;
  END LOOP;
END
$$;

-- Refuse to commit if the append-only tables (or any partition of them) are
-- still writable by the app in any way, e.g. through a grant to PUBLIC, or if
-- the app could take an event out of the sequencing queue.
DO $$
DECLARE
  bad text;
BEGIN
  WITH audit(rel) AS (
    SELECT to_regclass(format('public.%I', t))
      FROM unnest(ARRAY['audit_event', 'audit_leaf', 'audit_node', 'audit_checkpoint',
                        'directory_entry', 'audit_pending']) AS t
  ), guarded(rel) AS (
    SELECT rel FROM audit
    UNION
    SELECT tree.relid FROM audit, pg_catalog.pg_partition_tree(audit.rel) AS tree
  )
  SELECT string_agg(format('%s %s', g.rel, p.priv), ', ')
    INTO bad
    FROM guarded g
    CROSS JOIN unnest(ARRAY['UPDATE', 'DELETE', 'TRUNCATE']) AS p(priv)
   WHERE has_table_privilege('refgate_app', g.rel, p.priv);
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'grants.sql: refgate_app can still modify the audit log (%)', bad;
  END IF;
END
$$;

-- Tables this file does not know: they kept no grants above. Say so.
DO $$
DECLARE
  unknown text;
BEGIN
  SELECT string_agg(c.relname, ', ' ORDER BY c.relname)
    INTO unknown
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = 'public'
     AND c.relkind IN ('r', 'p')
     AND NOT c.relispartition
     AND c.relname NOT IN (
       'audit_event', 'audit_leaf', 'audit_node', 'audit_checkpoint', 'directory_entry',
       'audit_pending', 'audit_tree_state', 'alembic_version',
       'agency', 'agency_key', 'api_client', 'used_assertion',
       'referral', 'referral_field', 'referral_recipient', 'referral_grant', 'wrapped_key',
       'idempotency_record', 'webhook', 'webhook_delivery', 'rate_limit',
       'checkpoint_cosignature', 'witness_state');
  IF unknown IS NOT NULL THEN
    RAISE WARNING 'grants.sql: refgate_app has no privileges on tables not listed here: %', unknown;
  END IF;
END
$$;

COMMIT;
