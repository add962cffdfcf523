-- refgate database roles: run ONCE per database, BEFORE the first migration.
--
--   psql -v ON_ERROR_STOP=1 -X -U postgres -d refgate \
--        -v owner_password="$OWNER_PW" -v app_password="$APP_PW" \
--        -f deploy/postgres/roles.sql
--
-- Connect to the refgate database itself (it must exist) as a superuser.
-- Safe to re-run: roles are created when missing, otherwise their attributes
-- and passwords are reset; grants and default privileges are idempotent.
--
-- Two roles, so that the process serving requests cannot change the schema
-- or the audit log's protections:
--
--   refgate_owner  owns the database and the public schema, hence every table,
--                  trigger and sequence the migrations create. Used only by
--                  `refgate-server migrate` and by grants.sql. Keep its
--                  password out of the running gateway.
--   refgate_app    the gateway's login (REFGATE_DATABASE_URL). Owns nothing,
--                  cannot create objects, cannot disable triggers (that needs
--                  ownership) and cannot set session_replication_role (that
--                  needs superuser), so the append-only triggers always fire.
--
-- Order of operations:
--   1. roles.sql   (this file, superuser, once; again only to reset passwords)
--   2. refgate-server migrate      (as refgate_owner)
--   3. grants.sql  (as refgate_owner or superuser) after EVERY migration run.
--
-- The default privileges below make tables created by later migrations usable
-- by refgate_app right away (SELECT, INSERT, UPDATE, DELETE), but they cannot
-- tell an append-only table from a mutable one: grants.sql narrows the four
-- audit tables to SELECT, INSERT and sets every other table's exact grants.
--
-- Passwords: hex or base64url (e.g. `openssl rand -hex 32`), so they can be
-- put in a database URL without percent-encoding. Passwords are sent to the
-- server in this statement; do not run it with log_statement = 'all' or 'ddl'.

\set ON_ERROR_STOP on

\if :{?owner_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'roles.sql: pass -v owner_password=...'; END $$;
\endif
\if :{?app_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'roles.sql: pass -v app_password=...'; END $$;
\endif

SELECT length(:'owner_password') >= 16 AND length(:'app_password') >= 16 AS refgate_passwords_ok
\gset
\if :refgate_passwords_ok
\else
DO $$ BEGIN RAISE EXCEPTION 'roles.sql: passwords must be at least 16 characters'; END $$;
\endif

SELECT 'CREATE ROLE refgate_owner'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'refgate_owner')
\gexec
SELECT 'CREATE ROLE refgate_app'
 WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'refgate_app')
\gexec

ALTER ROLE refgate_owner WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS INHERIT PASSWORD :'owner_password';
ALTER ROLE refgate_app WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS NOINHERIT PASSWORD :'app_password';

-- A transaction left open by a crashed request must not hold row locks (the
-- audit tree-state row in particular) forever.
ALTER ROLE refgate_app SET idle_in_transaction_session_timeout = '60s';

-- The owner role owns the database and the public schema.
SELECT format('ALTER DATABASE %I OWNER TO refgate_owner', current_database())
\gexec
ALTER SCHEMA public OWNER TO refgate_owner;

-- Nobody but the two roles connects; nobody but the owner creates objects
-- (PostgreSQL 15 already revokes CREATE on public from PUBLIC; older ones do not).
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database())
\gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO refgate_owner, refgate_app', current_database())
\gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON SCHEMA public FROM refgate_app;
GRANT USAGE ON SCHEMA public TO refgate_app;

-- Objects that refgate_owner creates from now on (i.e. by migrations).
ALTER DEFAULT PRIVILEGES FOR ROLE refgate_owner IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO refgate_app;
ALTER DEFAULT PRIVILEGES FOR ROLE refgate_owner IN SCHEMA public
  GRANT USAGE ON SEQUENCES TO refgate_app;
