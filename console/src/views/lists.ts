/** Inbox (referrals received) and Sent (referrals sent, every recipient's signed status). */
import { verifyStatus } from "../crypto/envelope";
import { TASK_STATUSES, URGENCIES } from "../crypto/wire";
import { session } from "../session";
import { date, h, labelled, say, select, showError, words } from "../ui";

interface StatusItem {
  recipient: string; status: string; reason: string | null; note: string | null;
  signed_at: string | null; signature: string | null; updated_at: string;
}
interface ListItem {
  referral_id: string; sender_agency: string; created_at: string; withdrawn?: boolean;
  statuses: StatusItem[];
  request?: { services: string[]; urgency: string; case_ref: string | null } | null;
}

/** Check a status signature with the recipient's logged signing key; plain words for the result. */
export async function checkedStatus(referralId: string, s: StatusItem): Promise<{ text: string; verified: boolean }> {
  if (s.signature === null) {
    if (s.status !== "requested" && s.status !== "cancelled") {
      throw new Error(`The status "${words(s.status)}" of ${await session().trust.name(s.recipient)} is not signed by that agency: the server may have rewritten it.`);
    }
    return { text: words(s.status), verified: false };
  }
  const [, pub] = await session().trust.agencyKey(s.recipient, "sig");
  try {
    verifyStatus(s as unknown as Record<string, unknown>, referralId, pub);
  } catch {
    throw new Error(`The status "${words(s.status)}" shown for ${await session().trust.name(s.recipient)} was not signed by that agency: the server may have rewritten it. Call your administrator.`);
  }
  return { text: words(s.status), verified: true };
}

export function inboxView(box: "received" | "sent"): HTMLElement {
  const s = session();
  const title = box === "received" ? "Inbox" : "Sent referrals";
  const urgency = select([["", "Any urgency"], ...URGENCIES.map((u): [string, string] => [u, words(u)])]);
  const status = select([["", "Any status"], ...TASK_STATUSES.map((t): [string, string] => [t, words(t)])]);
  const results = h("div", { class: "results" });
  const form = h("form", { class: "filters", "aria-label": "Filter" },
    labelled("Urgency", urgency), labelled("Status", status), h("button", { type: "submit" }, "Apply filters"));
  const main = h("section", { "aria-labelledby": "view-title" }, h("h1", { id: "view-title", tabindex: -1 }, title), form, results);

  const load = async (): Promise<void> => {
    say(`Loading ${title.toLowerCase()}…`);
    results.replaceChildren();
    try {
      const page = await s.api.get<{ items: ListItem[] }>("/v1/referrals", {
        box, urgency: urgency.value, status: status.value, limit: "50",
      });
      if (page.items.length === 0) {
        results.append(h("p", {}, box === "received" ? "No referral matches." : "You have not sent a referral that matches."));
        say(`${title}: nothing matches.`);
        return;
      }
      const head = box === "received"
        ? ["Received", "From", "Urgency", "Services asked", "Case reference", "Your status", ""]
        : ["Sent", "Recipients and their statuses", ""];
      const rows = await Promise.all(page.items.map(async (item) => {
        const open = h("a", { href: `#/referral/${item.referral_id}`, class: "button" }, "Open", h("span", { class: "visually-hidden" }, ` referral of ${date(item.created_at)}`));
        if (box === "received") {
          const own = item.statuses[0];
          return h("tr", {},
            h("td", {}, date(item.created_at)),
            h("td", {}, await s.trust.name(item.sender_agency)),
            h("td", {}, h("span", { class: `badge urgency-${item.request?.urgency ?? "routine"}` }, words(item.request?.urgency ?? "—"))),
            h("td", {}, (item.request?.services ?? []).map(words).join(", ")),
            h("td", {}, item.request?.case_ref ?? "—"),
            h("td", {}, own ? words(own.status) : "—"),
            h("td", {}, open));
        }
        const statuses = await Promise.all(item.statuses.map(async (st) => {
          const checked = await checkedStatus(item.referral_id, st);
          return h("li", {}, `${await s.trust.name(st.recipient)}: `, h("strong", {}, checked.text),
            checked.verified ? h("span", { class: "ok" }, " (signed, verified)") : null,
            st.note ? " · has a note" : null);
        }));
        return h("tr", {}, h("td", {}, date(item.created_at)), h("td", {}, h("ul", { class: "plain" }, statuses)), h("td", {}, open));
      }));
      results.append(h("table", {}, h("caption", { class: "visually-hidden" }, title),
        h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c || h("span", { class: "visually-hidden" }, "Actions"))))),
        h("tbody", {}, rows)));
      say(`${title}: ${page.items.length} referral${page.items.length === 1 ? "" : "s"}.`);
    } catch (exc) {
      showError(results, exc);
    }
  };
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void load();
  });
  void load();
  return main;
}
