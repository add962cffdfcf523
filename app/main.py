"""Application factory and lifespan.

The lifespan builds what the process shares (engine, sessions, server keys, the
audit sequencer) and disposes of it on shutdown. ``create_app(settings)`` lets
tests and the benchmark build isolated apps.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__, errors
from app.config import Settings, get_settings
from app.context import problem_var, request_id_var
from app.db import create_engine, read_sessionmaker, sessionmaker
from app.logging import configure_logging
from app.metrics import Metrics
from app.middleware import RequestContextMiddleware
from app.ratelimit import RateLimiter, RateLimitMiddleware
from app.routers import agencies, audit, directory, health, oauth, referrals, webhooks
from app.routers import console as console_route
from app.routers import metrics as metrics_route
from app.routers.hot import HotLane
from app.services.audit import GroupCommit
from app.services.sequencer import SequencerRunner
from app.services.server_keys import load_server_keys
from app.services.webhooks import WebhookRunner
from app.services.witnesses import WitnessRunner
from app.tokens import token_key_set

log = logging.getLogger("refgate")


def _problem(
    status: int,
    title: str,
    detail: str,
    type_: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    request: Request | None = None,
) -> JSONResponse:
    problem_var.set(type_.rsplit("/", 1)[-1])
    members: dict[str, Any] = {"request_id": request_id_var.get()}
    if request is not None:
        members["instance"] = request.url.path
    members.update(extra or {})
    body = errors.problem(status, detail, type_, title=title, **members)
    return JSONResponse(body, status_code=status, headers=headers, media_type=errors.PROBLEM_JSON)


async def _app_error(request: Request, exc: errors.AppError) -> JSONResponse:
    status = errors.status_of(exc)
    extra = dict(exc.extra)
    if isinstance(exc, errors.OAuthError):
        extra.update(error=exc.error, error_description=exc.detail)
    return _problem(
        status,
        errors.title_for(status) if isinstance(exc, errors.OAuthError) else exc.title,
        exc.detail,
        exc.type,
        headers=exc.headers,
        extra=extra,
        request=request,
    )


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, sa_exc.DBAPIError) and not _lost_database(exc):
        raise exc  # a statement the database refused: a bug, answered 500 by the middleware
    # the class only: a driver's message can quote the statement and its parameters
    log.error("database unavailable: %s", type(exc).__name__)
    return _problem(
        503,
        "Service Unavailable",
        "the gateway cannot reach its database right now; try again in a moment "
        "(a referral re-sent with the same id is not created twice)",
        errors.PROBLEM_BASE + "database-unavailable",
        headers={"Retry-After": "2"},
        request=request,
    )


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg"), "type": e.get("type")}
        for e in exc.errors()[:50]
    ]
    first = problems[0] if problems else {"loc": [], "msg": "invalid request"}
    return _problem(
        422,
        "Unprocessable Content",
        f"{'.'.join(first['loc'])}: {first['msg']}",
        errors.PROBLEM_BASE + "validation",
        extra={"errors": problems},
        request=request,
    )


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http")
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the
        # path; a path served by several routes allows all of theirs.
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request.app, request))}
    return _problem(
        exc.status_code,
        errors.title_for(exc.status_code),
        str(exc.detail),
        errors.PROBLEM_BASE + slug,
        headers=headers,
        request=request,
    )


def _install_error_handlers(app: FastAPI) -> None:
    """Every error answered as problem+json (OAuth errors keep their RFC 6749 members)."""
    app.exception_handler(errors.AppError)(_app_error)
    for kind in _DATABASE_UNAVAILABLE:
        app.add_exception_handler(kind, _database_unavailable)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)


def _database_unavailable_errors() -> tuple[type[Exception], ...]:
    """What a request meets when the database is down, restarting or out of connections:
    SQLAlchemy's wrappers, and what asyncpg raises while connecting (SQLAlchemy passes
    connection errors of the connect step through unwrapped)."""
    kinds: list[type[Exception]] = [sa_exc.DBAPIError, sa_exc.TimeoutError, ConnectionError]
    try:
        from asyncpg import exceptions as pg
    except ImportError:  # pragma: no cover (asyncpg comes with the server extra)
        return tuple(kinds)
    kinds += [pg.PostgresConnectionError, pg.CannotConnectNowError, pg.InterfaceError]
    return tuple(kinds)


_DATABASE_UNAVAILABLE = _database_unavailable_errors()


# SQLSTATE classes that say the server is unreachable, going down or starting up, or out
# of a resource, not that it refused the statement: connection exceptions (08), operator
# intervention (57P: admin or crash shutdown, cannot connect now), insufficient resources
# (53: too many connections, out of memory, disk full).
_UNAVAILABLE_SQLSTATES = ("08", "57P", "53")


def _lost_database(exc: sa_exc.DBAPIError) -> bool:
    """A DBAPI error that means the connection or the server went away (as opposed to a
    statement refused: a constraint, a syntax error), which a retry may get past.

    asyncpg's errors reach SQLAlchemy as the generic DBAPI ``Error`` unless they are a
    few known kinds, so "the database system is shutting down" while connecting during a
    restart is told apart by its SQLSTATE (it answered 500 before).
    """
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return (
        exc.connection_invalidated
        or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
        or (isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES))
    )


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    """Every method the OpenAPI document lists for the request's path."""
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = [
            (re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))),
             sorted(m.upper() for m in ops if m != "parameters"))
            for path, ops in app.openapi().get("paths", {}).items()
        ]
        app.state.allow_table = table
    return sorted({m for pattern, ms in table if pattern.fullmatch(request.url.path) for m in ms})


