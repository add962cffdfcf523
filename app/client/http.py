"""The SDK's requests: one ``httpx.AsyncClient``, problem+json, retries.

:class:`ClientCore` is what every part of ``RefgateClient`` shares: the
authenticated client (``_http``), the key file, the agency and the key
transparency state (all set by ``RefgateClient.__init__``), and the helpers
that send a request and turn a 4xx/5xx answer into :class:`RefgateError`
(its ``problem`` is the RFC 9457 body, or one made up from the status line
when the answer is not JSON). Only :meth:`ClientCore._post_idempotent` retries:
a POST that carries an ``Idempotency-Key`` is tried three times on a network
error or 502/503/504, since the server answers a repeat like the first.

:class:`GatewayClient` is the ``httpx.AsyncClient`` whose network failures
name the server (:class:`ServerUnreachable`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from app.client.errors import RefgateError, ServerUnreachable, VerificationError

if TYPE_CHECKING:
    from app.client.keyfile import KeyFile
    from app.client.transparency import Transparency

__all__ = ["ClientCore", "GatewayClient", "expect", "problem_of", "raise_for", "rfc3339"]

_RETRYABLE = frozenset({502, 503, 504})


def problem_of(response: httpx.Response) -> dict[str, Any]:
    """The problem+json body of an error answer, or one made of its status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {
        "title": response.reason_phrase,
        "status": response.status_code,
        "detail": response.text[:300],
    }


def raise_for(response: httpx.Response) -> None:
    """Raise :class:`RefgateError` for a 4xx or 5xx answer."""
    if response.status_code >= 400:
        raise RefgateError(response.status_code, problem_of(response))


def rfc3339(moment: datetime) -> str:
    """``moment`` in UTC to the second, as the server writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def expect(value: object, kind: type, what: str) -> Any:
    """``value`` if it is a ``kind``; else the answer is malformed (:class:`VerificationError`)."""
    if not isinstance(value, kind):
        raise VerificationError(f"the server's answer is malformed: {what}")
    return value


class GatewayClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose network failures name the server (:class:`ServerUnreachable`)."""

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        try:
            return await super().send(request, **kwargs)
        except ServerUnreachable:
            raise
        except httpx.TransportError as exc:
            raise ServerUnreachable(str(self.base_url).rstrip("/"), exc) from exc


class ClientCore:
    """The state and request helpers every part of ``RefgateClient`` builds on."""

    key: KeyFile
    base_url: str
    agency_id: str
    client_id: str
    verify_keys: bool
    transparency: Transparency
    _http: httpx.AsyncClient

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        response = await self._http.request(method, path, json=json, params=clean, headers=headers)
        raise_for(response)
        return response

    async def _raw_get(self, path: str, params: Mapping[str, Any] | None) -> httpx.Response:
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        return await self._http.get(path, params=clean)

    async def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return (await self._request("GET", path, params=params)).json()

    async def _post_json(self, path: str, body: Any, **kwargs: Any) -> Any:
        return (await self._request("POST", path, json=body, **kwargs)).json()

    async def _post_idempotent(
        self, path: str, body: Mapping[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key}
        for attempt in range(3):
            try:
                response = await self._http.post(path, json=body, headers=headers)
            except httpx.TransportError:
                if attempt == 2:
                    raise
            else:
                if response.status_code not in _RETRYABLE or attempt == 2:
                    raise_for(response)
                    result: dict[str, Any] = response.json()
                    return result
            await asyncio.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")
