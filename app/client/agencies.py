"""SDK methods of the task-force directory and its agencies' keys (mixed into ``RefgateClient``).

``agencies`` and ``agency`` return directory entries as served (what an
agency says about itself: never proof of anything). ``agency_key`` is the
only way the SDK gets a key to encrypt to or verify with: the kid and key the
signed key directory states (``app.client.transparency``), or, with
``verify_keys=False`` (tests that run no sequencer), a key merely checked
against its kid.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from app.client.errors import KeyTransparencyError
from app.client.http import ClientCore, expect
from app.client.results import Agency
from app.crypto import keys
from app.crypto.encoding import EncodingError, b64url_decode

__all__ = ["AgencyMethods"]


def _served_key(agency_id: str, use: str, entry: Mapping[str, Any]) -> tuple[str, bytes]:
    """(kid, key) of the one current ``use`` key of a directory entry, checked only
    against its kid (``verify_keys=False``)."""
    served = [
        k
        for k in entry.get("keys", [])
        if isinstance(k, dict) and k.get("use") == use and k.get("status") == "current"
    ]
    if len(served) != 1:
        raise KeyTransparencyError(f"agency {agency_id} has no single current {use} key")
    try:
        # a missing or non-string key is refused by b64url_decode as an EncodingError
        public = b64url_decode(served[0].get("public_key"), length=keys.KEY_SIZE)  # type: ignore[arg-type]
    except EncodingError:
        raise KeyTransparencyError(f"agency {agency_id}'s {use} key is malformed") from None
    if served[0].get("kid") != keys.kid(public):
        raise KeyTransparencyError(
            f"agency {agency_id}'s {use} key does not hash to its kid {served[0].get('kid')}"
        )
    return keys.kid(public), public


class AgencyMethods(ClientCore):
    """The task-force directory and the verified keys of its agencies."""

    async def agencies(self) -> list[Agency]:
        """The whole task-force directory (follows the cursors).

        Example::

            for a in await rc.agencies():   # Agency
                print(a.name, a.id, a.status, a.current_kid("enc"))
        """
        out: list[Agency] = []
        cursor: str | None = None
        while True:
            page = expect(
                await self._get_json("/v1/agencies", {"limit": 500, "cursor": cursor}),
                dict,
                "agency list",
            )
            out.extend(
                Agency.from_json(item) for item in expect(page.get("items"), list, "agency list")
            )
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    async def agency(self, agency_id: str) -> Agency:
        """One directory entry (unverified: keys are checked when they are used)."""
        return Agency.from_json(await self._get_json(f"/v1/agencies/{agency_id}"))

    async def agency_key(
        self,
        agency_id: str,
        use: Literal["enc", "sig"],
        *,
        entry: Agency | Mapping[str, Any] | None = None,
    ) -> tuple[str, bytes]:
        """(kid, raw public key) of an agency's current ``use`` key, as the signed key
        directory states it (``app.client.transparency``): raises
        :class:`AgencyKeyError` for a suspended agency or a kid the directory serves
        against the log, :class:`KeyTransparencyError` for a proof that does not
        verify. ``entry`` is the directory entry if the caller already fetched it.
        With ``verify_keys=False`` only the kid is checked against the key served."""
        if isinstance(entry, Agency):
            entry = entry.raw
        first: list[Mapping[str, Any]] = [entry] if entry is not None else []

        async def fetch() -> Mapping[str, Any]:
            return first.pop() if first else (await self.agency(agency_id)).raw

        if self.verify_keys:
            return await self.transparency.agency_key(agency_id, use, fetch)
        return _served_key(agency_id, use, await fetch())

    async def _check_own_keys(self) -> None:
        """Refuse to sign or be sealed to keys the log does not state as this agency's."""
        if self.verify_keys:
            own = self.key.agency_keys
            await self.transparency.own_keys(self.agency_id, own.enc_kid, own.sig_kid)
