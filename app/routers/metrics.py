"""``GET /metrics``: Prometheus text, only for the configured bearer secret (``app.metrics``).

Not an API route: it is left out of the OpenAPI document and out of the audit
log (a scrape touches no referral, consent, key or client).
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app import errors
from app.metrics import CONTENT_TYPE, Metrics
from app.tokens import bearer_token

router = APIRouter(include_in_schema=False)


@router.get("/metrics", summary="Prometheus metrics (bearer secret)")
async def metrics(request: Request) -> Response:
    secret = request.app.state.settings.metrics.token
    if secret is None:
        raise errors.NotFound("metrics are not enabled on this server")
    presented = bearer_token(request.headers.get("authorization"))
    expected = secret.get_secret_value().encode()
    if presented is None or not hmac.compare_digest(presented.encode(), expected):
        raise errors.Unauthorized("the metrics bearer token is required")
    registry: Metrics = request.app.state.metrics
    return Response(await registry.render(request.app.state.engine), media_type=CONTENT_TYPE)
