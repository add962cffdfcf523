/**
 * The auditor's views: search events (actor, agency, referral, action, outcome,
 * time window) with cursor paging; one event's detail with its leaf hash and a
 * "Verify" action (inclusion proof checked in this browser against the pinned,
 * verified checkpoint); export of the current filter as NDJSON or CSV, streamed
 * to a file in bounded memory with progress; and the log's health (checkpoint,
 * cosignatures, consistency with the pin, directory root and agencies).
 */
import { describe, proveEvent, type AuditItem } from "../audit";
import { directoryLine } from "../crypto/checkpoint";
import { b64Encode, hex } from "../crypto/encoding";
import { session } from "../session";
import { date, h, labelled, say, select, showError, words } from "../ui";

const ACTIONS = [
  "referral:create", "referral:read", "referral:list", "referral:status", "referral:withdraw", "grant:add", "consent:revoke",
  "access:denied", "token:issue", "agency:create", "agency:suspend", "key:register", "key:rotate", "client:create", "client:revoke",
  "audit:query", "audit:export", "audit:read", "audit:proof", "audit:checkpoint",
];
const PAGE = 50;
/** Export chunks are folded into a Blob every this many bytes, so the page holds at most about this much. */
const FOLD_BYTES = 4 * 1024 * 1024;

type Filter = Record<string, string>;

function nameOf(agencies: Map<string, string>): (id: string) => string {
  return (id) => agencies.get(id) ?? `agency ${id.slice(0, 8)}`;
}

async function agencyNames(): Promise<Map<string, string>> {
  return new Map((await session().trust.allAgencies()).map((a) => [a.id, a.name]));
}

/** `datetime-local` value (UTC, as labelled) to RFC 3339. */
function utc(value: string): string | null {
  return value ? `${value.length === 16 ? `${value}:00` : value}Z` : null;
}

