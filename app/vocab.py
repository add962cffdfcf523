"""The shared vocabulary of the wire format, one StrEnum per value set.

Pure Python with no dependencies: the server (models, services, the operator
CLI's choices), the SDK/CLI and the console's generated types
(``console/src/vocab.ts``, written by ``python -m app.vocab_ts``) all take their
choices from here, so a value added or removed here changes every place that
accepts it (DESIGN.md, "Envelope v2", "Identity and authorization", "Audit log"
and "Service directory and capacity").
"""

from __future__ import annotations

from enum import StrEnum


class Service(StrEnum):
    """The service vocabulary: directory categories and the services a request asks for."""

    SHELTER = "shelter"
    HOUSING = "housing"
    LEGAL = "legal"
    IMMIGRATION_LEGAL = "immigration_legal"
    MEDICAL = "medical"
    MENTAL_HEALTH = "mental_health"
    SUBSTANCE_USE = "substance_use"
    CASE_MANAGEMENT = "case_management"
    INTERPRETATION = "interpretation"
    EMPLOYMENT = "employment"
    EDUCATION = "education"
    FINANCIAL = "financial"
    SAFETY_PLANNING = "safety_planning"
    INVESTIGATION = "investigation"
    VICTIM_ADVOCACY = "victim_advocacy"
    BASIC_NEEDS = "basic_needs"
    CHILDCARE = "childcare"
    TRANSPORTATION = "transportation"


REASON_EXAMPLES = (
    "no_capacity", "not_eligible", "out_of_area", "client_declined", "unable_to_contact",
    "duplicate", "referred_elsewhere",
)
"""Reason codes in common use for ``rejected``, ``failed`` and ``on-hold`` (any code of
lower-case letters, digits, ``.``, ``_`` or ``-``, 1 to 64 characters, is accepted)."""


class Urgency(StrEnum):
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"


class Purpose(StrEnum):
    """Why a recipient may read a field (a grant's ``purpose``)."""

    SERVICE_PROVISION = "service_provision"
    INVESTIGATION = "investigation"
    PROSECUTION = "prosecution"
    SAFETY_PLANNING = "safety_planning"


SENDER_PURPOSE = "sender"
"""The ``purpose`` of the sender's own copies of the field keys."""


class Population(StrEnum):
    """Who a service takes (directory ``populations``)."""

    ADULTS = "adults"
    MINORS = "minors"
    WOMEN = "women"
    MEN = "men"
    LGBTQ = "lgbtq"
    FAMILIES = "families"
    FOREIGN_NATIONALS = "foreign_nationals"


class Accepting(StrEnum):
    YES = "yes"
    WAITLIST = "waitlist"
    NO = "no"


class CapacityUnit(StrEnum):
    BEDS = "beds"
    SLOTS = "slots"
    APPOINTMENTS = "appointments"


# ---------------------------------------------------------------- agencies, keys, clients


class AgencyKind(StrEnum):
    SOCIAL_SERVICE = "social_service"
    SHELTER = "shelter"
    LEGAL_AID = "legal_aid"
    MEDICAL = "medical"
    LAW_ENFORCEMENT = "law_enforcement"
    NGO = "ngo"
    GOVERNMENT = "government"


class AgencyStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class ClientStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"


class KeyUse(StrEnum):
    ENC = "enc"
    SIG = "sig"


class KeyStatus(StrEnum):
    CURRENT = "current"
    RETIRED = "retired"
    REVOKED = "revoked"


# ---------------------------------------------------------------- identity


class Role(StrEnum):
    CASEWORKER = "caseworker"
    LIAISON = "liaison"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Scope(StrEnum):
    REFERRALS_SEND = "referrals:send"
    REFERRALS_READ = "referrals:read"
    REFERRALS_STATUS = "referrals:status"
    AGENCIES_READ = "agencies:read"
    AGENCIES_ADMIN = "agencies:admin"
    AUDIT_READ = "audit:read"
    AUDIT_OWN = "audit:own"
    WEBHOOKS_MANAGE = "webhooks:manage"
    SERVICES_WRITE = "services:write"  # publish the own agency's services and capacity


