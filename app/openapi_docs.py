"""Descriptions of every operation and parameter in the OpenAPI document.

``document(schema)`` adds to each operation a ``description`` (what it does,
who may call it, and the problem types it can answer, RFC 9457, as
``https://refgate.dev/problems/<slug>``) and to each parameter without one a
description from :data:`PARAMETERS`. The route decorators keep their one-line
``summary``; the longer text lives here so it reads as one reference. A test
checks that every operation and parameter ends up with a description.
"""

from __future__ import annotations

from typing import Any

from app import errors

CASEWORKER_OR_LIAISON = "Caseworker or liaison of a member agency."

OPERATIONS: dict[tuple[str, str], str] = {
    ("get", "/.well-known/jwks.json"): (
        "The Ed25519 public keys (JWK set) that verify the server's access tokens "
        "(RFC 9068 at+jwt). No authentication."),
    ("get", "/health/live"): "200 while the process answers. No authentication.",
    ("get", "/health/ready"): (
        "200 when the database answers, 503 otherwise (take the instance out of the load "
        "balancer). No authentication."),
    ("post", "/oauth/token"): (
        "OAuth 2.0 client credentials with private_key_jwt (RFC 7523): post "
        "grant_type=client_credentials, client_assertion_type=urn:ietf:params:oauth:"
        "client-assertion-type:jwt-bearer and a client_assertion signed with the client's "
        "Ed25519 key (alg EdDSA or Ed25519; aud = this URL; a fresh jti; exp at most 300 "
        "seconds after the server's clock: a longer assertion is refused with "
        "invalid_client, and Authlib's stock PrivateKeyJWT signs for an hour, so give it "
        "expires_in <= 300). Answers a short-lived access token with the "
        "client's agency, role and scopes. Errors are RFC 6749 error codes as problem types "
        "oauth/<error>."),
    ("get", "/v1/agencies"): (
        "Every agency of the task force with its status and public keys (enc: X25519, sig: "
        "Ed25519; kid = base64url of the first 16 bytes of SHA-256 of the key). A client "
        "checks a key against the signed key directory (keys/proof) before using it. Any "
        "role (agencies:read)."),
    ("post", "/v1/agencies"): (
        "Register an agency with its encryption and signing public keys; the registration "
        "is an audit event, so the key directory commits to it. Admin (agencies:admin)."),
    ("get", "/v1/agencies/{agency_id}"): (
        "One agency's entry (status and keys). Any role. A missing id is 404 naming it."),
    ("post", "/v1/agencies/{agency_id}/clients"): (
        "Register an API client (one person or machine) of an agency, with its role and "
        "Ed25519 client-authentication key. Admin."),
    ("post", "/v1/agencies/{agency_id}/clients/{client_id}/revoke"): (
        "Revoke one client (a lost laptop): it gets no new token and its current token is "
        "refused. Admin."),
    ("post", "/v1/agencies/{agency_id}/keys"): (
        "Rotate an agency's keys: the new keys become current, the old ones stay listed as "
        "retired so older referrals still verify. Admin."),
    ("get", "/v1/agencies/{agency_id}/keys/proof"): (
        "Key transparency: the agency's leaf in the key directory that a checkpoint commits "
        "to, with its Merkle proof. 409 not-yet-logged while the registration is not in a "
        "checkpoint yet (retry shortly). Any role."),
    ("post", "/v1/agencies/{agency_id}/reactivate"): "Lift an agency's suspension. Admin.",
    ("post", "/v1/agencies/{agency_id}/services"): (
        "Publish a service of the caller's own agency in the service directory (never a "
        "street address). The agency's caseworkers and admins (services:write)."),
    ("delete", "/v1/agencies/{agency_id}/services/{service_id}"): (
        "Delete a service of the caller's own agency. Caseworker or admin of that agency."),
    ("put", "/v1/agencies/{agency_id}/services/{service_id}"): (
        "Replace a service of the caller's own agency. Caseworker or admin of that agency."),
    ("patch", "/v1/agencies/{agency_id}/services/{service_id}/capacity"): (
        "Post a service's capacity now (accepting, available, unit): audited, and pushed "
        "to capacity.updated webhooks. Caseworker or admin of that agency."),
    ("post", "/v1/agencies/{agency_id}/suspend"): (
        "Suspend an agency: its clients get no tokens and clients refuse to encrypt to it. "
        "Admin."),
    ("get", "/v1/audit/checkpoint"): (
        "The latest signed checkpoint of the audit log (C2SP tlog-checkpoint signed note) "
        "with the witnesses' cosignatures; ?cosigned=K asks for one with at least K. "
        "Clients verify it with the pinned log key. Any role."),
    ("get", "/v1/audit/events"): (
        "Audit events, newest first (by the event's ts, then its id), filtered; an auditor "
        "sees all, other roles the events about their own agency (the access report). Pages "
        "with limit and cursor."),
    ("get", "/v1/audit/events/{seq}"): (
        "One sequenced audit event and its RFC 6962 leaf hash. Same visibility as the list."),
    ("get", "/v1/audit/export"): (
        "Stream the matching events in log order as NDJSON (default) or CSV, to rebuild "
        "and check the tree offline. Auditor."),
    ("get", "/v1/audit/log-key"): (
        "The checkpoint verifier key (<origin>+<key hash>+<base64 key>); compare it with "
        "the key the task force published before pinning it. Any role."),
    ("get", "/v1/audit/proof/consistency"): (
        "RFC 9162 consistency proof between two tree sizes: a checkpoint seen later extends "
        "the one pinned. Any role."),
    ("get", "/v1/audit/proof/inclusion"): (
        "RFC 9162 inclusion proof of one event in the tree of a given size. Any role."),
    ("get", "/v1/directory/hsds"): (
        "The service directory as Open Referral HSDS 3 (organizations and services of "
        "active agencies), for 211 and resource-directory systems. Any role."),
    ("get", "/v1/directory/services"): (
        "Find services by service, language, population, text: those accepting first, then "
        "the freshest capacity. Any role."),
    ("get", "/v1/limits"): (
        "The server's limits (maximum consent days, sizes, recipients) and vocabularies "
        "(services, urgencies, purposes, reason codes); a client checks a referral against "
        "them before sending. Any role."),
    ("get", "/v1/referrals"): (
        "Referrals sent (box=sent: every recipient's status) or received (box=received: "
        "the request to this agency and its own status), newest first; no content. Poll "
        "with since (the newest created_at seen) or use webhooks. " + CASEWORKER_OR_LIAISON),
    ("post", "/v1/referrals"): (
        "Send a referral: an Envelope v2 (DESIGN.md) encrypted and signed by the sender's "
        "client; the server checks the manifest signature, disclosures, recipients, key ids "
        "and consent and stores it without being able to open it. Send an Idempotency-Key: "
        "a re-post of the same body with the same key is answered like the first (same "
        "status and body) and stores nothing new; the same key with another body is 409 "
        "idempotency-key-reused. Caseworker (referrals:send)."),
    ("get", "/v1/referrals/{referral_id}"): (
        "A referral as the caller may see it: the signed manifest, the disclosures and "
        "ciphertexts it holds a grant for, its wrapped keys and statuses. Anyone else gets "
        "404, as for a missing referral. " + CASEWORKER_OR_LIAISON),
    ("post", "/v1/referrals/{referral_id}/grants"): (
        "Widen consent: a new manifest version, signed by the sender, adding grants and "
        "requests; version must be the current one (409 version-conflict otherwise). "
        "Sender's caseworker."),
    ("post", "/v1/referrals/{referral_id}/revocations"): (
        "Revoke consent for (fid, recipient) pairs: the wrapped keys are deleted, the "
        "recipient can no longer open those fields. Sender's caseworker."),
    ("post", "/v1/referrals/{referral_id}/status"): (
        "A recipient's status on the referral, signed with its signing key, with an "
        "optional note sealed to the sender. Rejected needs a reason code (GET /v1/limits "
        "lists examples). The same status again changes nothing but a new note. "
        + CASEWORKER_OR_LIAISON),
    ("post", "/v1/referrals/{referral_id}/withdraw"): (
        "Withdraw a referral: recipients' wrapped keys are deleted and their statuses "
        "cancelled. Sender's caseworker."),
    ("get", "/v1/webhooks"): "This agency's webhook subscriptions. Caseworker or liaison.",
    ("post", "/v1/webhooks"): (
        "Subscribe an HTTPS endpoint (never a private or loopback address) to event types; "
        "the Standard Webhooks signing secret (whsec_…) is in this answer only. Deliveries "
        "name what happened, never a field's content. Caseworker or liaison."),
    ("delete", "/v1/webhooks/{webhook_id}"): (
        "Delete a webhook and its pending deliveries. Caseworker or liaison of its agency."),
    ("get", "/v1/webhooks/{webhook_id}/deliveries"): (
        "A webhook's deliveries, newest first, with attempts and the last error; status "
        "filters (pending, delivered, dead). Caseworker or liaison of its agency."),
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): (
        "Queue a dead-lettered delivery again with the same webhook-id and payload (409 "
        "webhook/not-dead otherwise). Caseworker or liaison of its agency."),
    ("post", "/v1/webhooks/{webhook_id}/rotate-secret"): (
        "Issue a new signing secret (in this answer only); deliveries are signed with both "
        "for a grace period. Caseworker or liaison of its agency."),
}

