"""The hot routes' fast lane: their requests reach the endpoint without FastAPI's routing
and dependency solving.

FastAPI matches a request against every included router, then solves the route's
dependencies and validates its parameters: about a tenth of the CPU of an ``open`` and
more of a cheap route (``bench.micro``, issue 20). ``HotLane``, the innermost
middleware, answers the hot routes itself:

- it matches the request to the **same** route object (``scope["route"]``, which the
  access log, the metrics and the audit events read);
- it reads the parameters with the route's own rules, but only in their plain form
  (a canonical decimal, a listed value, a length within bounds, a parameter given
  once). Anything else goes to FastAPI, unchanged, which accepts it or answers 422
  as before: the fast lane never decides a refusal of its own;
- it runs the route's own ``Authed`` dependency (``app.auth.authenticated``: the
  transaction, the caller, the scopes, the route's check) and the route's own
  endpoint function, so no rule is restated here;
- an error is answered by the handler the app registered for it, after the
  transaction was rolled back, exactly as FastAPI's exception middleware does.

The response is sent only after the transaction committed, as with the
``scope="function"`` dependency of the FastAPI route.
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import Authed
from app.models.types import QueryTime
from app.routers import audit, directory, referrals
from app.services import directory as services
from app.vocab import Accepting, AuditAction, AuditOutcome, Population, Service, TaskStatus, Urgency

Convert = Callable[[str], object]  # raises ValueError: not the plain form, FastAPI decides
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_TOKEN = re.compile(r"[\x21-\x7e]+")
_QUERY_TIME: TypeAdapter[Any] = TypeAdapter(QueryTime)
_PREFIXES = ("/v1/referrals", "/v1/audit/", "/v1/directory/services")  # of LANES' routes


def _choice(values: type[Enum] | tuple[str, ...]) -> Convert:
    table = {str(v.value): v for v in values} if isinstance(values, type) else {
        v: v for v in values
    }

    def convert(raw: str) -> object:
        return table[raw]  # KeyError is a LookupError: caught as "not plain"

    return convert


def _integer(low: int, high: int) -> Convert:
    def convert(raw: str) -> int:
        if not _DECIMAL.fullmatch(raw) or not low <= int(raw) <= high:
            raise ValueError(raw)
        return int(raw)

    return convert


def _text(max_length: int) -> Convert:
    def convert(raw: str) -> str:
        if len(raw) > max_length:
            raise ValueError(raw)
        return raw

    return convert


def _token(max_length: int) -> Convert:
    """Printable ASCII without spaces, 1 to ``max_length`` characters."""

    def convert(raw: str) -> str:
        if len(raw) > max_length or not _TOKEN.fullmatch(raw):
            raise ValueError(raw)
        return raw

    return convert


def _absent_or(convert: Convert) -> Convert:
    """An empty value is an absent one (the directory's query parameters)."""

    def absent_or(raw: str) -> object:
        return None if raw == "" else convert(raw)

    return absent_or


def _time(raw: str) -> object:
    return _QUERY_TIME.validate_python(raw)  # pydantic's ValidationError is a ValueError


@dataclass(frozen=True)
class Lane:
    """One hot route: its endpoint and how to read its parameters in their plain form."""

    endpoint: Callable[..., typing.Awaitable[Response]]
    query: Mapping[str, tuple[Convert, object]]  # name -> (convert, default if absent)
    header: tuple[str, str, Convert] | None = None  # (header, parameter, convert)
    # the route's own sub-dependency, called with the parameters it takes
    compose: Callable[[dict[str, Any]], typing.Awaitable[None]] | None = None


_FILTER = ("actor", "agency", "resource_id", "action", "outcome", "since", "until")


async def _event_filter(kwargs: dict[str, Any]) -> None:
    """The audit query's filter, from the route's ``event_filter`` dependency."""
    kwargs["f"] = await audit.event_filter(**{name: kwargs.pop(name) for name in _FILTER})


LANES = (
    Lane(referrals.create_referral, {}, ("idempotency-key", "idempotency_key", _token(255))),
    Lane(
        referrals.list_referrals,
        {
            "box": (_choice(("sent", "received")), "received"),
            "status": (_choice(TaskStatus), None),
            "urgency": (_choice(Urgency), None),
            "since": (_time, None),
            "limit": (_integer(1, 200), 50),
            "cursor": (_text(256), None),
        },
    ),
    Lane(referrals.get_referral, {}),
    Lane(referrals.post_status, {}),
    Lane(
        audit.events,
        {
            "actor": (_text(64), None),
            "agency": (_text(36), None),
            "resource_id": (_text(128), None),
            "action": (_choice(AuditAction), None),
            "outcome": (_choice(AuditOutcome), None),
            "since": (_time, None),
            "until": (_time, None),
            "limit": (_integer(1, 1000), 100),
            "cursor": (_text(64), None),
        },
        compose=_event_filter,
    ),
    Lane(
        directory.search_services,
        {
            "category": (_absent_or(_choice(Service)), None),
            "language": (_text(63), None),
            "population": (_absent_or(_choice(Population)), None),
            "accepting": (_absent_or(_choice(Accepting)), None),
            "q": (_text(services.MAX_QUERY_LENGTH), None),
            "limit": (_integer(1, 200), 50),
            "cursor": (_text(512), None),
        },
    ),
    Lane(
        audit.inclusion,
        {
            "seq": (_integer(0, audit.MAX_INT64), ...),
            "tree_size": (_integer(1, audit.MAX_INT64), None),
        },
    ),
)


@dataclass(frozen=True)
class _Bound:
    """A lane joined to its route object and its ``Authed`` dependency."""

    lane: Lane
    route: APIRoute
    method: str
    authed: str  # the endpoint's parameter that takes the caller and transaction
    open_authed: Callable[[Request], typing.AsyncContextManager[Authed]]
    wants_request: bool


def _bind(lane: Lane, routes: list[APIRoute]) -> _Bound:
    route = next(r for r in routes if r.endpoint is lane.endpoint)
    hints = typing.get_type_hints(lane.endpoint, include_extras=True)
    authed = dependency = None
    for name, hint in hints.items():
        if typing.get_origin(hint) is Annotated and typing.get_args(hint)[0] is Authed:
            authed, dependency = name, typing.get_args(hint)[1].dependency
    if authed is None or dependency is None:
        raise TypeError(f"{lane.endpoint.__name__} takes no Authed dependency")
    (method,) = sorted(route.methods or ())  # one method per hot route
    return _Bound(
        lane, route, method, authed, asynccontextmanager(dependency), "request" in hints
    )


def _plain_arguments(
    bound: _Bound, request: Request, path_params: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The endpoint's parameters when every one is in its plain form, else None."""
    kwargs: dict[str, Any] = dict(path_params)
    query = request.query_params
    try:
        for name, (convert, default) in bound.lane.query.items():
            given = query.getlist(name)
            if len(given) > 1:
                return None
            if not given:
                if default is ...:
                    return None
                kwargs[name] = default
            else:
                kwargs[name] = convert(given[0])
        if bound.lane.header is not None:
            header, parameter, convert = bound.lane.header
            values = request.headers.getlist(header)
            if len(values) > 1:
                return None
            kwargs[parameter] = convert(values[0]) if values else None
    except (ValueError, LookupError):
        return None
    if bound.wants_request:
        kwargs["request"] = request
    return kwargs


ExceptionHandler = Callable[[Request, Exception], typing.Awaitable[Response]]


class HotLane:
    """Innermost middleware: the hot routes answered without FastAPI's routing and
    dependency solving; every other request, and any hot request not in its plain
    form, passes to FastAPI unchanged."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app = app
        self.fastapi = fastapi
        self._by_method: dict[str, list[_Bound]] | None = None

    def _lanes(self, method: str) -> list[_Bound]:
        if self._by_method is None:
            routes = [
                r for router in (referrals.router, audit.router, directory.router)
                for r in router.routes
                if isinstance(r, APIRoute)
            ]
            by_method: dict[str, list[_Bound]] = {}
            for lane in LANES:
                bound = _bind(lane, routes)
                by_method.setdefault(bound.method, []).append(bound)
            self._by_method = by_method
        return self._by_method.get(method, [])

    def _select(self, scope: Scope) -> tuple[_Bound, Scope] | None:
        """The hot route this request's method and path select, as Starlette's
        router would (the route's own ``matches``), and the scope it adds."""
        for bound in self._lanes(scope["method"]):
            match, child = bound.route.matches(scope)
            if match is Match.FULL:
                return bound, child
        return None

    def _handler(self, exc: Exception) -> ExceptionHandler | None:
        """The handler the app registered for ``exc``, as Starlette's exception
        middleware looks it up (by class, most specific first)."""
        handlers = self.fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers and cls is not Exception:
                return typing.cast(ExceptionHandler, handlers[cls])
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        selected = self._select(scope) if _candidate(scope) else None
        if selected is None:
            await self.app(scope, receive, send)
            return
        bound, child = selected
        request = Request(scope, receive, send)
        kwargs = _plain_arguments(bound, request, child["path_params"])
        if kwargs is None:
            await self.app(scope, receive, send)  # FastAPI reads it, and may refuse it
            return
        scope.update(child)  # the route, endpoint and path parameters, as the router sets
        try:
            if bound.lane.compose is not None:
                await bound.lane.compose(kwargs)
            async with bound.open_authed(request) as authed:
                kwargs[bound.authed] = authed
                response = await bound.lane.endpoint(**kwargs)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _candidate(scope: Scope) -> bool:
    """An HTTP request under a hot route's prefix, without OpenTelemetry (whose route
    name FastAPI's router sets)."""
    return (
        scope["type"] == "http"
        and "fastapi.telemetry" not in scope
        and scope["path"].startswith(_PREFIXES)
    )

