/**
 * Compose: recipients, fields (standard and custom), a consent matrix of
 * fields × recipients with purpose and expiry per cell, a request per
 * recipient, a plain-words summary, then sealing in the page and sending.
 */
import { sealEnvelope, type Grant, type Request } from "../crypto/envelope";
import { ACCEPTING, FIELD_NAME_RE, POPULATIONS, PURPOSES, SERVICES, STANDARD_FIELDS, URGENCIES } from "../crypto/wire";
import { session } from "../session";
import { day, fieldLabel, h, labelled, say, select, showError, uid, words } from "../ui";
import { ACCEPTING_WORDS, age, capacityText, loadRecipients, type DirectoryService, type Recipient } from "./recipients";

const DAY = 86_400_000;

interface Cell { share: HTMLInputElement; purpose: HTMLSelectElement; until: HTMLInputElement }
interface Ask { services: HTMLSelectElement; urgency: HTMLSelectElement; caseRef: HTMLInputElement }

function isoDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

export function composeView(onSent: (id: string) => void): HTMLElement {
  const s = session();
  const maxDays = s.maxConsentDays;
  const defaultDays = Math.min(90, maxDays);
  const today = Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate());
  const main = h("section", { "aria-labelledby": "view-title" }, h("h1", { id: "view-title", tabindex: -1 }, "New referral"));
  const form = h("form", { novalidate: true });
  main.append(form);

  // ---- recipients: found in the service directory
  const chosen = new Map<string, Recipient>();
  const any: [string, string] = ["", "Any"];
  const fService = select([any, ...SERVICES.map((x): [string, string] => [x, words(x)])]);
  const fLanguage = h("input", { type: "text", spellcheck: false, autocomplete: "off", maxlength: 63 });
  const fPopulation = select([any, ...POPULATIONS.map((x): [string, string] => [x, words(x)])]);
  const fAccepting = select([any, ...ACCEPTING.map((x): [string, string] => [x, ACCEPTING_WORDS[x] ?? x])]);
  const fText = h("input", { type: "search", autocomplete: "off", maxlength: 200 });
  const find = h("button", { type: "button", class: "secondary" }, "Search the directory");
  const results = h("div", { "aria-live": "polite" });
  const chosenBox = h("div", {});
  let found: Recipient[] = [];
  const serviceLine = (svc: DirectoryService): HTMLElement => h("li", {},
    h("span", { class: "service" }, svc.name), " — ",
    h("span", { class: `accepting accepting-${svc.accepting}` }, ACCEPTING_WORDS[svc.accepting] ?? svc.accepting), ", ",
    capacityText(svc.capacity), " ", h("span", { class: "hint" }, `(${age(svc.capacity.updated_at)})`));
  const pickBox = (r: Recipient): HTMLElement => {
    // one id per agency: it moves between the results and "Chosen", and keeps the focus
    const box = h("input", { type: "checkbox", id: `pick-${r.id}`, checked: chosen.has(r.id), value: r.id });
    box.addEventListener("change", () => {
      if (box.checked) chosen.set(r.id, r);
      else chosen.delete(r.id);
      drawRecipients();
      drawMatrix();
      (document.getElementById(box.id) as HTMLInputElement | null)?.focus();
    });
    return h("li", {}, h("div", { class: "checkbox" }, box, h("label", { for: box.id }, `${r.name} `, h("span", { class: "hint" }, `(${words(r.kind)})`))),
      h("ul", { class: "services" }, r.services.map(serviceLine)));
  };
  function drawRecipients(): void {
    const chosenList = [...chosen.values()];
    chosenBox.replaceChildren(chosenList.length
      ? h("div", {}, h("h2", {}, `Chosen (${chosenList.length})`), h("ul", { class: "plain picker" }, chosenList.map((r) => pickBox(r))))
      : h("p", { class: "hint" }, "No recipient chosen yet."));
    const others = found.filter((r) => !chosen.has(r.id));
    results.replaceChildren(h("h2", {}, "Search results"), others.length
      ? h("ul", { class: "plain picker" }, others.map((r) => pickBox(r)))
      : h("p", {}, found.length ? "Every agency found is already chosen." : "No agency in the directory matches. Widen the search (fewer filters)."));
  }
  const search = async (): Promise<void> => {
    find.disabled = true;
    try {
      say("Searching the service directory…");
      found = await loadRecipients({
        category: fService.value, language: fLanguage.value, population: fPopulation.value,
        accepting: fAccepting.value, q: fText.value,
      });
      // a chosen agency keeps the services it was chosen for; new ones are shown fresh
      drawRecipients();
      say(`${found.length} ${found.length === 1 ? "agency" : "agencies"} found.`);
    } catch (exc) {
      showError(results, exc);
    } finally {
      find.disabled = false;
    }
  };
  find.addEventListener("click", () => void search());
  for (const input of [fLanguage, fText]) {
    input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault(); // search, not submit the referral
        void search();
      }
    });
  }
  form.append(h("fieldset", {}, h("legend", {}, "1. Recipients"),
    h("p", { class: "hint" }, "Find who can take her: search the task force's service directory, then tick each agency to send to. Those accepting and with the freshest capacity come first."),
    h("div", { class: "filters" },
      labelled("Service", fService), labelled("Language", fLanguage, "A language tag such as es, fa or zh-Hant; es also finds es-MX."),
      labelled("Population", fPopulation), labelled("Accepting", fAccepting), labelled("Words in the service's name or description", fText)),
    find, chosenBox, results));

  // ---- fields
  const values = new Map<string, HTMLTextAreaElement>();
  const fieldsBox = h("div", {});
  const addField = (name: string): void => {
    const area = h("textarea", { rows: name === "narrative" ? 4 : 1, "data-field": name });
    area.addEventListener("input", drawMatrix);
    values.set(name, area);
    fieldsBox.append(labelled(fieldLabel(name), area));
  };
  STANDARD_FIELDS.forEach(addField);
  const customName = h("input", { type: "text", spellcheck: false, pattern: FIELD_NAME_RE.source.slice(1, -1) });
  const addCustom = h("button", { type: "button", class: "secondary" }, "Add field");
  const customBox = h("div", { class: "inline" }, labelled("Custom field name", customName, "Lowercase letters, digits and _; for example shelter_address."), addCustom);
  addCustom.addEventListener("click", () => {
    const name = customName.value.trim();
    if (!FIELD_NAME_RE.test(name) || values.has(name)) {
      showError(customBox, new Error(values.has(name) ? `There is already a field named ${name}.` : "A field name starts with a lowercase letter and has only lowercase letters, digits and _ (at most 64)."));
      return;
    }
    customName.value = "";
    addField(name);
    values.get(name)?.focus();
  });
  form.append(h("fieldset", {}, h("legend", {}, "2. Fields"),
    h("p", { class: "hint" }, "Only fields you fill in are sent. Each is encrypted in this browser."), fieldsBox, customBox));

  // ---- consent matrix and requests
  const cells = new Map<string, Cell>(); // `${field}|${recipient}`
  const asks = new Map<string, Ask>();
  const matrixBox = h("div", {});
  const asksBox = h("div", {});
  function drawMatrix(): void {
    const filled = [...values].filter(([, a]) => a.value.trim()).map(([n]) => n);
    const recipients = [...chosen.values()];
    if (!filled.length || !recipients.length) {
      matrixBox.replaceChildren(h("p", {}, "Choose recipients and fill in fields to set consent."));
    } else {
      const table = h("table", { class: "matrix" },
        h("caption", {}, "Who may read which field, for what purpose, until when"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Field"), recipients.map((r) => h("th", { scope: "col" }, r.name)))),
        h("tbody", {}, filled.map((f) => h("tr", {}, h("th", { scope: "row" }, fieldLabel(f)), recipients.map((r) => {
          const key = `${f}|${r.id}`;
          let cell = cells.get(key);
          if (!cell) {
            cell = {
              share: h("input", { type: "checkbox", id: uid("c") }),
              purpose: select(PURPOSES.map((p): [string, string] => [p, words(p)]), r.kind === "law_enforcement" ? "investigation" : "service_provision"),
              until: h("input", { type: "date", value: isoDay(today + defaultDays * DAY), min: isoDay(today + DAY), max: isoDay(today + maxDays * DAY) }),
            };
            cell.purpose.setAttribute("aria-label", `Purpose for ${fieldLabel(f)} to ${r.name}`);
            cell.until.setAttribute("aria-label", `${fieldLabel(f)} readable by ${r.name} until`);
            cells.set(key, cell);
          }
          return h("td", {}, h("div", { class: "checkbox" }, cell.share, h("label", { for: cell.share.id }, `Share ${fieldLabel(f)} with ${r.name}`)), cell.purpose, cell.until);
        })))));
      matrixBox.replaceChildren(table);
    }
    asksBox.replaceChildren(...recipients.map((r) => {
      let ask = asks.get(r.id);
      if (!ask) {
        ask = {
          services: select(SERVICES.map((x): [string, string] => [x, words(x)])),
          urgency: select(URGENCIES.map((u): [string, string] => [u, words(u)]), "urgent"),
          caseRef: h("input", { type: "text", spellcheck: false, pattern: "[A-Za-z0-9._-]{1,64}" }),
        };
        ask.services.multiple = true;
        ask.services.size = 5;
        asks.set(r.id, ask);
      }
      return h("fieldset", {}, h("legend", {}, `Request to ${r.name}`),
        labelled(`Services asked of ${r.name}`, ask.services, "Hold Ctrl (or Cmd) to choose several."),
        labelled(`Urgency for ${r.name}`, ask.urgency),
        labelled(`Case reference for ${r.name} (optional)`, ask.caseRef));
    }));
  }
  form.append(h("fieldset", {}, h("legend", {}, "3. Consent"), matrixBox), h("fieldset", {}, h("legend", {}, "4. Requests"), asksBox));

  // ---- summary and send
  const summary = h("div", { class: "panel", "aria-live": "polite" });
  const review = h("button", { type: "submit" }, "Review");
  form.append(review, summary);

  const plan = (): { fields: [string, string][]; grants: (Omit<Grant, "encPublic">)[]; requests: Request[]; lines: string[] } => {
    const fields = [...values].filter(([, a]) => a.value.trim()).map(([n, a]): [string, string] => [n, a.value]);
    if (!fields.length) throw new Error("Fill in at least one field.");
    if (!chosen.size) throw new Error("Choose at least one recipient.");
    const nowMs = Date.now();
    const grants: Omit<Grant, "encPublic">[] = [];
    const lines: string[] = [];
    for (const r of chosen.values()) {
      const mine = fields.map(([f]) => f).filter((f) => cells.get(`${f}|${r.id}`)?.share.checked);
      if (!mine.length) throw new Error(`${r.name} would receive no field. Tick at least one field for it in the consent table, or remove it from the recipients: a referral may not deliver nothing to someone.`);
      const parts: string[] = [];
      for (const f of mine) {
        const cell = cells.get(`${f}|${r.id}`) as Cell;
        const days = Math.round((Date.parse(cell.until.value) - today) / DAY);
        if (!(days >= 1 && days <= maxDays)) throw new Error(`Consent for ${fieldLabel(f)} to ${r.name} must last 1 to ${maxDays} days (the server's maximum). Pick another date.`);
        const expiresAt = new Date(Math.floor(nowMs / 1000) * 1000 + days * DAY).toISOString().replace(/\.\d{3}Z$/, "Z");
        grants.push({ field: f, recipient: r.id, purpose: cell.purpose.value, expiresAt });
        parts.push(`${fieldLabel(f)} until ${day(expiresAt)} (${words(cell.purpose.value)})`);
      }
      lines.push(`${r.name} can read ${parts.join(", ")}.`);
    }
    const requests: Request[] = [...chosen.values()].map((r) => {
      const ask = asks.get(r.id) as Ask;
      const services = [...ask.services.selectedOptions].map((o) => o.value);
      if (!services.length) throw new Error(`Choose at least one service to ask of ${r.name}.`);
      const caseRef = ask.caseRef.value.trim() || null;
      if (caseRef && !/^[A-Za-z0-9._-]{1,64}$/.test(caseRef)) throw new Error(`The case reference for ${r.name} may only have letters, digits, . _ and - (at most 64).`);
      return { recipient: r.id, services, urgency: ask.urgency.value, caseRef };
    });
    const unshared = fields.map(([f]) => f).filter((f) => !grants.some((g) => g.field === f));
    if (unshared.length) lines.push(`Only your agency can read ${unshared.map(fieldLabel).join(", ")}.`);
    return { fields, grants, requests, lines };
  };

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    summary.replaceChildren();
    let p: ReturnType<typeof plan>;
    try {
      p = plan();
    } catch (exc) {
      showError(summary, exc);
      return;
    }
    const send = h("button", { type: "button" }, "Send referral");
    summary.append(h("h2", { id: "summary-title", tabindex: -1 }, "Summary"), h("ul", {}, p.lines.map((l) => h("li", {}, l))), send);
    (summary.querySelector("#summary-title") as HTMLElement).focus();
    send.addEventListener("click", () => {
      void (async () => {
        send.disabled = true;
        const recipients = [...new Set(p.grants.map((g) => g.recipient))];
        // one step per recipient's key check, then encrypting and sending
        const bar = h("progress", { max: recipients.length + 2, value: 0, "aria-label": "Sending the referral" });
        const step = h("span", {}, "");
        const box = h("p", { class: "progress" }, bar, " ", step);
        const progress = (done: number, text: string): void => {
          bar.value = done;
          step.textContent = text;
          say(text);
        };
        send.after(box);
        try {
          const keysOf = new Map<string, Uint8Array>();
          for (const [i, r] of recipients.entries()) {
            progress(i, `Checking ${chosen.get(r)?.name}'s key against the audit log (${i + 1} of ${recipients.length})…`);
            keysOf.set(r, (await s.trust.agencyKey(r, "enc"))[1]);
          }
          progress(recipients.length, `Encrypting for ${recipients.length} recipient${recipients.length === 1 ? "" : "s"} in this browser…`);
          const referralId = crypto.randomUUID();
          const sealed = sealEnvelope({
            referralId, senderAgency: s.agencyId, senderSigSeed: s.secrets.sigSeed, senderEncPublic: s.encPublic,
            fields: p.fields, grants: p.grants.map((g) => ({ ...g, encPublic: keysOf.get(g.recipient) as Uint8Array })),
            requests: p.requests, createdAt: new Date().toISOString().replace(/\.\d{3}Z$/, "Z"),
          });
          progress(recipients.length + 1, "Sending…");
          await s.api.post("/v1/referrals", sealed.body, { "idempotency-key": crypto.randomUUID() });
          for (const a of values.values()) a.value = "";
          say("Referral sent.");
          onSent(referralId);
        } catch (exc) {
          box.remove();
          showError(summary, exc);
          send.disabled = false;
        }
      })();
    });
  });

  void (async () => {
    await search();
    drawMatrix();
  })();
  return main;
}
