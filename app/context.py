"""Per-request context (request id, caller) for logs and audit events."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
client_var: ContextVar[str | None] = ContextVar("client_id", default=None)
agency_var: ContextVar[str | None] = ContextVar("agency_id", default=None)
# the problem type (its slug) of an error answer, for the access log line
problem_var: ContextVar[str | None] = ContextVar("problem", default=None)
