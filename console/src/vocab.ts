// Generated from app/vocab.py by `python -m app.vocab_ts` (./dev vocab): do not edit.
// tests/test_vocab_ts.py fails when this file is not current.

export const SERVICES = ["shelter", "housing", "legal", "immigration_legal", "medical", "mental_health", "substance_use", "case_management", "interpretation", "employment", "education", "financial", "safety_planning", "investigation", "victim_advocacy", "basic_needs", "childcare", "transportation"] as const;
export type ServiceName = (typeof SERVICES)[number];
export const URGENCIES = ["routine", "urgent", "emergency"] as const;
export type Urgency = (typeof URGENCIES)[number];
export const PURPOSES = ["service_provision", "investigation", "prosecution", "safety_planning"] as const;
export type Purpose = (typeof PURPOSES)[number];
export const POPULATIONS = ["adults", "minors", "women", "men", "lgbtq", "families", "foreign_nationals"] as const;
export type Population = (typeof POPULATIONS)[number];
export const ACCEPTING = ["yes", "waitlist", "no"] as const;
export type Accepting = (typeof ACCEPTING)[number];
export const CAPACITY_UNITS = ["beds", "slots", "appointments"] as const;
export type CapacityUnit = (typeof CAPACITY_UNITS)[number];
export const AGENCY_KINDS = ["social_service", "shelter", "legal_aid", "medical", "law_enforcement", "ngo", "government"] as const;
export type AgencyKind = (typeof AGENCY_KINDS)[number];
export const AGENCY_STATUSES = ["active", "suspended"] as const;
export type AgencyStatus = (typeof AGENCY_STATUSES)[number];
export const CLIENT_STATUSES = ["active", "revoked"] as const;
export type ClientStatus = (typeof CLIENT_STATUSES)[number];
export const KEY_USES = ["enc", "sig"] as const;
export type KeyUse = (typeof KEY_USES)[number];
export const KEY_STATUSES = ["current", "retired", "revoked"] as const;
export type KeyStatus = (typeof KEY_STATUSES)[number];
export const ROLES = ["caseworker", "liaison", "auditor", "admin"] as const;
export type Role = (typeof ROLES)[number];
export const SCOPES = ["referrals:send", "referrals:read", "referrals:status", "agencies:read", "agencies:admin", "audit:read", "audit:own", "webhooks:manage", "services:write"] as const;
export type Scope = (typeof SCOPES)[number];
export const TASK_STATUSES = ["requested", "received", "accepted", "rejected", "in-progress", "on-hold", "completed", "failed", "cancelled"] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];
export const DELIVERY_STATUSES = ["pending", "delivered", "dead"] as const;
export type DeliveryStatus = (typeof DELIVERY_STATUSES)[number];
export const AUDIT_ACTIONS = ["token:issue", "agency:list", "agency:read", "agency:create", "agency:suspend", "key:register", "key:rotate", "key:proof", "client:create", "client:revoke", "referral:create", "referral:list", "referral:read", "referral:status", "referral:withdraw", "grant:add", "consent:revoke", "audit:query", "audit:export", "audit:read", "audit:proof", "audit:checkpoint", "webhook:create", "webhook:read", "webhook:delete", "webhook:rotate", "webhook:replay", "retention:purge", "directory:search", "directory:export", "service:create", "service:replace", "service:delete", "capacity:update", "access:denied"] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];
export const AUDIT_OUTCOMES = ["ok", "denied", "error"] as const;
export type AuditOutcome = (typeof AUDIT_OUTCOMES)[number];
export const POSTABLE_STATUSES = ["received", "accepted", "rejected", "in-progress", "on-hold", "completed", "failed"] as const;
export type PostableStatus = (typeof POSTABLE_STATUSES)[number];
export const SENDER_PURPOSE = "sender";
export const REASON_EXAMPLES = ["no_capacity", "not_eligible", "out_of_area", "client_declined", "unable_to_contact", "duplicate", "referred_elsewhere"] as const;

/** The scopes each role's access tokens carry. */
export const ROLE_SCOPES: Readonly<Record<Role, readonly Scope[]>> = {
  "caseworker": ["referrals:send", "referrals:read", "referrals:status", "agencies:read", "audit:own", "webhooks:manage", "services:write"] as const,
  "liaison": ["referrals:read", "referrals:status", "agencies:read", "audit:own", "webhooks:manage"] as const,
  "auditor": ["audit:read", "agencies:read"] as const,
  "admin": ["agencies:read", "agencies:admin", "services:write"] as const,
};

/** The statuses a recipient may post from each status (none from a final one). */
export const TRANSITIONS: Readonly<Partial<Record<TaskStatus, readonly TaskStatus[]>>> = {
  "requested": ["received", "accepted", "rejected"] as const,
  "received": ["accepted", "rejected"] as const,
  "accepted": ["in-progress", "completed", "failed"] as const,
  "in-progress": ["on-hold", "completed", "failed"] as const,
  "on-hold": ["in-progress", "completed", "failed"] as const,
};
