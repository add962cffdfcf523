/**
 * Where recipients come from: the service directory
 * (`GET /v1/directory/services`, DESIGN.md "Service directory and capacity"),
 * filtered by service, language, population and accepting, those accepting
 * first and the freshest capacity first (the server's order). A recipient is
 * an agency; each carries the services that matched, with capacity and its
 * age, so the caseworker sees who can take her tonight before choosing.
 * The caller's own agency and agencies that are not active are left out.
 */
import { session } from "../session";

export interface Capacity {
  available: number | null;
  unit: string;
  updated_at: string;
}

export interface DirectoryService {
  id: string;
  agency: string;
  agency_name: string;
  name: string;
  categories: string[];
  languages: string[];
  populations: string[];
  accepting: "yes" | "waitlist" | "no";
  capacity: Capacity;
}

export interface Recipient {
  id: string;
  name: string;
  kind: string;
  services: DirectoryService[];
}

export interface Filters {
  category?: string;
  language?: string;
  population?: string;
  accepting?: string;
  q?: string;
}

const PAGES = 5; // at most 5 × 200 services per search: the task force's directory, not the world's

/** Search the directory and group the matching services by agency, in the server's order. */
export async function loadRecipients(filters: Filters): Promise<Recipient[]> {
  const s = session();
  const found: DirectoryService[] = [];
  let cursor: string | null = null;
  for (let i = 0; i < PAGES; i += 1) {
    const page: { items: DirectoryService[]; next_cursor: string | null } = await s.api.get(
      "/v1/directory/services",
      { ...filters, language: filters.language?.trim(), q: filters.q?.trim(), limit: "200", cursor },
    );
    found.push(...page.items);
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  const byAgency = new Map<string, DirectoryService[]>();
  for (const svc of found) {
    if (svc.agency === s.agencyId) continue;
    byAgency.set(svc.agency, [...(byAgency.get(svc.agency) ?? []), svc]);
  }
  const out: Recipient[] = [];
  for (const [id, services] of byAgency) {
    const entry = await s.trust.agency(id);
    if (entry.status !== "active") continue;
    out.push({ id, name: entry.name, kind: entry.kind, services });
  }
  return out;
}

/** "4 appointments free", "no beds free", "capacity not stated". */
export function capacityText(c: Capacity): string {
  if (c.available === null) return `${c.unit}: number not stated`;
  return c.available === 0 ? `no ${c.unit} free` : `${c.available} ${c.available === 1 ? c.unit.replace(/s$/, "") : c.unit} free`;
}

/** How old a capacity figure is, in plain words ("updated 3 hours ago"). */
export function age(updatedAt: string, now = Date.now()): string {
  const t = Date.parse(updatedAt);
  if (Number.isNaN(t)) return "update time unknown";
  const minutes = Math.max(0, Math.round((now - t) / 60_000));
  if (minutes < 1) return "updated just now";
  if (minutes < 60) return `updated ${minutes} minute${minutes === 1 ? "" : "s"} ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `updated ${hours} hour${hours === 1 ? "" : "s"} ago`;
  return `updated ${Math.round(hours / 24)} days ago`;
}

export const ACCEPTING_WORDS: Record<string, string> = {
  yes: "accepting", waitlist: "waiting list", no: "not accepting",
};
