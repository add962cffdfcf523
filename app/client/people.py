"""CLI output for people: agency names instead of ids, plurals, verified key states.

The ``refgate`` commands show agencies by name (``--ids`` shows ids; ``--json``
always has the ids); ``refgate agencies`` shows each agency's current keys and
whether they verify against the signed key directory of the pinned checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from app.client.errors import VerificationError
from app.client.sdk import RefgateClient


def plural(n: int, one: str, many: str | None = None) -> str:
    """``1 agency``, ``2 agencies``, ``0 recipients``."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


Label = Callable[[str], str]


async def agency_labels(rc: RefgateClient, show_ids: bool) -> Label:
    """A function naming an agency id: its name (ids with ``--ids``); an agency the
    directory does not list (or one whose name is shared) keeps its id."""
    if show_ids:
        return lambda agency_id: agency_id
    entries = await rc.agencies()
    counts: dict[str, int] = {}
    for a in entries:
        counts[a.name] = counts.get(a.name, 0) + 1
    names = {a.id: (a.name if counts[a.name] == 1 else f"{a.name} ({a.id[:8]})")
             for a in entries}
    return lambda agency_id: names.get(agency_id, agency_id)


async def verified_agencies(rc: RefgateClient) -> list[dict[str, Any]]:
    """Every directory entry with ``enc_kid``, ``sig_kid`` and ``verified``: ``"yes"``
    when both current keys are the ones the pinned checkpoint's key directory
    states, else why not (a suspended agency's keys are not used, so not checked)."""
    out: list[dict[str, Any]] = []
    for entry in await rc.agencies():
        row = {**entry.to_json(), "enc_kid": entry.current_kid("enc") or "-",
               "sig_kid": entry.current_kid("sig") or "-"}
        if entry.status != "active":
            row["verified"] = "not checked (suspended)"
        else:
            try:
                for use in ("enc", "sig"):
                    kid, _ = await rc.agency_key(entry.id, use, entry=entry)
                    if kid != row[f"{use}_kid"]:
                        raise VerificationError(f"the directory serves {row[f'{use}_kid']}, "
                                                f"the log states {kid}")
                row["verified"] = "yes" if rc.verify_keys else "not checked (verify_keys off)"
            except VerificationError as exc:
                row["verified"] = f"NO: {exc}"
        out.append(row)
    return out


def names(label: Label, ids: Iterable[str]) -> str:
    return ", ".join(label(i) for i in ids)
