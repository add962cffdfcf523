"""``refgate webhook listen``: a local endpoint that verifies and prints webhooks.

For development against a gateway that allows private targets
(``REFGATE_WEBHOOKS__ALLOW_PRIVATE_TARGETS=true``): subscribe
``http://127.0.0.1:<port>/`` and watch the events arrive. Each delivery is
checked with ``verify_webhook``; a valid one is answered 204 and printed as
``OK <webhook-id> <type> <data as JSON>``, an invalid one 400 and
``FAIL <webhook-id> <reason>`` (so the gateway retries it, as it would against
a real receiver).
"""

from __future__ import annotations

import asyncio
import json
from typing import TextIO

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.client.webhook_verify import WebhookVerificationError, verify_webhook

__all__ = ["build_server", "listen", "receiver_app"]


def receiver_app(secret: str, out: TextIO, *, tolerance: int = 300) -> Starlette:
    """An ASGI app that accepts POST on any path, verifies and prints each delivery."""

    async def receive(request: Request) -> Response:
        body = await request.body()
        msg_id = request.headers.get("webhook-id", "-")
        try:
            payload = verify_webhook(secret, dict(request.headers), body, tolerance)
        except (WebhookVerificationError, ValueError) as exc:
            out.write(f"FAIL {msg_id} {exc}\n")
            out.flush()
            return Response(status_code=400)
        data = json.dumps(payload.get("data"), separators=(",", ":"), sort_keys=True)
        out.write(f"OK {msg_id} {payload.get('type')} {data}\n")
        out.flush()
        return Response(status_code=204)

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])


def build_server(
    port: int, secret: str, out: TextIO, *, host: str = "127.0.0.1"
) -> uvicorn.Server:
    config = uvicorn.Config(
        receiver_app(secret, out),
        host=host,
        port=port,
        lifespan="off",
        ws="none",
        access_log=False,
        log_level="warning",
        server_header=False,
    )
    return uvicorn.Server(config)


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