STATUS_PROBLEMS: dict[int, tuple[str, ...]] = {
    400: ("bad-request",),  # + invalid-cursor (a GET) or invalid-json (a body): _problems
    401: ("unauthorized",),
    403: ("forbidden",),
    404: ("not-found",),
    409: ("conflict",),
    413: ("payload-too-large",),
    415: ("unsupported-media-type",),
    422: ("unprocessable",),
    429: ("rate-limited",),
    503: ("unavailable",),
}
"""The generic problem types of each status (``errors``' default slugs)."""

EXTRA_PROBLEMS: dict[tuple[str, str], tuple[str, ...]] = {
    ("post", "/oauth/token"): ("oauth/invalid_request", "oauth/invalid_client",
                               "oauth/unsupported_grant_type"),
    ("post", "/v1/agencies"): ("invalid-key", "invalid-kind", "key-exists"),
    ("post", "/v1/agencies/{agency_id}/clients"): ("invalid-key", "invalid-role"),
    ("post", "/v1/agencies/{agency_id}/keys"): ("invalid-key", "key-exists"),
    ("get", "/v1/agencies/{agency_id}/keys/proof"): ("not-yet-logged",),
    ("delete", "/v1/agencies/{agency_id}/services/{service_id}"): ("directory/not-your-agency",),
    ("patch", "/v1/agencies/{agency_id}/services/{service_id}/capacity"): (
        "directory/not-your-agency",),
    ("post", "/v1/agencies/{agency_id}/services"): ("directory/not-your-agency",
                                                    "directory/limit", "directory/language"),
    ("put", "/v1/agencies/{agency_id}/services/{service_id}"): ("directory/not-your-agency",
                                                                "directory/language"),
    ("get", "/v1/audit/checkpoint"): ("not-cosigned",),
    ("get", "/v1/audit/proof/consistency"): ("out-of-range", "beyond-tree"),
    ("get", "/v1/audit/proof/inclusion"): ("out-of-range", "beyond-tree"),
    ("get", "/v1/directory/services"): ("directory/language",),
    ("post", "/v1/referrals"): (
        "envelope/malformed", "envelope/sender-mismatch", "envelope/unknown-recipient",
        "envelope/inactive-recipient", "envelope/stale-kid", "envelope/expired-consent",
        "envelope/consent-too-long", "envelope/clock-skew", "envelope/<check> (the "
        "envelope checks of DESIGN.md)", "referral-exists", "idempotency-key-reused"),
    ("post", "/v1/referrals/{referral_id}/grants"): (
        "envelope/manifest-changed", "version-conflict", "not-the-sender",
        "referral-withdrawn", "envelope/no-key"),
    ("post", "/v1/referrals/{referral_id}/revocations"): (
        "not-the-sender", "cannot-revoke-sender", "unknown-grant"),
    ("post", "/v1/referrals/{referral_id}/status"): (
        "not-a-recipient", "status/bad-signature", "status/clock-skew", "invalid-transition",
        "reason-required", "invalid-note"),
    ("post", "/v1/referrals/{referral_id}/withdraw"): ("not-the-sender",),
    ("post", "/v1/webhooks"): ("webhook/target-refused", "webhook/limit"),
    ("post", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): (
        "webhook/not-dead",),
}

