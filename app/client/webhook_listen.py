"""``refgate webhook listen``: a local endpoint that verifies and prints webhooks.

For development against a gateway that allows private targets
(``REFGATE_WEBHOOKS__ALLOW_PRIVATE_TARGETS=true``): subscribe
``http://127.0.0.1:<port>/`` and watch the events arrive. Each delivery is
checked with ``verify_webhook``; a valid one is answered 204 and printed as
``OK <webhook-id> <type> <data as JSON>``, an invalid one 400 and
``FAIL <webhook-id> <reason>`` (so the gateway retries it, as it would against
a real receiver).

The SDK installs without the server's web stack (no Starlette, no uvicorn), so
this is a small HTTP/1.1 receiver on ``asyncio.start_server``: one request per
connection (``Connection: close``), a ``Content-Length`` body of at most
1 MiB, POST on any path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import TextIO

from app.client.webhook_verify import WebhookVerificationError, verify_webhook

__all__ = ["WebhookReceiver", "build_server", "listen"]

MAX_BODY = 1 << 20
MAX_HEAD = 16 << 10
_REASONS = {204: "No Content", 400: "Bad Request", 405: "Method Not Allowed",
            413: "Content Too Large"}


class WebhookReceiver:
    """Verifies and prints each delivery; ``serve()`` runs until ``should_exit``."""

    def __init__(
        self, port: int, secret: str, out: TextIO, *, host: str = "127.0.0.1",
        tolerance: int = 300,
    ) -> None:
        self.host, self.port, self.secret, self.out = host, port, secret, out
        self.tolerance = tolerance
        self.started = False
        self._exit = asyncio.Event()

    @property
    def should_exit(self) -> bool:
        return self._exit.is_set()

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        """Setting it True stops ``serve()`` (from the same event loop)."""
        if value:
            self._exit.set()

    def _print(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def handle(self, method: str, headers: dict[str, str], body: bytes) -> int:
        """The status to answer a request with (and the line it prints)."""
        if method != "POST":
            return 405
        msg_id = headers.get("webhook-id", "-")
        try:
            payload = verify_webhook(self.secret, headers, body, self.tolerance)
        except (WebhookVerificationError, ValueError) as exc:
            self._print(f"FAIL {msg_id} {exc}")
            return 400
        data = json.dumps(payload.get("data"), separators=(",", ":"), sort_keys=True)
        self._print(f"OK {msg_id} {payload.get('type')} {data}")
        return 204

    async def _connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            status = await self._answer(reader)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            status = 400
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Length: 0\r\n"
                "Connection: close\r\n\r\n".encode("ascii")
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader) -> int:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return 400
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    return 400
                headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return 400
        if length < 0:
            return 400
        if length > MAX_BODY:
            return 413
        body = await reader.readexactly(length)
        return self.handle(parts[0], headers, body)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Accept connections (on ``sockets`` if given) until ``should_exit`` is set."""
        if sockets:
            server = await asyncio.start_server(
                self._connection, sock=sockets[0], limit=MAX_HEAD
            )
        else:
            server = await asyncio.start_server(
                self._connection, self.host, self.port, limit=MAX_HEAD
            )
        async with server:
            self.started = True
            await self._exit.wait()


def build_server(
    port: int, secret: str, out: TextIO, *, host: str = "127.0.0.1"
) -> WebhookReceiver:
    return WebhookReceiver(port, secret, out, host=host)


def listen(port: int, secret: str, out: TextIO, *, host: str = "127.0.0.1") -> int:
    """Serve until interrupted (Ctrl-C); returns the exit code."""
    server = build_server(port, secret, out, host=host)
    out.write(f"listening on http://{host}:{port}/ (Ctrl-C to stop)\n")
    out.flush()
    try:
        asyncio.run(server.serve())
    except KeyboardInterrupt:
        pass
    return 0