export function auditSearchView(): HTMLElement {
  const s = session();
  const actor = h("input", { type: "text", spellcheck: false, autocomplete: "off" });
  const agency = select([["", "Any agency"]]);
  const referral = h("input", { type: "text", spellcheck: false, autocomplete: "off" });
  const action = select([["", "Any action"], ...ACTIONS.map((a): [string, string] => [a, words(a.replace(":", " "))])]);
  const outcome = select([["", "Any outcome"], ["ok", "ok"], ["denied", "denied"], ["error", "error"]]);
  const since = h("input", { type: "datetime-local" });
  const until = h("input", { type: "datetime-local" });
  const results = h("div", { "aria-live": "polite" });
  const exportArea = h("div", {});
  const form = h("form", { class: "filters", "aria-label": "Search the audit log" },
    labelled("Actor (client id)", actor), labelled("Agency", agency), labelled("Referral id", referral),
    labelled("Action", action), labelled("Outcome", outcome), labelled("From (UTC)", since), labelled("Until (UTC)", until),
    h("button", { type: "submit" }, "Search"));
  const ndjson = h("button", { type: "button", class: "secondary" }, "Export as NDJSON");
  const csv = h("button", { type: "button", class: "secondary" }, "Export as CSV");
  const main = h("section", { "aria-labelledby": "view-title" },
    h("h1", { id: "view-title", tabindex: -1 }, "Audit log"),
    h("p", {}, "Search every event the gateway logged. Open an event to verify, in this browser, that it is in the signed audit log."),
    form, results, h("h2", {}, "Export the events of this search"), h("p", { class: "inline" }, ndjson, csv), exportArea);
  let agencies = new Map<string, string>();
  const cursors: (string | null)[] = [null];
  const filter = (): Filter => {
    const f: Filter = {};
    const set = (k: string, v: string | null): void => { if (v) f[k] = v; };
    set("actor", actor.value.trim());
    set("agency", agency.value);
    set("resource_id", referral.value.trim());
    set("action", action.value);
    set("outcome", outcome.value);
    set("since", utc(since.value));
    set("until", utc(until.value));
    return f;
  };
  let generation = 0;
  const search = async (page: number): Promise<void> => {
    say("Searching the audit log…");
    const mine = ++generation;
    results.replaceChildren(h("p", {}, "Searching…"));
    try {
      const f = filter();
      const answer = await s.api.get<{ items: AuditItem[]; next_cursor: string | null }>("/v1/audit/events",
        { ...f, limit: String(PAGE), cursor: cursors[page] ?? null });
      if (mine !== generation) return; // a newer search answered or is on its way
      cursors.length = page + 1;
      cursors.push(answer.next_cursor);
      const rows = answer.items.map((item) => h("tr", {},
        h("td", {}, item.seq === null ? "pending" : String(item.seq)),
        h("td", {}, date(item.event.ts)),
        h("td", {}, describe(item.event, nameOf(agencies), () => null)),
        h("td", {}, words(String(item.event.action ?? ""))),
        h("td", {}, String(item.event.outcome ?? "")),
        h("td", {}, item.seq === null ? "—" : h("a", { href: `#/audit/event/${item.seq}` }, "Open", h("span", { class: "visually-hidden" }, ` event ${item.seq}`)))));
      const prev = h("button", { type: "button", class: "secondary", disabled: page === 0 }, "Previous page");
      const next = h("button", { type: "button", class: "secondary", disabled: !answer.next_cursor }, "Next page");
      prev.addEventListener("click", () => void search(page - 1));
      next.addEventListener("click", () => void search(page + 1));
      results.replaceChildren(
        answer.items.length
          ? h("table", {}, h("caption", {}, `${Object.keys(f).length ? "Events matching your search" : "Latest events"}, newest first (page ${page + 1})`),
            h("thead", {}, h("tr", {}, ["Seq", "When", "What happened", "Action", "Outcome", "Detail"].map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, rows))
          : h("p", {}, "No event matches this search."),
        h("p", { class: "inline" }, prev, next));
      say(`${answer.items.length} events on page ${page + 1}.`);
    } catch (exc) {
      showError(results, exc);
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    cursors.length = 1;
    void search(0);
  });
  const runExport = (format: "ndjson" | "csv"): void => {
    void (async () => {
      ndjson.disabled = csv.disabled = true;
      try {
        await exportEvents(filter(), format, exportArea);
      } catch (exc) {
        showError(exportArea, exc);
      } finally {
        ndjson.disabled = csv.disabled = false;
      }
    })();
  };
  ndjson.addEventListener("click", () => runExport("ndjson"));
  csv.addEventListener("click", () => runExport("csv"));
  void (async () => {
    try {
      agencies = await agencyNames();
      for (const [id, name] of [...agencies].sort((a, b) => a[1].localeCompare(b[1]))) agency.append(h("option", { value: id }, name));
      await search(0);
    } catch (exc) {
      showError(results, exc);
    }
  })();
  return main;
}

/**
 * Stream `GET /v1/audit/export` to a file. With the File System Access API the
 * bytes go straight to disk; otherwise they are folded into a Blob every few
 * MiB (Blobs may live outside the JS heap), so the page never holds the whole
 * export as strings. Progress counts lines as they arrive.
 */
export async function exportEvents(f: Filter, format: "ndjson" | "csv", area: HTMLElement): Promise<{ lines: number; bytes: number }> {
  const s = session();
  const progress = h("progress", { max: 1, value: 0, "aria-label": "Export progress" });
  const text = h("p", { role: "status" }, "Starting the export…");
  area.replaceChildren(progress, text);
  const query = new URLSearchParams({ ...f, format });
  const response = await s.api.request("GET", `/v1/audit/export?${query.toString()}`);
  if (!response.body) throw new Error("The browser cannot stream this download. Try another browser, or use refgate audit export.");
  const reader = response.body.getReader();
  const parts: Blob[] = [];
  let pending: Uint8Array[] = [];
  let pendingBytes = 0;
  let bytes = 0;
  let lines = 0;
  let shown = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    bytes += value.length;
    for (let i = 0; i < value.length; i += 1) if (value[i] === 10) lines += 1;
    pending.push(value);
    pendingBytes += value.length;
    if (pendingBytes >= FOLD_BYTES) {
      parts.push(new Blob(pending as BlobPart[]));
      pending = [];
      pendingBytes = 0;
    }
    if (lines - shown >= 1000) {
      shown = lines;
      const events = format === "csv" ? Math.max(0, lines - 1) : lines;
      text.textContent = `Exported ${events.toLocaleString("en-GB")} events (${(bytes / 1048576).toFixed(1)} MB) so far…`;
      progress.removeAttribute("value");
    }
  }
  parts.push(new Blob(pending as BlobPart[]));
  pending = [];
  const events = format === "csv" ? Math.max(0, lines - 1) : lines;
  const file = new Blob(parts, { type: format === "csv" ? "text/csv" : "application/x-ndjson" });
  const name = `refgate-audit-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.${format === "csv" ? "csv" : "ndjson"}`;
  const link = h("a", { href: URL.createObjectURL(file), download: name, class: "button" }, `Save ${name}`);
  progress.max = 1;
  progress.value = 1;
  text.textContent = `Export complete: ${events.toLocaleString("en-GB")} events (${(bytes / 1048576).toFixed(1)} MB).`;
  area.append(h("p", {}, link));
  link.click();
  return { lines: events, bytes };
}