PARAMETERS: dict[str, str] = {
    "limit": "How many items on one page (the maximum is in the schema).",
    "cursor": "Opaque cursor from the previous page's next_cursor; leave out for the first.",
    "agency_id": "An agency's id (GET /v1/agencies lists them; refgate find searches them).",
    "client_id": "An API client's id, as registering it answered.",
    "service_id": "A service's id in the service directory.",
    "referral_id": "The referral's id, chosen by the sender's client (a UUID).",
    "webhook_id": "A webhook subscription's id.",
    "delivery_id": "One delivery of the webhook.",
    "tree_size": "The size of the tree (a checkpoint's) the proof is for; default the latest.",
    "seq": "An audit event's sequence number (its leaf index).",
    "first": "The smaller tree size (the checkpoint pinned earlier).",
    "second": "The larger tree size; default the latest checkpoint's.",
    "actor": "Only events by this client id.",
    "agency": "Only events about this agency.",
    "resource_id": "Only events about this resource (a referral id, an agency id …).",
    "action": "Only events of this action (e.g. referral.read).",
    "outcome": "Only allowed or only denied events.",
    "since": "Only items at or after this RFC 3339 time.",
    "until": "Only items before this RFC 3339 time.",
    "format": "ndjson (default) or csv.",
    "population": "Only services for this population.",
    "accepting": "Only services accepting new referrals now.",
    "box": "sent (referrals this agency sent) or received (sent to it).",
    "status": "Only items with this status.",
    "urgency": "Only referrals of this urgency (routine, urgent, emergency).",
    "idempotency-key": (
        "Makes the POST safe to retry: a re-post with the same key and body is answered "
        "like the first. The refgate SDK derives it from the referral id "
        "(refgate-send-<referral id>)."),
}


def _problems(method: str, path: str, operation: dict[str, Any]) -> list[str]:
    statuses = sorted(int(s) for s in operation.get("responses", {}) if s[0] in "45")
    slugs = [slug for status in statuses for slug in STATUS_PROBLEMS.get(status, ())]
    if 400 in statuses:
        slugs.append("invalid-cursor" if method == "get" else "invalid-json")
    slugs += EXTRA_PROBLEMS.get((method, path), ())
    return [slug if slug.startswith("envelope/<") else errors.PROBLEM_BASE + slug
            for slug in dict.fromkeys(slugs)]


def document(schema: dict[str, Any]) -> None:
    """Add the descriptions to ``schema`` (an OpenAPI document) in place."""
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            text = OPERATIONS.get((method, path)) or operation.get("summary", "")
            problems = _problems(method, path, operation)
            if problems:
                text += "\n\nProblem types it can answer (RFC 9457 `type`):\n" + "\n".join(
                    f"- {p}" for p in problems)
            operation["description"] = text
            for parameter in operation.get("parameters", []):
                if not parameter.get("description"):
                    name = parameter.get("name", "")
                    parameter["description"] = PARAMETERS.get(name.lower(), "")
