"""Help topics of the ``refgate`` CLI that are more than a flag's line (``refgate roles``)."""

from __future__ import annotations

import textwrap

ROLE_SCOPES: dict[str, tuple[str, ...]] = {
    "caseworker": ("referrals:send", "referrals:read", "referrals:status", "agencies:read",
                   "audit:own", "webhooks:manage", "services:write"),
    "liaison": ("referrals:read", "referrals:status", "agencies:read", "audit:own",
                "webhooks:manage"),
    "auditor": ("audit:read", "agencies:read"),
    "admin": ("agencies:read", "agencies:admin", "services:write"),
}
"""The scopes each role's access token carries (the server's ``app.auth.ROLE_SCOPES``;
a test keeps the two equal)."""

ROLE_TEXT: dict[str, str] = {
    "caseworker": (
        "works with survivors at a member agency: sends referrals (refgate send), widens or "
        "revokes consent (grant, revoke), withdraws them, reads the agency's inbox and what "
        "it sent (inbox, show), answers with a status (status), publishes the agency's "
        "services and capacity (services, capacity), subscribes webhooks, and reads the "
        "access report of its own referrals (audit report)."
    ),
    "liaison": (
        "receives referrals, typically for a law-enforcement agency: reads the inbox and "
        "only the fields the survivor consented to share with it (inbox, show), answers "
        "with a status, subscribes webhooks, reads access reports of its agency's "
        "referrals. It cannot send referrals."
    ),
    "auditor": (
        "checks the task force's audit log: checkpoints, proofs, events and the export "
        "(audit verify --full). Never sees referral content: it has no referral scope."
    ),
    "admin": (
        "administers the directory: registers agencies, their keys and API clients, "
        "suspends and reinstates them, rotates keys, and publishes services. Never sees "
        "referral content: it has no referral scope."
    ),
}


def roles_text() -> str:
    """What ``refgate roles`` prints."""
    def para(text: str, indent: str = "") -> str:
        return textwrap.fill(text, width=78, initial_indent=indent, subsequent_indent=indent)

    parts = [para("Every key file belongs to one API client with one role (refgate configure "
                  "--role; the task-force administrator sets it with refgate-server "
                  "create-client --role):")]
    for role, text in ROLE_TEXT.items():
        scopes = para("scopes: " + " ".join(ROLE_SCOPES[role]), "  ")
        parts.append(f"{role}\n{para(text, '  ')}\n{scopes}")
    parts.append(para("An agency usually has caseworker clients for its staff (one key file "
                      "per person or laptop: revoking a lost laptop revokes one client), a "
                      "liaison client where it only receives, and the task force keeps the "
                      "auditor and admin clients."))
    return "\n\n".join(parts) + "\n"
