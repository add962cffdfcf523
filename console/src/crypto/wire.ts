/**
 * Envelope v2 shapes (app/crypto/wire.py): strict checks of what a client
 * opens. Unknown or missing members, wrong types and wrong lengths are
 * refused; vocabularies are app/vocab.py's.
 */

import {
  ACCEPTING, POPULATIONS, POSTABLE_STATUSES, PURPOSES, SENDER_PURPOSE, SERVICES, TASK_STATUSES, URGENCIES,
} from "../vocab";

export { ACCEPTING, POPULATIONS, POSTABLE_STATUSES, PURPOSES, SENDER_PURPOSE, SERVICES, TASK_STATUSES, URGENCIES };
export const STANDARD_FIELDS = [
  "full_name", "date_of_birth", "contact", "language", "narrative", "immigration_status",
  "medical_needs", "safety_concerns",
] as const;

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const RFC3339_RE =
  /^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,9})?Z$/;
export const FIELD_NAME_RE = /^[a-z][a-z0-9_]{0,63}$/;
export const CASE_REF_RE = /^[A-Za-z0-9._-]{1,64}$/;
export const REASON_RE = /^[a-z0-9_.-]{1,64}$/;
const RELEASE_REF_RE = /^[A-Za-z0-9._~:/+=-]+$/;

export class ShapeError extends Error {
  override name = "ShapeError";
}

/** Regex for base64url (no padding) of exactly n bytes, canonical last character. */
function b64urlOf(n: number): RegExp {
  const chars = Math.floor((4 * n + 2) / 3);
  const last = ({ 0: "", 1: "[AQgw]", 2: "[AEIMQUYcgkosw048]" } as Record<number, string>)[n % 3];
  const body = last ? `[A-Za-z0-9_-]{${chars - 1}}` : `[A-Za-z0-9_-]{${chars}}`;
  return new RegExp(`^${body}${last}$`);
}

const B16 = b64urlOf(16);
const B32 = b64urlOf(32);

export interface Manifest {
  v: 2;
  referral_id: string;
  sender_agency: string;
  sender_kid: string;
  created_at: string;
  version: number;
  digests: string[];
}
export interface FieldValue { fid: string; ciphertext_sha256: string; commitment: string }
export interface GrantValue {
  fid: string; recipient: string; kid: string; wrapped_key_sha256: string;
  purpose: string; expires_at: string | null; release_ref: string | null;
}
export interface RequestValue {
  recipient: string; services: string[]; urgency: string; case_ref: string | null;
}
export interface WrappedKey { fid: string; recipient: string; kid: string; wrapped_key: string }

type Check = (value: unknown) => boolean;

const str = (re: RegExp): Check => (v) => typeof v === "string" && re.test(v);
const nullable = (c: Check): Check => (v) => v === null || c(v);
const oneOf = (values: readonly string[]): Check => (v) => typeof v === "string" && values.includes(v);

function object<T>(value: unknown, what: string, members: Record<string, Check>): T {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new ShapeError(`${what} must be a JSON object`);
  }
  const keys = Object.keys(value);
  for (const k of keys) {
    if (!(k in members)) throw new ShapeError(`${what}: unknown member ${k}`);
  }
  for (const [k, check] of Object.entries(members)) {
    if (!keys.includes(k)) throw new ShapeError(`${what}: missing member ${k}`);
    if (!check((value as Record<string, unknown>)[k])) throw new ShapeError(`${what}: ${k} is not valid`);
  }
  return value as T;
}

export function manifest(value: unknown): Manifest {
  return object<Manifest>(value, "manifest", {
    v: (v) => v === 2,
    referral_id: str(UUID_RE),
    sender_agency: str(UUID_RE),
    sender_kid: str(B16),
    created_at: (v) => str(RFC3339_RE)(v) && (v as string).length <= 40,
    version: (v) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 1_000_000,
    digests: (v) => Array.isArray(v) && v.length >= 8 && v.length <= 4096 && v.every(str(B32)),
  });
}

export function fieldValue(value: unknown): FieldValue {
  return object<FieldValue>(value, "field disclosure", {
    fid: str(B16), ciphertext_sha256: str(B32), commitment: str(B32),
  });
}

export function grantValue(value: unknown): GrantValue {
  return object<GrantValue>(value, "grant disclosure", {
    fid: str(B16),
    recipient: str(UUID_RE),
    kid: str(B16),
    wrapped_key_sha256: str(B32),
    purpose: oneOf([...PURPOSES, SENDER_PURPOSE]),
    expires_at: nullable((v) => str(RFC3339_RE)(v) && (v as string).length <= 40),
    release_ref: nullable((v) => str(RELEASE_REF_RE)(v) && (v as string).length <= 256),
  });
}

export function requestValue(value: unknown): RequestValue {
  return object<RequestValue>(value, "request disclosure", {
    recipient: str(UUID_RE),
    services: (v) => Array.isArray(v) && v.length >= 1 && v.length <= 18 && v.every(oneOf(SERVICES)),
    urgency: oneOf(URGENCIES),
    case_ref: nullable(str(CASE_REF_RE)),
  });
}

export function wrappedKey(value: unknown): WrappedKey {
  return object<WrappedKey>(value, "wrapped key", {
    fid: str(B16), recipient: str(UUID_RE), kid: str(B16), wrapped_key: str(b64urlOf(80)),
  });
}
