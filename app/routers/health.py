from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from app import errors
from app.models.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="Liveness: the process answers", response_model=Health)
async def live() -> Health:
    return Health(status="ok")


@router.get(
    "/health/ready",
    summary="Readiness: the database answers",
    response_model=Health,
    responses=errors.responses(503),
)
async def ready(request: Request) -> Health:
    try:
        async with request.app.state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise errors.ServiceUnavailable("the database is not reachable") from exc
    return Health(status="ok")