def _install_openapi(app: FastAPI) -> None:
    """Add the signed-body schemas (parsed from raw JSON, not by FastAPI) and make
    every error response a problem+json schema."""
    from pydantic.json_schema import models_json_schema

    from app import openapi_docs
    from app.crypto.wire import Amendment, EnvelopeIn, StatusIn

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        _, defs = models_json_schema(
            [(EnvelopeIn, "validation"), (Amendment, "validation"), (StatusIn, "validation")],
            ref_template="#/components/schemas/{model}",
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(defs.get("$defs", {}))
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        schema["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        }
        problem = {"$ref": "#/components/schemas/Problem"}
        for route, path in schema.get("paths", {}).items():
            for operation in path.values():
                if route.startswith("/v1/"):
                    operation["security"] = [{"bearer": []}]
                for status, response in operation.get("responses", {}).items():
                    if status.startswith(("4", "5")):
                        response["content"] = {errors.PROBLEM_JSON: {"schema": problem}}
                        response.setdefault("description", errors.title_for(int(status)))
        openapi_docs.document(schema)  # descriptions and problem types (app/openapi_docs.py)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def log_risks(settings: Settings) -> None:
    """Name each risky setting at start, as a warning an operator sees (not in tests)."""
    for risk in settings.risks() if settings.env != "test" else []:
        logging.getLogger("refgate.config").warning("risky configuration: %s", risk)


def _open_state(app: FastAPI, settings: Settings) -> None:
    """What the process shares: the engine, its sessions, the server keys, the audit
    group commit (on a connection of its own)."""
    engine = create_engine(settings)
    server_keys = load_server_keys(settings)
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = sessionmaker(engine)
    # its own connection: reads waiting for their batch hold the main pool's
    app.state.audit_group_commit = group_commit = GroupCommit(create_engine(settings, pool_size=1))
    app.state.read_sessionmaker = read_sessionmaker(engine, group_commit)
    app.state.server_keys = server_keys
    app.state.token_verify_key = token_key_set(server_keys)
    app.state.issuer = settings.public_url or "refgate"


def _start_runners(app: FastAPI, settings: Settings) -> None:
    """The background runners (sequencer, webhook dispatcher, witness cosigner), each
    started only when enabled; all on ``app.state`` so that shutdown stops them."""
    engine, maker = app.state.engine, app.state.sessionmaker
    app.state.sequencer = SequencerRunner(engine, maker, settings, app.state.server_keys)
    if settings.audit.sequencer_enabled:
        app.state.sequencer.start()
    app.state.webhook_dispatcher = WebhookRunner(engine, maker, settings)
    if settings.webhooks.dispatcher_enabled:
        app.state.webhook_dispatcher.start()
    app.state.witness_runner = WitnessRunner(engine, maker, settings)
    if settings.audit.sequencer_enabled and settings.audit.witnesses:
        app.state.witness_runner.start()


async def _close_state(app: FastAPI) -> None:
    """Stop the runners, then close the limiter, the group commit and the engine."""
    await app.state.witness_runner.stop()
    await app.state.webhook_dispatcher.stop()
    await app.state.sequencer.stop()
    await app.state.rate_limiter.close()
    await app.state.audit_group_commit.close()
    await app.state.engine.dispose()


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_risks(settings)
        _open_state(app, settings)
        _start_runners(app, settings)
        try:
            yield
        finally:
            await _close_state(app)

    return lifespan


def _install_middleware(app: FastAPI, settings: Settings, registry: Metrics) -> None:
    """Outermost last: request id, headers and access log wrap CORS, which wraps the
    rate limiter, which wraps the hot routes' fast lane (``app.routers.hot``)."""
    limiter = RateLimiter(settings, on_refused=registry.rate_limited)
    app.state.rate_limiter = limiter
    app.add_middleware(HotLane, fastapi=app)
    app.add_middleware(RateLimitMiddleware, limiter=limiter)
    if settings.cors.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors.allow_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["authorization", "content-type", "idempotency-key", "x-request-id"],
            expose_headers=["x-request-id", "retry-after"],
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        observe=registry.observe,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging()
    app = FastAPI(
        title="refgate",
        version=__version__,
        summary="End-to-end encrypted interagency referrals with per-field consent "
        "and a tamper-evident audit log",
        lifespan=_lifespan(settings),
        docs_url=None,
        redoc_url=None,
    )
    _install_error_handlers(app)
    _install_openapi(app)
    for module in (health, oauth, agencies, directory, referrals, audit, webhooks):
        app.include_router(module.router)
    app.include_router(referrals.limits_router)
    app.include_router(metrics_route.router)
    app.include_router(console_route.router)
    app.state.metrics = registry = Metrics()
    _install_middleware(app, settings, registry)
    return app


def app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory app.main:app_from_env``."""
    return create_app()
