/**
 * One referral, opened in the page: every check shown (signature, disclosures,
 * key commitments, the sender's key in the audit log) before any field.
 * A recipient posts a signed status with an optional note sealed to the
 * sender; the sender sees each recipient's verified status and note, revokes
 * a consent or withdraws the referral.
 */
import { amend, openEnvelope, openNote, sealNote, signStatus, type Opened } from "../crypto/envelope";
import { PURPOSES, POSTABLE_STATUSES, REASON_RE, STANDARD_FIELDS } from "../crypto/wire";
import { ApiError } from "../api";
import { lib } from "../crypto/sodium";
import { session } from "../session";
import { date, day, fieldLabel, h, labelled, say, select, showError, words } from "../ui";
import { checkedStatus } from "./lists";

interface Document {
  manifest: { referral_id: string; sender_agency: string; created_at: string; version: number };
  statuses?: { recipient: string; status: string; reason: string | null; note: string | null; signed_at: string | null; signature: string | null; updated_at: string }[];
  [k: string]: unknown;
}

export function referralView(id: string): HTMLElement {
  const main = h("section", { "aria-labelledby": "view-title" }, h("h1", { id: "view-title", tabindex: -1 }, "Referral"));
  const body = h("div", {});
  main.append(body);
  void render(id, body);
  return main;
}

async function load(id: string): Promise<{ doc: Document; opened: Opened; cpSize: number }> {
  const s = session();
  const doc = await s.api.get<Document>(`/v1/referrals/${encodeURIComponent(id)}`);
  if (doc.manifest?.referral_id !== id) throw new Error("The server answered with another referral than the one asked for. Call your administrator.");
  const [, sigPublic] = await s.trust.agencyKey(doc.manifest.sender_agency, "sig");
  let opened: Opened;
  try {
    opened = openEnvelope(doc, s.agencyId, s.secrets.encPrivate, sigPublic);
  } catch (exc) {
    throw new Error(`This referral does not verify, so nothing of it is shown (${(exc as Error).message}). It may have been altered on the server; call your administrator.`);
  }
  const cp = await s.trust.latest();
  return { doc, opened, cpSize: cp.size };
}

async function render(id: string, body: HTMLElement): Promise<void> {
  const s = session();
  say("Opening the referral and checking it…");
  body.replaceChildren();
  let loaded;
  try {
    loaded = await load(id);
  } catch (exc) {
    showError(body, exc);
    return;
  }
  const { doc, opened, cpSize } = loaded;
  for (const k of Object.values(opened.fieldKeys)) lib().memzero(k);
  const isSender = opened.manifest.sender_agency === s.agencyId;
  const sender = await s.trust.name(opened.manifest.sender_agency);
  const order = (n: string): number => {
    const i = (STANDARD_FIELDS as readonly string[]).indexOf(n);
    return i < 0 ? STANDARD_FIELDS.length : i;
  };
  const names = Object.keys(opened.fields).sort((a, b) => order(a) - order(b) || (a < b ? -1 : 1));
  const checks = h("ul", { class: "checks" },
    h("li", {}, `Signed by ${sender}: verified (version ${opened.manifest.version}).`),
    h("li", {}, `${sender}'s signing key is the one the audit log registered (log size ${cpSize}): verified.`),
    h("li", {}, "Every part shown is listed in the signed manifest: verified."),
    h("li", {}, names.length ? "Each field's key matches its commitment and its ciphertext its hash: verified." : "No field key to check."),
  );
  body.append(
    h("p", {}, `From ${sender}, sent ${date(opened.manifest.created_at)}.`),
    h("h2", {}, "Verification"), checks,
    h("h2", {}, isSender ? "Fields" : "Fields shared with your agency"),
    names.length
      ? h("dl", { class: "fields" }, names.flatMap((n) => [h("dt", {}, fieldLabel(n)), h("dd", {}, opened.fields[n] as string)]))
      : h("p", {}, "No field is shared with your agency on this referral now. Consent may have been revoked, may have expired, or the referral was withdrawn."),
  );
  const own = opened.requests[s.agencyId];
  if (own) {
    body.append(h("h2", {}, "What you are asked to do"), h("p", {},
      `${own.services.map(words).join(", ")}; urgency ${words(own.urgency)}${own.case_ref ? `; case reference ${own.case_ref}` : ""}.`));
  }
  if (isSender) body.append(h("p", {}, h("a", { href: `#/report/${id}` }, "Access report: who saw this referral, verified")));
  if (isSender) await senderPart(id, doc, opened, body);
  else recipientPart(id, doc, opened, body);
  say(`Referral opened and verified: ${names.length} field${names.length === 1 ? "" : "s"}.`);
  (document.getElementById("view-title") as HTMLElement | null)?.focus();
}

