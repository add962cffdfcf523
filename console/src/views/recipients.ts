/**
 * Where recipients come from. Until the service directory
 * (`GET /v1/directory/services`, DESIGN.md "Service directory and capacity")
 * is on this server, the task force's agencies (`GET /v1/agencies`): every
 * active member but the caller, filtered by name or kind in the page.
 * The directory search replaces `loadRecipients` and adds service,
 * language, population, accepting and capacity filters.
 */
import { session } from "../session";
import type { AgencyEntry } from "../trust";

export interface Recipient {
  id: string;
  name: string;
  kind: string;
  detail: string; // one line for the picker
}

export async function loadRecipients(): Promise<Recipient[]> {
  const s = session();
  const agencies: AgencyEntry[] = await s.trust.allAgencies();
  return agencies
    .filter((a) => a.status === "active" && a.id !== s.agencyId)
    .map((a) => ({ id: a.id, name: a.name, kind: a.kind, detail: a.kind.replace(/_/g, " ") }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

export function matches(r: Recipient, query: string): boolean {
  const q = query.trim().toLowerCase();
  return !q || r.name.toLowerCase().includes(q) || r.detail.includes(q);
}
