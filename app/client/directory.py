"""SDK methods of the service directory (mixed into ``RefgateClient``).

``find_services`` searches the directory (one page; ``find_all_services``
follows the cursors); ``create_service``, ``replace_service``,
``delete_service`` and ``set_capacity`` manage the caller's own agency's
services; ``hsds`` exports the directory as Open Referral HSDS 3 JSON.
``resolve_agency`` turns what a caseworker types (an agency id, or the
beginning of an agency's name) into an agency id, refusing an unknown or
ambiguous name with a message that says how to find the right one.

Directory entries are what agencies say about themselves, relayed by the
server: use them to choose a recipient, never as proof of anything. Keys are
still verified against the audit log when a referral is sealed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from app.client.agencies import AgencyMethods
from app.client.results import Agency, Page

UNSET: Any = object()
"""``set_capacity(available=UNSET)`` leaves ``available`` as it is (None sets it unknown)."""


class AgencyNotFound(ValueError):
    """No agency has that id or a name that begins with the text given."""


class AmbiguousAgency(ValueError):
    """Several agencies' names begin with the text given."""

    def __init__(self, message: str, candidates: Sequence[Agency | Mapping[str, Any]]) -> None:
        super().__init__(message)
        self.candidates = candidates


def _hint(reference: str) -> str:
    return (f"find the agency with `refgate find --service SERVICE` or `refgate agencies`, "
            f"then give its id or more of its name than {reference!r}")


def _folded(text: str) -> str:
    return " ".join(text.split()).casefold()


A = TypeVar("A", Agency, Mapping[str, Any])


def _get(entry: Agency | Mapping[str, Any], key: str) -> str:
    value = getattr(entry, key) if isinstance(entry, Agency) else entry.get(key, "")
    return str(value)


def match_agency(reference: str, agencies: Sequence[A]) -> A:
    """The one directory entry ``reference`` names (an :class:`Agency`, or its JSON):
    an exact id, else an exact name, else the only name that begins with it
    (case-insensitive, spaces squeezed)."""
    wanted = _folded(reference)
    if not wanted:
        raise AgencyNotFound("an agency name or id is empty")
    for entry in agencies:
        if _get(entry, "id") == reference.strip():
            return entry
    exact = [a for a in agencies if _folded(_get(a, "name")) == wanted]
    if len(exact) == 1:
        return exact[0]
    found = exact or [a for a in agencies if _folded(_get(a, "name")).startswith(wanted)]
    if not found:
        raise AgencyNotFound(
            f"no agency is called {reference!r} or has that id; {_hint(reference)}"
        )
    if len(found) > 1:
        names = ", ".join(sorted(f"{_get(a, 'name')} ({_get(a, 'id')})" for a in found))
        raise AmbiguousAgency(
            f"{reference!r} could be any of {len(found)} agencies: {names}; {_hint(reference)}",
            found,
        )
    return found[0]


class DirectoryMethods(AgencyMethods):
    """The service directory half of ``RefgateClient`` (its requests: ``app.client.http``)."""

    async def find_services(
        self,
        *,
        category: str | None = None,
        language: str | None = None,
        population: str | None = None,
        accepting: str | None = None,
        q: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[dict[str, Any]]:
        """One page of ``GET /v1/directory/services`` (accepting first, freshest capacity)."""
        body = await self._get_json("/v1/directory/services", {
            "category": category, "language": language, "population": population,
            "accepting": accepting, "q": q, "limit": limit, "cursor": cursor,
        })
        return Page(items=list(body["items"]), next_cursor=body.get("next_cursor"))

    async def find_all_services(self, **filters: Any) -> list[dict[str, Any]]:
        """Every service matching ``filters`` (the arguments of ``find_services``)."""
        out: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = await self.find_services(**filters, limit=200, cursor=cursor)
            out.extend(page.items)
            cursor = page.next_cursor
            if not cursor:
                return out

    async def my_services(self) -> list[dict[str, Any]]:
        """The services this client's agency publishes."""
        return [s for s in await self.find_all_services() if s.get("agency") == self.agency_id]

    def _services_path(self, service_id: str | None = None) -> str:
        base = f"/v1/agencies/{self.agency_id}/services"
        return f"{base}/{service_id}" if service_id else base

    async def create_service(self, service: Mapping[str, Any]) -> dict[str, Any]:
        """Publish a service of this agency (no ``address``: the server refuses one)."""
        created: dict[str, Any] = (
            await self._request("POST", self._services_path(), json=dict(service))
        ).json()
        return created

    async def replace_service(
        self, service_id: str, service: Mapping[str, Any]
    ) -> dict[str, Any]:
        replaced: dict[str, Any] = (
            await self._request("PUT", self._services_path(service_id), json=dict(service))
        ).json()
        return replaced

    async def delete_service(self, service_id: str) -> None:
        await self._request("DELETE", self._services_path(service_id))

    async def set_capacity(
        self,
        service_id: str,
        *,
        accepting: str | None = None,
        available: int | None = UNSET,
        unit: str | None = None,
    ) -> dict[str, Any]:
        """Post capacity now; ``available=None`` says this agency does not count it."""
        body: dict[str, Any] = {}
        if accepting is not None:
            body["accepting"] = accepting
        if available is not UNSET:
            body["available"] = available
        if unit is not None:
            body["unit"] = unit
        if not body:
            raise ValueError("give accepting, available or unit")
        updated: dict[str, Any] = (
            await self._request("PATCH", self._services_path(service_id) + "/capacity", json=body)
        ).json()
        return updated

    async def hsds(self) -> dict[str, Any]:
        """The directory as Open Referral HSDS 3 JSON."""
        export: dict[str, Any] = await self._get_json("/v1/directory/hsds")
        return export

    async def resolve_agency(self, reference: str) -> str:
        """The id of the agency ``reference`` names (an id, or a unique name prefix);
        :class:`AgencyNotFound` or :class:`AmbiguousAgency` otherwise."""
        return match_agency(reference, await self.agencies()).id