export function auditEventView(seq: number): HTMLElement {
  const s = session();
  const body = h("div", {});
  const main = h("section", { "aria-labelledby": "view-title" },
    h("h1", { id: "view-title", tabindex: -1 }, `Audit event ${seq}`), h("p", {}, h("a", { href: "#/audit" }, "Back to the search")), body);
  void (async () => {
    try {
      const [item, agencies] = await Promise.all([s.api.get<AuditItem>(`/v1/audit/events/${seq}`), agencyNames()]);
      const e = item.event;
      const rows: [string, string][] = [
        ["What happened", describe(e, nameOf(agencies), () => null)],
        ["When", date(e.ts)],
        ["Action", String(e.action ?? "—")], ["Outcome", String(e.outcome ?? "—")],
        ["Actor (client)", String(e.actor ?? "—")], ["Actor's agency", e.actor_agency ? `${nameOf(agencies)(e.actor_agency)} (${e.actor_agency})` : "—"],
        ["Role", String(e.role ?? "—")], ["Resource", `${e.resource_type ?? "—"} ${e.resource_id ?? ""}`],
        ["Subject agency", e.subject_agency ? `${nameOf(agencies)(e.subject_agency)} (${e.subject_agency})` : "—"],
        ["Purpose", String(e.purpose ?? "—")],
        ["Detail", JSON.stringify(e.detail ?? {})],
        ["Leaf hash (served)", item.leaf_hash ?? "—"],
      ];
      const verdict = h("div", { "aria-live": "polite" });
      const verify = h("button", { type: "button" }, "Verify");
      verify.addEventListener("click", () => {
        void (async () => {
          verify.disabled = true;
          say("Verifying the event in this browser…");
          try {
            const cp = await s.trust.latest();
            const proven = await proveEvent(s.api, cp, item);
            verdict.replaceChildren(
              proven.state === "ok" ? h("p", { class: "ok", role: "status" }, h("strong", {}, "Verified. "), proven.text)
                : proven.state === "pending" ? h("p", { role: "status" }, proven.text)
                  : h("div", { class: "error", role: "alert" }, h("strong", {}, "Verification failed. "), proven.text),
              h("p", { class: "hint" }, `Leaf hash computed in this browser: ${proven.leaf ?? "— (the event is not valid JSON for the log)"}`));
            say(proven.state === "ok" ? "Verified." : proven.state === "failed" ? "Verification failed." : "Not yet in the signed log.");
          } catch (exc) {
            showError(verdict, exc);
          } finally {
            verify.disabled = false;
          }
        })();
      });
      const report = e.resource_type === "referral" && typeof e.resource_id === "string" && /^[0-9a-f-]{36}$/.test(e.resource_id)
        ? h("p", {}, h("a", { href: `#/report/${e.resource_id}` }, "Every event of this referral (access report)")) : null;
      body.replaceChildren(report ?? "", h("dl", { class: "fields" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: k.startsWith("Leaf") ? "key" : "" }, v)])), verify, verdict);
      say(`Event ${seq} loaded.`);
    } catch (exc) {
      showError(body, exc);
    }
  })();
  return main;
}

export function logHealthView(): HTMLElement {
  const s = session();
  const body = h("div", {});
  const main = h("section", { "aria-labelledby": "view-title" }, h("h1", { id: "view-title", tabindex: -1 }, "Log health"), body);
  void (async () => {
    say("Checking the audit log in this browser…");
    try {
      const cp = await s.trust.latest();
      const agencies = await s.trust.allAgencies();
      const dir = directoryLine(cp);
      const logName = cp.origin;
      const cosigners = cp.signatures.filter((x) => x.name !== logName);
      body.replaceChildren(
        h("h2", {}, "Checkpoint"),
        h("dl", { class: "fields" },
          h("dt", {}, "Log"), h("dd", {}, logName),
          h("dt", {}, "Events in the signed log"), h("dd", {}, cp.size.toLocaleString("en-GB")),
          h("dt", {}, "Root hash"), h("dd", { class: "key" }, b64Encode(cp.root)),
          h("dt", {}, "Signature"), h("dd", { class: "ok" }, `Verified in this browser with the pinned log key ${s.trust.pinnedKey}.`),
          h("dt", {}, "Consistency"), h("dd", { class: "ok" }, "Verified: this checkpoint extends every checkpoint this browser saw before (the pin advanced to it).")),
        h("h2", {}, "Witness cosignatures"),
        cosigners.length
          ? h("ul", {}, cosigners.map((c) => h("li", {}, `${c.name} (key ${hex(c.keyHash)})`)))
          : h("p", {}, "No witness has cosigned this checkpoint."),
        h("p", { class: "hint" }, "A cosignature is checked against the witness keys your task force published, when they are configured for this page."),
        h("h2", {}, "Key directory"),
        dir
          ? h("dl", { class: "fields" },
            h("dt", {}, "Agencies the checkpoint states"), h("dd", {}, String(dir.size)),
            h("dt", {}, "Directory root"), h("dd", { class: "key" }, b64Encode(dir.root)),
            h("dt", {}, "Agencies the server lists"), h("dd", { class: dir.size === agencies.length ? "ok" : "bad" },
              dir.size === agencies.length ? `${agencies.length}, the same number.` : `${agencies.length}: not the number the signed checkpoint states. Ask your administrator why.`))
          : h("p", {}, "This checkpoint does not commit to a key directory."),
        h("h2", {}, "Sequencing"),
        h("p", {}, "The gateway does not publish the age of its oldest unsequenced event; events still outside the signed log show as \"pending\" in the search, and refgate audit verify --full names any that stay out."),
      );
      say("Log health checked.");
    } catch (exc) {
      showError(body, exc);
    }
  })();
  return main;
}
