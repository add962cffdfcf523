"""Pure ASGI middleware: request ids, body size limit, security headers, access log."""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from traceback import extract_tb
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import (
    agency_var,
    client_request_id_var,
    client_var,
    problem_var,
    request_id_var,
)
from app.errors import PROBLEM_BASE, PROBLEM_JSON, problem_bytes

log = logging.getLogger("refgate.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
]


async def send_problem(
    send: Send,
    status: int,
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]] | None = None,
    close: bool = False,
) -> None:
    """Answer with a problem+json ``body`` (``app.errors.problem_bytes``) from ASGI code."""
    sent: list[Any] = [
        (b"content-type", PROBLEM_JSON.encode()),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    if close:
        sent.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": sent})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


@dataclass
class _Response:
    """What the middleware saw of the answer: its status (500 until one starts)."""

    status: int = 500
    started: bool = False


def _request_headers(scope: Scope) -> tuple[bytes | None, bytes | None]:
    """The X-Request-ID and Content-Length headers, each the last one sent (as
    ``dict(scope["headers"])`` would give), from one pass over the headers."""
    request_id = length = None
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            request_id = value
        elif name == b"content-length":
            length = value
    return request_id, length


def _client_request_id(incoming_raw: bytes | None) -> str | None:
    """The caller's X-Request-ID when it is well formed (kept apart from ours)."""
    incoming = (incoming_raw or b"").decode("latin-1")
    return incoming if _REQUEST_ID.match(incoming) else None


def _stamped(send: Send, request_id: str, response: _Response) -> Send:
    """``send`` that records the status and stamps the request id and security headers."""

    async def send_wrapper(message: Message) -> None:
        if message["type"] == "http.response.start":
            response.status = message["status"]
            response.started = True
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
            headers.append((b"x-request-id", request_id.encode()))
            # a route that sets its own policy (the console's pages) keeps it:
            # two CSP headers would both be enforced, and the API's forbids scripts
            own = {k.lower() for k, _ in headers}
            headers.extend(h for h in SECURITY_HEADERS if h[0] not in own)
            message = {**message, "headers": headers}
        await send(message)

    return send_wrapper


def _access_line(level: int, fields: dict[str, Any]) -> None:
    """``log.log(level, "request", extra=fields)`` from the caller, without its search
    of the stack for the caller (``Logger.findCaller``): the same record (the caller's
    file, line and function), through the same ``Logger.handle`` (filters, handlers)."""
    caller = sys._getframe(1)
    log.handle(
        log.makeRecord(
            log.name, level, caller.f_code.co_filename, caller.f_lineno, "request", (), None,
            caller.f_code.co_name, fields,
        )
    )


class RequestContextMiddleware:
    """Assigns a request id, enforces the body limit, adds security headers, logs one line.

    The log line carries method, route path, status, duration, request id, client
    and agency: never bodies, tokens or query strings.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.observe = observe  # metrics hook: (method, route template, status, seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP exchange: bind the request's context, answer (or refuse), log it.

        The request id is always the server's own; a caller's X-Request-ID is kept
        apart as client_request_id (DESIGN.md "Audit log"), so no caller can make
        two requests look like one in the log.
        """
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        incoming_id, declared = _request_headers(scope)
        token = request_id_var.set(request_id)
        client_token = client_request_id_var.set(_client_request_id(incoming_id))
        client_var.set(None)
        agency_var.set(None)
        problem_var.set(None)
        started = time.perf_counter()
        response = _Response()
        try:
            await self._answer(scope, receive, _stamped(send, request_id, response), request_id,
                               response, declared)
        finally:
            self._log(scope, request_id, response, time.perf_counter() - started)
            request_id_var.reset(token)
            client_request_id_var.reset(client_token)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        response: _Response,
        declared: bytes | None,
    ) -> None:
        """Refuse a declared oversize body or a NUL in the URL; else run the app with the
        body limit enforced while it reads."""
        if self._declares_too_much(declared):
            await self._reject(send, request_id)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await self._problem(
                send,
                400,
                "Bad Request",
                "NUL characters are not allowed in a URL",
                "bad-request",
                request_id,
            )
            return
        await self._run(scope, self._limited(receive), send, request_id, response)

    def _declares_too_much(self, declared: bytes | None) -> bool:
        if declared is None:
            return False
        try:
            return int(declared) > self.max_body_bytes
        except ValueError:
            return False

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises ``_TooLarge`` once the body passes the limit."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge
            return message

        return limited_receive

    async def _run(
        self, scope: Scope, receive: Receive, send: Send, request_id: str, response: _Response
    ) -> None:
        """The app, with its failures answered here: 413, a client gone (499), or 500."""
        try:
            await self.app(scope, receive, send)
        except _TooLarge:
            if not response.started:
                await self._reject(send, request_id)
        except ClientDisconnect:
            response.status = 499  # the client went away; nothing to answer
        except Exception as exc:
            # Rendered here rather than by Starlette's outermost handler, so the
            # answer carries the request id and security headers like any other.
            frames = [f"{f.filename}:{f.lineno}" for f in extract_tb(exc.__traceback__)]
            log.error(
                "unhandled error",
                # where, not what: exception messages may quote SQL parameters
                extra={"exc_type": type(exc).__name__, "where": frames[-8:]},
            )
            if not response.started:
                await self._problem(
                    send,
                    500,
                    "Internal Server Error",
                    "an unexpected error occurred; it has been logged",
                    "internal",
                    request_id,
                )

    def _log(self, scope: Scope, request_id: str, response: _Response, seconds: float) -> None:
        """The access log line and the metrics observation."""
        route_path = getattr(scope.get("route"), "path", None) or "unmatched"
        status = response.status
        # 4xx at warning and 5xx at error, so an operator sees which partner
        # is failing and why (the problem type; never a token or key)
        level = (
            logging.ERROR if status >= 500
            else logging.WARNING if status >= 400
            else logging.INFO
        )
        if log.isEnabledFor(level):  # as log.log: no record (nor context reads) below it
            _access_line(level, {
                "request_id": request_id,
                "client_request_id": client_request_id_var.get(),
                "method": scope.get("method"),
                "route": route_path,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client_id": client_var.get(),
                "agency_id": agency_var.get(),
                "problem": problem_var.get(),
            })
        if self.observe is not None:
            self.observe(str(scope.get("method")), route_path, status, seconds)

    async def _reject(self, send: Send, request_id: str) -> None:
        await self._problem(
            send,
            413,
            "Content Too Large",
            f"request bodies are limited to {self.max_body_bytes} bytes",
            "payload-too-large",
            request_id,
            close=True,
        )

    @staticmethod
    async def _problem(
        send: Send,
        status: int,
        title: str,
        detail: str,
        slug: str,
        request_id: str,
        *,
        close: bool = False,
    ) -> None:
        problem_var.set(slug)
        body = problem_bytes(
            status, detail, PROBLEM_BASE + slug, title=title, request_id=request_id
        )
        await send_problem(send, status, body, close=close)
