"""Per-request context (request id, caller) for logs and audit events."""

from __future__ import annotations

from contextvars import ContextVar

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The server's own id of the request (a fresh UUID), recorded in audit events."""
client_request_id_var: ContextVar[str | None] = ContextVar("client_request_id", default=None)
"""The caller's ``X-Request-ID``, if well formed: kept apart, never trusted as ours."""
client_var: ContextVar[str | None] = ContextVar("client_id", default=None)
agency_var: ContextVar[str | None] = ContextVar("agency_id", default=None)
# the problem type (its slug) of an error answer, for the access log line
problem_var: ContextVar[str | None] = ContextVar("problem", default=None)
