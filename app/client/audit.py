"""SDK methods of the audit log (mixed into ``RefgateClient``).

Events (one page, one event, an NDJSON/CSV export), checkpoints, inclusion
and consistency proofs as served, and the pinned view of the log:
``check_log``/``verified_checkpoint`` verify the latest checkpoint with the
pinned log key and against the pinned checkpoint, which then advances
(``app.client.transparency``). ``app.client.audit_verify`` checks the whole
log from outside the server (``refgate audit verify``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal

from app.client.http import ClientCore, raise_for, rfc3339
from app.client.results import Page
from app.crypto.checkpoint import Checkpoint

__all__ = ["AuditMethods"]


class AuditMethods(ClientCore):
    """The audit log: events, checkpoints, proofs, and the pins."""

    async def trusted_log_key(self) -> str:
        """The pinned log verifier key (pinned on first use when none was configured)."""
        return await self.transparency.log_key()

    async def check_log(self) -> Checkpoint:
        """Verify the latest checkpoint against the pins and advance them (every CLI
        command runs this first)."""
        return await self.transparency.checkpoint(fresh=True)

    async def audit_events(
        self,
        *,
        actor: str | None = None,
        agency: str | None = None,
        resource_id: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> Page[dict[str, Any]]:
        """One page of audit events, newest first (``{seq, event, leaf_hash}`` items)."""
        params = {
            "actor": actor,
            "agency": agency,
            "resource_id": resource_id,
            "action": action,
            "outcome": outcome,
            "limit": limit,
            "cursor": cursor,
            "since": rfc3339(since) if isinstance(since, datetime) else since,
            "until": rfc3339(until) if isinstance(until, datetime) else until,
        }
        body = await self._get_json("/v1/audit/events", params)
        return Page(items=body["items"], next_cursor=body.get("next_cursor"))

    async def audit_event(self, seq: int) -> dict[str, Any]:
        """One sequenced event ``{seq, event, leaf_hash}``."""
        result: dict[str, Any] = await self._get_json(f"/v1/audit/events/{seq}")
        return result

    async def checkpoint(self) -> str:
        """The latest signed checkpoint note, as served (verify it with ``open_checkpoint``)."""
        return (await self._request("GET", "/v1/audit/checkpoint")).text

    async def verified_checkpoint(self) -> Checkpoint:
        """The latest checkpoint, verified with the pinned log key and against the pin."""
        return await self.transparency.checkpoint(fresh=True)

    async def log_key(self) -> str:
        """The log verifier key the server publishes (not a trust anchor by itself)."""
        return (await self._request("GET", "/v1/audit/log-key")).text.strip()

    async def inclusion_proof(self, seq: int, tree_size: int | None = None) -> dict[str, Any]:
        """``{index, tree_size, hashes}`` (standard base64) for the event at ``seq``."""
        result: dict[str, Any] = await self._get_json(
            "/v1/audit/proof/inclusion", {"seq": seq, "tree_size": tree_size}
        )
        return result

    async def consistency_proof(self, first: int, second: int | None = None) -> dict[str, Any]:
        """``{first, second, hashes}`` (standard base64) between two tree sizes."""
        result: dict[str, Any] = await self._get_json(
            "/v1/audit/proof/consistency", {"first": first, "second": second}
        )
        return result

    async def export(
        self, format: Literal["ndjson", "csv"] = "ndjson", **filters: str | None
    ) -> AsyncIterator[bytes]:
        """Stream matching audit events in log order as NDJSON or CSV chunks."""
        params = {k: v for k, v in {"format": format, **filters}.items() if v is not None}
        async with self._http.stream("GET", "/v1/audit/export", params=params) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for(response)
            async for chunk in response.aiter_bytes():
                yield chunk
