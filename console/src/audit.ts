/**
 * Audit events in the browser: each event's inclusion proof checked against
 * the pinned, verified checkpoint (like app/client/access_report.py), and
 * events told in plain words. The leaf hash is recomputed here from the
 * event's RFC 8785 bytes; the server's copy is only compared, never trusted.
 */
import type { Api } from "./api";
import { canonicalJson } from "./crypto/canonical";
import type { Checkpoint } from "./crypto/checkpoint";
import { b64Decode, b64Encode } from "./crypto/encoding";
import { leafHash, verifyInclusion } from "./crypto/merkle";
import { words } from "./ui";

export interface AuditEvent {
  ts?: string;
  actor?: string | null;
  actor_agency?: string | null;
  role?: string | null;
  action?: string;
  resource_type?: string | null;
  resource_id?: string | null;
  subject_agency?: string | null;
  outcome?: string;
  purpose?: string | null;
  grant?: Record<string, { purpose?: string; expires_at?: string | null }> | null;
  detail?: Record<string, unknown> | null;
  [k: string]: unknown;
}

export interface AuditItem {
  seq: number | null;
  event: AuditEvent;
  leaf_hash: string | null;
}

export interface Proven {
  state: "ok" | "pending" | "failed";
  /** Plain words: what was checked, or what failed and what to do. */
  text: string;
  leaf: string | null;
}

const TAMPERED = "This event does not match the signed audit log: it was changed or removed on the server after it was logged. Keep this page (print it) and report it to your task-force oversight office.";

/** Check one event's inclusion in the checkpoint `cp` (already verified against the pin). */
export async function proveEvent(api: Api, cp: Checkpoint, item: AuditItem): Promise<Proven> {
  let leaf: Uint8Array;
  try {
    leaf = leafHash(canonicalJson(item.event));
  } catch {
    return { state: "failed", text: TAMPERED, leaf: null };
  }
  const leafText = b64Encode(leaf);
  if (typeof item.seq !== "number" || !Number.isInteger(item.seq) || item.seq < 0) {
    return { state: "pending", text: "Not yet in the signed log (it is added within a minute or two). Verify again later.", leaf: leafText };
  }
  if (item.seq >= cp.size) {
    return { state: "pending", text: `Logged after the checkpoint this page verified (size ${cp.size}). Verify again in a minute.`, leaf: leafText };
  }
  if (item.leaf_hash !== null && item.leaf_hash !== undefined && item.leaf_hash !== leafText) {
    return { state: "failed", text: TAMPERED, leaf: leafText };
  }
  let ok = false;
  try {
    const proof = await api.get<{ index: number; tree_size: number; hashes: string[] }>(
      "/v1/audit/proof/inclusion", { seq: String(item.seq), tree_size: String(cp.size) });
    const hashes = proof.hashes.map((x) => b64Decode(x, 32));
    ok = proof.index === item.seq && proof.tree_size === cp.size && verifyInclusion(leaf, item.seq, cp.size, hashes, cp.root);
  } catch {
    ok = false;
  }
  return ok
    ? { state: "ok", text: `Verified in this browser: event ${item.seq} is in the signed audit log of size ${cp.size}.`, leaf: leafText }
    : { state: "failed", text: TAMPERED, leaf: leafText };
}

const VERBS: Record<string, string> = {
  "referral:create": "sent",
  "referral:read": "read",
  "referral:list": "listed",
  "referral:status": "posted a status on",
  "referral:withdraw": "withdrew",
  "grant:add": "gave consent on",
  "consent:revoke": "revoked consent on",
  "access:denied": "was refused access to",
  "token:issue": "signed in",
  "agency:create": "onboarded an agency",
  "agency:suspend": "changed an agency's status",
  "key:register": "registered a key",
  "key:rotate": "rotated keys",
  "client:create": "registered a client",
  "client:revoke": "revoked a client",
  "audit:query": "searched the audit log",
  "audit:export": "exported the audit log",
  "audit:read": "read an audit event",
  "audit:proof": "fetched an audit proof",
};

function list(items: string[]): string {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

/**
 * An event in plain words, e.g. "County Human Trafficking Unit read full_name
 * under investigation consent". `fieldName` resolves a field id to its name
 * (the sender's own decryption; null when unknown: then "a field").
 */
export function describe(
  e: AuditEvent, agencyName: (id: string) => string, fieldName: (fid: string) => string | null,
): string {
  const who = e.actor_agency ? agencyName(e.actor_agency) : e.role === "system" ? "The system" : "Someone not signed in";
  const fields = (fids: unknown): string => {
    if (!Array.isArray(fids) || fids.length === 0) return "";
    const named = fids.map((f) => fieldName(String(f)) ?? "a field");
    return list(named);
  };
  const d = e.detail ?? {};
  const action = String(e.action ?? "");
  const denied = e.outcome === "denied" ? " (refused)" : e.outcome === "error" ? " (failed)" : "";
  switch (action) {
    case "referral:read": {
      if (e.outcome === "denied") return `${who} tried to open the referral and was refused`;
      const f = fields(d.fids);
      if (!f) return `${who} opened the referral but was given no field${denied}`;
      const purposes = e.purpose ? e.purpose.split(",").map(words) : [];
      return `${who} read ${f}${purposes.length ? ` under ${list(purposes)} consent` : " as the sender"}${denied}`;
    }
    case "referral:create":
      return `${who} sent the referral${Array.isArray(d.fids) ? ` with ${d.fids.length} field${d.fids.length === 1 ? "" : "s"}` : ""}${denied}`;
    case "referral:status":
      return `${who} changed its status${d.from ? ` from ${words(String(d.from))}` : ""}${d.to ? ` to ${words(String(d.to))}` : ""}${d.note ? ", with a note" : ""}${denied}`;
    case "grant:add": {
      const grants = Array.isArray(d.grants) ? d.grants as { fid: string; recipient: string; purpose: string }[] : [];
      const parts = grants.map((g) => `${fieldName(g.fid) ?? "a field"} to ${agencyName(g.recipient)} for ${words(g.purpose)}`);
      return `${who} gave consent: ${parts.length ? list(parts) : "none"}${denied}`;
    }
    case "consent:revoke": {
      const revs = Array.isArray(d.revocations) ? d.revocations as { fid: string; recipient: string }[] : [];
      const parts = revs.map((r) => `${fieldName(r.fid) ?? "a field"} from ${agencyName(r.recipient)}`);
      return `${who} revoked consent: ${parts.length ? list(parts) : "none"}${denied}`;
    }
    case "referral:withdraw":
      return `${who} withdrew the referral${denied}`;
    case "access:denied":
      return `${who} was refused (${words(String(d.reason ?? d.missing_scope ?? "no access"))})`;
    default:
      return `${who} ${VERBS[action] ?? words(action)}${e.resource_type ? ` (${words(e.resource_type)})` : ""}${denied}`;
  }
}