function recipientPart(id: string, doc: Document, opened: Opened, body: HTMLElement): void {
  const s = session();
  const current = doc.statuses?.find((x) => x.recipient === s.agencyId);
  const status = select(POSTABLE_STATUSES.map((t): [string, string] => [t, words(t)]), "accepted");
  const reason = h("input", { type: "text", pattern: REASON_RE.source.slice(1, -1), spellcheck: false });
  const note = h("textarea", { rows: 3, maxlength: 8000 });
  const button = h("button", { type: "submit" }, "Post signed status");
  const form = h("form", { class: "panel", "aria-labelledby": "status-title" },
    h("h2", { id: "status-title" }, "Your status"),
    h("p", {}, `Current status: ${current ? words(current.status) : "requested"}.`),
    labelled("New status", status),
    labelled("Reason code (if rejected)", reason, "For example no_capacity or out_of_area."),
    labelled("Note to the sender (optional)", note, "Encrypted in this browser to the sending agency only."),
    button);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      button.disabled = true;
      try {
        say("Signing and sending your status…");
        let sealed: string | null = null;
        if (note.value.trim()) {
          const [, senderEnc] = await s.trust.agencyKey(opened.manifest.sender_agency, "enc");
          sealed = sealNote(note.value, senderEnc);
        }
        const signedAt = new Date().toISOString().replace(/\.\d{3}Z$/, "Z");
        const bodyOut = signStatus({
          referralId: id, recipient: s.agencyId, status: status.value, reason: reason.value.trim() || null,
          note: sealed, signedAt, sigSeed: s.secrets.sigSeed,
        });
        await s.api.post(`/v1/referrals/${id}/status`, bodyOut);
        note.value = "";
        const posted = words(status.value);
        await render(id, body);
        say(`Status "${posted}" signed and sent.`);
      } catch (exc) {
        showError(form, exc);
      } finally {
        button.disabled = false;
      }
    })();
  });
  body.append(form);
}

