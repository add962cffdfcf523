"""Help topics of the ``refgate`` CLI that are more than a flag's line (``refgate roles``)."""

from __future__ import annotations

import argparse
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


# ---------------------------------------------------------------- option help

_REFERRAL_ID = "the referral's id, as send, inbox or a webhook gave it"
_AGENCY_ID = "the agency id the administrator's create-agency printed"
_CLIENT_ID = "the client id the administrator's create-client printed"
_ROLE = "this key file's role (refgate roles explains them)"
_PAGE = "how many to show on one page (default 50)"
_CURSOR = "the next page: the cursor the previous page printed"
_SERVICE_ID = "the service's id, as refgate services list shows it"
_ACCEPTING = "accepting, waitlist or closed (new referrals now)"
_UNIT = "what is counted: beds, slots, appointments … (default slots)"

OPTION_HELP: dict[tuple[str, str], str] = {
    ("keygen", "--agency-id"): _AGENCY_ID + " (or set it later with configure)",
    ("keygen", "--client-id"): _CLIENT_ID + " (or set it later with configure)",
    ("keygen", "--role"): _ROLE,
    ("configure", "--agency-id"): _AGENCY_ID,
    ("configure", "--client-id"): _CLIENT_ID,
    ("configure", "--server"): "the gateway URL to record in the key file",
    ("configure", "--role"): _ROLE,
    ("find", "--population"): "only services for this population",
    ("find", "--limit"): _PAGE,
    ("find", "--cursor"): _CURSOR,
    ("services add", "--name"): "the service's name, as partners will see it",
    ("services add", "--description"): "what the service does, in a sentence or two",
    ("services add", "--population"): "who it serves (repeatable)",
    ("services add", "--eligibility"): "who qualifies, in words",
    ("services add", "--hours"): "when intake is open, in words",
    ("services add", "--accepting"): _ACCEPTING,
    ("services add", "--unit"): _UNIT,
    ("services replace", "service_id"): _SERVICE_ID,
    ("services delete", "service_id"): _SERVICE_ID,
    ("capacity", "service_id"): _SERVICE_ID,
    ("capacity", "--accepting"): _ACCEPTING,
    ("capacity", "--unit"): _UNIT,
    ("send", "--field"): "a field of the referral, e.g. full_name=\"Maria Example\" (repeatable; "
                         "encrypted before it leaves this machine)",
    ("send", "--consent"): "who may read a field and why: FIELD:AGENCY:PURPOSE, e.g. "
                           "full_name:legal:service_provision (repeatable; purposes: "
                           "service_provision, investigation, prosecution, safety_planning)",
    ("inbox", "--sent"): "referrals this agency sent (with every recipient's status) instead "
                         "of received ones",
    ("inbox", "--status"): "only referrals with this status (requested, accepted, rejected …)",
    ("inbox", "--urgency"): "only referrals of this urgency",
    ("inbox", "--limit"): _PAGE,
    ("inbox", "--cursor"): _CURSOR,
    ("show", "referral_id"): _REFERRAL_ID,
    ("status", "referral_id"): _REFERRAL_ID,
    ("status", "state"): "this agency's new status on the referral",
    ("grant", "referral_id"): _REFERRAL_ID,
    ("grant", "--consent"): "FIELD:AGENCY:PURPOSE to add (repeatable)",
    ("grant", "--urgency"): "for a recipient new to the referral (default routine)",
    ("grant", "--case-ref"): "your opaque case reference, for a new recipient",
    ("grant", "--release-ref"): "reference of the signed release form",
    ("revoke", "referral_id"): _REFERRAL_ID,
    ("revoke", "--field"): "the field to revoke (repeatable, one --recipient each)",
    ("withdraw", "referral_id"): _REFERRAL_ID,
    ("audit report", "referral_id"): _REFERRAL_ID + " (one this agency sent)",
    ("webhook listen", "--port"): "local port to listen on (default 8787)",
}
OPTION_HELP |= {("services replace", option): text for (command, option), text
                in list(OPTION_HELP.items()) if command == "services add"}


def describe_options(parser: argparse.ArgumentParser, path: str = "") -> None:
    """Fill in the help of options defined without one, from :data:`OPTION_HELP`."""
    for action in parser._actions:  # argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                describe_options(sub, f"{path} {name}".strip())
        elif not action.help:
            key = action.option_strings[-1] if action.option_strings else action.dest
            action.help = OPTION_HELP.get((path, key))