ROLE_SCOPES: dict[Role, tuple[Scope, ...]] = {
    Role.CASEWORKER: (
        Scope.REFERRALS_SEND,
        Scope.REFERRALS_READ,
        Scope.REFERRALS_STATUS,
        Scope.AGENCIES_READ,
        Scope.AUDIT_OWN,
        Scope.WEBHOOKS_MANAGE,
        Scope.SERVICES_WRITE,
    ),
    Role.LIAISON: (
        Scope.REFERRALS_READ,
        Scope.REFERRALS_STATUS,
        Scope.AGENCIES_READ,
        Scope.AUDIT_OWN,
        Scope.WEBHOOKS_MANAGE,
    ),
    Role.AUDITOR: (Scope.AUDIT_READ, Scope.AGENCIES_READ),
    Role.ADMIN: (Scope.AGENCIES_READ, Scope.AGENCIES_ADMIN, Scope.SERVICES_WRITE),
}
"""The scopes each role's access tokens carry."""


# ---------------------------------------------------------------- referral tasks


class TaskStatus(StrEnum):
    """A recipient's closed-loop status of its task (FHIR Task status codes)."""

    REQUESTED = "requested"
    RECEIVED = "received"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    IN_PROGRESS = "in-progress"
    ON_HOLD = "on-hold"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.REQUESTED: frozenset(
        {TaskStatus.RECEIVED, TaskStatus.ACCEPTED, TaskStatus.REJECTED}
    ),
    TaskStatus.RECEIVED: frozenset({TaskStatus.ACCEPTED, TaskStatus.REJECTED}),
    TaskStatus.ACCEPTED: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.FAILED}
    ),
    TaskStatus.IN_PROGRESS: frozenset(
        {TaskStatus.ON_HOLD, TaskStatus.COMPLETED, TaskStatus.FAILED}
    ),
    TaskStatus.ON_HOLD: frozenset(
        {TaskStatus.IN_PROGRESS, TaskStatus.COMPLETED, TaskStatus.FAILED}
    ),
}
"""The statuses a recipient may post from each status (none from a final one;
``cancelled`` is set by the sender's withdrawal, never posted)."""

POSTABLE_STATUSES: tuple[TaskStatus, ...] = tuple(
    s for s in TaskStatus if s not in (TaskStatus.REQUESTED, TaskStatus.CANCELLED)
)
"""The statuses a recipient may post at all."""


# ---------------------------------------------------------------- webhooks


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


# ---------------------------------------------------------------- audit


class AuditAction(StrEnum):
    TOKEN_ISSUE = "token:issue"  # noqa: S105 (an action name, not a secret)
    AGENCY_LIST = "agency:list"
    AGENCY_READ = "agency:read"
    AGENCY_CREATE = "agency:create"
    AGENCY_SUSPEND = "agency:suspend"
    KEY_REGISTER = "key:register"
    KEY_ROTATE = "key:rotate"
    KEY_PROOF = "key:proof"
    CLIENT_CREATE = "client:create"
    CLIENT_REVOKE = "client:revoke"
    REFERRAL_CREATE = "referral:create"
    REFERRAL_LIST = "referral:list"
    REFERRAL_READ = "referral:read"
    REFERRAL_STATUS = "referral:status"
    REFERRAL_WITHDRAW = "referral:withdraw"
    GRANT_ADD = "grant:add"
    CONSENT_REVOKE = "consent:revoke"
    AUDIT_QUERY = "audit:query"
    AUDIT_EXPORT = "audit:export"
    AUDIT_READ = "audit:read"
    AUDIT_PROOF = "audit:proof"
    AUDIT_CHECKPOINT = "audit:checkpoint"
    WEBHOOK_CREATE = "webhook:create"
    WEBHOOK_READ = "webhook:read"
    WEBHOOK_DELETE = "webhook:delete"
    WEBHOOK_ROTATE = "webhook:rotate"
    WEBHOOK_REPLAY = "webhook:replay"
    RETENTION_PURGE = "retention:purge"
    DIRECTORY_SEARCH = "directory:search"
    DIRECTORY_EXPORT = "directory:export"
    SERVICE_CREATE = "service:create"
    SERVICE_REPLACE = "service:replace"
    SERVICE_DELETE = "service:delete"
    CAPACITY_UPDATE = "capacity:update"
    ACCESS_DENIED = "access:denied"


class AuditOutcome(StrEnum):
    OK = "ok"
    DENIED = "denied"
    ERROR = "error"
