"""Write the console's vocabulary types, ``console/src/vocab.ts``, from ``app.vocab``.

``python -m app.vocab_ts`` (``./dev vocab``) rewrites the file; a test fails
when it is not current, so the console never offers a value the server refuses.
Every StrEnum of ``app.vocab`` is exported as a ``const`` tuple of its values
(declaration order) and a union type of them, plus the role → scopes and task
status transition tables.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from app import vocab

OUTPUT = Path(__file__).resolve().parent.parent / "console" / "src" / "vocab.ts"

NAMES: dict[type[StrEnum], tuple[str, str]] = {
    vocab.Service: ("SERVICES", "ServiceName"),
    vocab.Urgency: ("URGENCIES", "Urgency"),
    vocab.Purpose: ("PURPOSES", "Purpose"),
    vocab.Population: ("POPULATIONS", "Population"),
    vocab.Accepting: ("ACCEPTING", "Accepting"),
    vocab.CapacityUnit: ("CAPACITY_UNITS", "CapacityUnit"),
    vocab.AgencyKind: ("AGENCY_KINDS", "AgencyKind"),
    vocab.AgencyStatus: ("AGENCY_STATUSES", "AgencyStatus"),
    vocab.ClientStatus: ("CLIENT_STATUSES", "ClientStatus"),
    vocab.KeyUse: ("KEY_USES", "KeyUse"),
    vocab.KeyStatus: ("KEY_STATUSES", "KeyStatus"),
    vocab.Role: ("ROLES", "Role"),
    vocab.Scope: ("SCOPES", "Scope"),
    vocab.TaskStatus: ("TASK_STATUSES", "TaskStatus"),
    vocab.DeliveryStatus: ("DELIVERY_STATUSES", "DeliveryStatus"),
    vocab.AuditAction: ("AUDIT_ACTIONS", "AuditAction"),
    vocab.AuditOutcome: ("AUDIT_OUTCOMES", "AuditOutcome"),
}
"""Each enum's TypeScript names: the tuple of values and the union type."""


def enums() -> list[type[StrEnum]]:
    """Every StrEnum defined in ``app.vocab``, in declaration order."""
    return [
        v for v in vars(vocab).values()
        if isinstance(v, type) and issubclass(v, StrEnum) and v.__module__ == vocab.__name__
    ]


def _tuple(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "] as const"


def render() -> str:
    missing = [e.__name__ for e in enums() if e not in NAMES]
    if missing:
        raise SystemExit(f"app/vocab_ts.py: name the TypeScript export of {', '.join(missing)}")
    lines = [
        "// Generated from app/vocab.py by `python -m app.vocab_ts` (./dev vocab): do not edit.",
        "// tests/test_vocab_ts.py fails when this file is not current.",
        "",
    ]
    for enum in enums():
        const, type_name = NAMES[enum]
        lines.append(f"export const {const} = {_tuple([e.value for e in enum])};")
        lines.append(f"export type {type_name} = (typeof {const})[number];")
    postable = [s.value for s in vocab.POSTABLE_STATUSES]
    lines += [
        f"export const POSTABLE_STATUSES = {_tuple(postable)};",
        "export type PostableStatus = (typeof POSTABLE_STATUSES)[number];",
        f"export const SENDER_PURPOSE = {json.dumps(vocab.SENDER_PURPOSE)};",
        f"export const REASON_EXAMPLES = {_tuple(list(vocab.REASON_EXAMPLES))};",
        "",
        "/** The scopes each role's access tokens carry. */",
        "export const ROLE_SCOPES: Readonly<Record<Role, readonly Scope[]>> = {",
        *(f"  {json.dumps(r.value)}: {_tuple([s.value for s in scopes])}," for r, scopes in
          vocab.ROLE_SCOPES.items()),
        "};",
        "",
        "/** The statuses a recipient may post from each status (none from a final one). */",
        "export const TRANSITIONS: Readonly<Partial<Record<TaskStatus, readonly TaskStatus[]>>> ="
        " {",
        *(f"  {json.dumps(s.value)}: {_tuple([t.value for t in vocab.TaskStatus if t in nxt])},"
          for s, nxt in vocab.TRANSITIONS.items()),
        "};",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")  # noqa: T201


if __name__ == "__main__":
    main()
