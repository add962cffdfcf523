"""SQL for the append-only triggers on the audit tables.

Kept beside the migrations that install it; the tamper tests use ``drop`` and
``install`` to bypass the triggers the way a database superuser could, and prove
the verifier still catches the edit.
"""

from __future__ import annotations

TABLES = ("audit_event", "audit_leaf", "audit_node", "audit_checkpoint")

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION refgate_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'refgate: % is append-only (% refused)', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$
"""


def install(dialect: str, tables: tuple[str, ...] = TABLES) -> list[str]:
    """Statements that make ``tables`` refuse UPDATE, DELETE (and TRUNCATE on PostgreSQL)."""
    out: list[str] = []
    if dialect == "postgresql":
        out.append(_PG_FUNCTION)
        for t in tables:
            out += [
                f"CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION refgate_append_only()",
                f"CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
                "FOR EACH STATEMENT EXECUTE FUNCTION refgate_append_only()",
                # ENABLE ALWAYS: still fires under session_replication_role = replica
                f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {t}_append_only",
                f"ALTER TABLE {t} ENABLE ALWAYS TRIGGER {t}_no_truncate",
            ]
    else:
        for t in tables:
            for op in ("UPDATE", "DELETE"):
                out.append(
                    f"CREATE TRIGGER {t}_no_{op.lower()} BEFORE {op} ON {t} BEGIN "
                    f"SELECT RAISE(ABORT, 'refgate: {t} is append-only ({op} refused)'); END"
                )
    return out


def drop(dialect: str, tables: tuple[str, ...] = TABLES) -> list[str]:
    out: list[str] = []
    for t in tables:
        if dialect == "postgresql":
            out += [
                f"DROP TRIGGER IF EXISTS {t}_append_only ON {t}",
                f"DROP TRIGGER IF EXISTS {t}_no_truncate ON {t}",
            ]
        else:
            out += [f"DROP TRIGGER IF EXISTS {t}_no_update", f"DROP TRIGGER IF EXISTS {t}_no_delete"]
    return out
