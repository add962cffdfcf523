"""Alembic migrations (run with ``refgate-server migrate``)."""
