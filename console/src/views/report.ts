/**
 * The access report of one referral (DESIGN.md "Audit log"): every event about
 * it, oldest first, in plain words, each event's inclusion proof checked in this
 * browser against the pinned, verified checkpoint. Field names come from the
 * sender's own decryption of the referral in this page (the server's events
 * carry field ids only) and are never sent anywhere. Printable.
 */
import { ApiError } from "../api";
import { describe, proveEvent, type AuditItem } from "../audit";
import { openEnvelope } from "../crypto/envelope";
import { lib } from "../crypto/sodium";
import { session } from "../session";
import { date, h, say, showError } from "../ui";

const MAX_EVENTS = 5000;

export function reportView(id: string): HTMLElement {
  const body = h("div", {});
  const main = h("section", { "aria-labelledby": "view-title", class: "report" },
    h("h1", { id: "view-title", tabindex: -1 }, "Access report"), body);
  void render(id, body);
  return main;
}

/** Field id -> name from the sender's own decryption (empty when this agency is not the sender). */
async function fieldNames(id: string): Promise<{ names: Map<string, string>; isSender: boolean; created: string | null }> {
  const s = session();
  let doc: { manifest: { referral_id: string; sender_agency: string; created_at: string } };
  try {
    doc = await s.api.get(`/v1/referrals/${encodeURIComponent(id)}`);
  } catch (exc) {
    // an auditor, or a referral this agency can no longer open: events still show, fields unnamed
    if (exc instanceof ApiError && (exc.status === 403 || exc.status === 404 || exc.status === 410)) return { names: new Map(), isSender: false, created: null };
    throw exc;
  }
  if (doc.manifest?.referral_id !== id) throw new Error("The server answered with another referral than the one asked for. Call your administrator.");
  if (doc.manifest.sender_agency !== s.agencyId) return { names: new Map(), isSender: false, created: doc.manifest.created_at };
  const [, sigPublic] = await s.trust.agencyKey(doc.manifest.sender_agency, "sig");
  let opened;
  try {
    opened = openEnvelope(doc, s.agencyId, s.secrets.encPrivate, sigPublic);
  } catch (exc) {
    throw new Error(`This referral does not verify, so its fields cannot be named (${(exc as Error).message}). It may have been altered on the server; call your administrator.`);
  }
  for (const k of Object.values(opened.fieldKeys)) lib().memzero(k);
  return { names: new Map(Object.entries(opened.fids).map(([name, fid]) => [fid, name])), isSender: true, created: opened.manifest.created_at };
}

async function render(id: string, body: HTMLElement): Promise<void> {
  const s = session();
  say("Collecting the referral's events and verifying each one in this browser…");
  try {
    const { names, isSender, created } = await fieldNames(id);
    const agencies = new Map((await s.trust.allAgencies()).map((a) => [a.id, a.name]));
    const agencyName = (a: string): string => (a === s.agencyId ? `${s.agencyName} (your agency)` : agencies.get(a) ?? `agency ${a.slice(0, 8)}`);
    const cp = await s.trust.latest();
    const items: AuditItem[] = [];
    let cursor: string | null = null;
    do {
      const page: { items: AuditItem[]; next_cursor: string | null } =
        await s.api.get("/v1/audit/events", { resource_id: id, limit: "500", cursor });
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < MAX_EVENTS);
    items.sort((a, b) => String(a.event.ts).localeCompare(String(b.event.ts)) || (a.seq ?? Infinity) - (b.seq ?? Infinity));
    const rows: HTMLElement[] = [];
    const counts = { ok: 0, pending: 0, failed: 0 };
    for (const item of items) {
      const proven = await proveEvent(s.api, cp, item);
      counts[proven.state] += 1;
      const label = proven.state === "ok" ? "Verified" : proven.state === "pending" ? "Not yet in the log" : "VERIFICATION FAILED";
      rows.push(h("tr", { class: `proof-${proven.state}` },
        h("td", {}, date(item.event.ts)),
        h("td", {}, describe(item.event, agencyName, (fid) => names.get(fid) ?? null)),
        h("td", {}, h("strong", { class: proven.state === "ok" ? "ok" : proven.state === "failed" ? "bad" : "" }, label), h("br", {}), h("span", { class: "hint" }, proven.text))));
    }
    const print = h("button", { type: "button", class: "secondary no-print" }, "Print this report");
    print.addEventListener("click", () => window.print());
    body.replaceChildren(h("div", {},
      h("p", {}, `Referral ${id}${created ? `, sent ${date(created)}` : ""}. Prepared ${date(new Date().toISOString())} by ${s.agencyName}.`),
      isSender
        ? h("p", {}, "Field names are read from your own copy of the referral in this browser; the server only knows field ids.")
        : h("p", { class: "notice" }, "Your agency did not send this referral (or cannot open it now), so its fields are shown as \"a field\". Only the sender can name them."),
      h("p", { class: counts.failed ? "error" : "", role: counts.failed ? "alert" : undefined },
        `${items.length} event${items.length === 1 ? "" : "s"}: ${counts.ok} verified in this browser against the signed audit log (size ${cp.size}), ${counts.pending} not yet in it, ${counts.failed} failed.`,
        counts.failed ? " Some events do not match the signed log: they were changed on the server. Report it to your task-force oversight office." : ""),
      items.length >= MAX_EVENTS ? h("p", { class: "notice" }, `Only the first ${MAX_EVENTS} events are shown.`) : null,
      h("table", {},
        h("caption", {}, "Every event about this referral, oldest first"),
        h("thead", {}, h("tr", {}, ["When", "What happened", "Proof"].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rows)),
      h("p", {}, print),
    ));
    say(`Access report ready: ${items.length} events, ${counts.ok} verified, ${counts.failed} failed.`);
  } catch (exc) {
    showError(body, exc);
  }
}