async function senderPart(id: string, doc: Document, opened: Opened, body: HTMLElement): Promise<void> {
  const s = session();
  const nameOf = Object.fromEntries(Object.entries(opened.fids).map(([n, f]) => [f, n]));
  const statuses = h("ul", { class: "plain" });
  for (const st of doc.statuses ?? []) {
    const who = await s.trust.name(st.recipient);
    try {
      const checked = await checkedStatus(id, st);
      let noteText: string | null = null;
      if (st.note) {
        try {
          noteText = openNote(st.note, s.secrets.encPrivate);
        } catch {
          noteText = "(this note does not open with your key)";
        }
      }
      statuses.append(h("li", {}, `${who}: `, h("strong", {}, checked.text),
        checked.verified ? h("span", { class: "ok" }, ` (signed by ${who}, verified${st.signed_at ? `, ${date(st.signed_at)}` : ""})`) : null,
        noteText ? h("blockquote", {}, h("span", { class: "visually-hidden" }, "Note: "), noteText) : null));
    } catch (exc) {
      statuses.append(h("li", { class: "error" }, (exc as Error).message));
    }
  }
  body.append(h("h2", {}, "Recipients"), statuses);
  const grants = opened.grants.filter((g) => g.recipient !== s.agencyId);
  const rows = await Promise.all(grants.map(async (g) => {
    const who = await s.trust.name(g.recipient);
    const field = fieldLabel(nameOf[g.fid] ?? g.fid);
    const revoke = h("button", { type: "button", class: "secondary" }, `Revoke ${field} for ${who}`);
    revoke.addEventListener("click", () => {
      void (async () => {
        if (!confirm(`${who} will no longer be able to read ${field}. What it already read cannot be recalled. Revoke?`)) return;
        try {
          await s.api.post(`/v1/referrals/${id}/revocations`, { revocations: [{ fid: g.fid, recipient: g.recipient }] });
          await render(id, body);
          say(`${who} can no longer read ${field}.`);
        } catch (exc) {
          showError(body, exc);
        }
      })();
    });
    return h("tr", {}, h("td", {}, who), h("td", {}, field), h("td", {}, words(g.purpose)),
      h("td", {}, g.expires_at ? day(g.expires_at) : "—"), h("td", {}, revoke));
  }));
  body.append(h("h2", {}, "Consent"), rows.length
    ? h("table", {}, h("thead", {}, h("tr", {}, ["Recipient", "Field", "Purpose", "Until", "Action"].map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, rows))
    : h("p", {}, "No recipient holds consent to any field now."));
  body.append(await consentForm(id, opened, body, nameOf));
  const withdraw = h("button", { type: "button", class: "danger" }, "Withdraw this referral");
  withdraw.addEventListener("click", () => {
    void (async () => {
      if (!confirm("Every recipient loses access and its status becomes cancelled. Withdraw?")) return;
      try {
        await s.api.post(`/v1/referrals/${id}/withdraw`, undefined);
        await render(id, body);
        say("The referral was withdrawn.");
      } catch (exc) {
        showError(body, exc);
      }
    })();
  });
  body.append(withdraw);
}

const DAY = 86_400_000;

/** Add consent for a field to a current recipient: an amendment signed in the page. */
async function consentForm(id: string, opened: Opened, body: HTMLElement, nameOf: Record<string, string>): Promise<HTMLElement> {
  const s = session();
  const recipients = Object.keys(opened.requests);
  const field = select(Object.values(nameOf).map((n): [string, string] => [n, fieldLabel(n)]));
  const recipient = select(await Promise.all(recipients.map(async (r): Promise<[string, string]> => [r, await s.trust.name(r)])));
  const purpose = select(PURPOSES.map((p): [string, string] => [p, words(p)]), "service_provision");
  const days = Math.min(90, s.maxConsentDays);
  const until = h("input", { type: "date", value: new Date(Date.now() + days * DAY).toISOString().slice(0, 10) });
  const button = h("button", { type: "submit" }, "Add consent");
  const form = h("form", { class: "panel", "aria-labelledby": "amend-title" },
    h("h2", { id: "amend-title" }, "Add consent"),
    h("p", { class: "hint" }, "Only with the survivor's consent. The recipient can read the field from its next open."),
    labelled("Field", field), labelled("Recipient", recipient), labelled("Purpose", purpose),
    labelled("Until", until, `At most ${s.maxConsentDays} days from today.`), button);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      button.disabled = true;
      try {
        const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
        const n = Math.round((Date.parse(until.value) - today) / DAY);
        if (!(n >= 1 && n <= s.maxConsentDays)) throw new Error(`Consent must last 1 to ${s.maxConsentDays} days (the server's maximum). Pick another date.`);
        const expiresAt = new Date(Math.floor(Date.now() / 1000) * 1000 + n * DAY).toISOString().replace(/\.\d{3}Z$/, "Z");
        const who = recipient.selectedOptions[0]?.textContent ?? "";
        say(`Checking ${who}'s key against the audit log…`);
        const [, encPublic] = await s.trust.agencyKey(recipient.value, "enc");
        for (let attempt = 0; ; attempt++) {
          const document = await s.api.get<unknown>(`/v1/referrals/${id}`);
          const amendment = amend({
            document, senderAgency: s.agencyId, senderSigSeed: s.secrets.sigSeed, senderEncPrivate: s.secrets.encPrivate,
            grants: [{ field: field.value, recipient: recipient.value, encPublic, purpose: purpose.value, expiresAt }], requests: [],
          });
          try {
            await s.api.post(`/v1/referrals/${id}/grants`, amendment);
            break;
          } catch (exc) {
            if (!(exc instanceof ApiError && exc.status === 409 && attempt < 2)) throw exc;
          }
        }
        await render(id, body);
        say(`${who} can read ${fieldLabel(field.value)} until ${day(expiresAt)}.`);
      } catch (exc) {
        showError(form, exc);
      } finally {
        button.disabled = false;
      }
    })();
  });
  return form;
}
