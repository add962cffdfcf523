/**
 * The task-force administrator: onboard an agency from its public keys (pasted,
 * or read from the public-key file the onboarding page makes), register and
 * revoke its API clients, suspend, reactivate and rotate keys; every action
 * asks for confirmation in plain words, says what it did, and is audited by
 * the server. Each agency's leaf in the signed key directory is verified in
 * this browser (the checkpoint's `directory` line and the leaf's proof).
 */
import { ApiError } from "../api";
import { directoryLine } from "../crypto/checkpoint";
import { verifyDirectoryProof } from "../crypto/directory";
import { b64urlDecode } from "../crypto/encoding";
import { KeyFileError, parsePublicKeyFile } from "../crypto/keyfile";
import { kid } from "../crypto/keys";
import { session } from "../session";
import type { AgencyEntry } from "../trust";
import { h, labelled, say, select, showError, words } from "../ui";
import { AGENCY_KINDS, ROLES as ROLE_NAMES } from "../vocab";

const KINDS: readonly string[] = AGENCY_KINDS;
const ROLES: readonly string[] = ROLE_NAMES;

interface Client { client_id: string; agency_id: string; role: string; auth_kid: string; status: string }

function keyInput(): HTMLInputElement {
  return h("input", { type: "text", spellcheck: false, autocomplete: "off", maxlength: 43, class: "key" });
}

function checkKey(value: string, what: string): string {
  const v = value.trim();
  try {
    b64urlDecode(v, 32);
  } catch {
    throw new KeyFileError(`The ${what} is not a public key: it must be 43 letters, digits, "-" or "_". Copy it again from the agency's public-key file.`);
  }
  return v;
}

/** A file input that fills key inputs from a public-key file. */
function publicKeyFileInput(fill: (keys: ReturnType<typeof parsePublicKeyFile>) => void, where: () => HTMLElement): HTMLInputElement {
  const file = h("input", { type: "file", accept: ".json,application/json" });
  file.addEventListener("change", () => {
    void (async () => {
      const chosen = file.files?.[0];
      if (!chosen) return;
      try {
        fill(parsePublicKeyFile(await chosen.text()));
        say(`Read the public keys from ${chosen.name}.`);
      } catch (exc) {
        file.value = "";
        showError(where(), exc);
      }
    })();
  });
  return file;
}

/** Where the last action's confirmation is shown (the view's own region). */
let notice: HTMLElement | null = null;

function note(text: string): void {
  if (notice) confirmed(notice, text);
}

export function adminView(): HTMLElement {
  const body = h("div", {});
  const done = h("div", {});
  notice = done;
  const main = h("section", { "aria-labelledby": "view-title" },
    h("h1", { id: "view-title", tabindex: -1 }, "Agencies"),
    h("p", {}, "Onboard agencies and their API clients, suspend or reactivate them, rotate their keys. Every action is written to the audit log."),
    done, onboardForm(done, () => void list(body)), body);
  void list(body);
  return main;
}

function confirmed(where: HTMLElement, text: string): void {
  where.replaceChildren(h("p", { class: "panel ok", role: "status", tabindex: -1 }, text));
  (where.firstElementChild as HTMLElement).focus();
  say(text);
}

function onboardForm(done: HTMLElement, refresh: () => void): HTMLElement {
  const s = session();
  const name = h("input", { type: "text", autocomplete: "off" });
  const kind = select(KINDS.map((k): [string, string] => [k, words(k)]), "ngo");
  const enc = keyInput();
  const sign = keyInput();
  const auth = keyInput();
  const role = select(ROLES.map((r): [string, string] => [r, r]), "caseworker");
  const form: HTMLFormElement = h("form", { class: "panel", "aria-labelledby": "onboard-title" },
    h("h2", { id: "onboard-title" }, "Onboard an agency"),
    labelled("Public-key file (optional)", publicKeyFileInput((k) => {
      enc.value = k.enc_key;
      sign.value = k.sign_key;
      auth.value = k.auth_key;
      if (k.name && !name.value) name.value = k.name;
      if (k.role && ROLES.includes(k.role)) role.value = k.role;
    }, () => form), "The file the agency made on \"Create my agency's keys\". It fills the keys below."),
    labelled("Agency name", name), labelled("Kind", kind),
    labelled("Encryption key (X25519)", enc), labelled("Signing key (Ed25519)", sign),
    labelled("Client sign-in key (Ed25519, optional)", auth, "When given, a client is registered for the agency with the role below."),
    labelled("Client role", role),
    h("button", { type: "submit" }, "Onboard the agency"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      try {
        const agencyName = name.value.trim();
        if (!agencyName) throw new KeyFileError("Type the agency's name.");
        const encKey = checkKey(enc.value, "encryption key");
        const signKey = checkKey(sign.value, "signing key");
        const authKey = auth.value.trim() ? checkKey(auth.value, "client sign-in key") : null;
        if (!confirm(`Onboard ${agencyName} (${words(kind.value)})${authKey ? ` and register its ${role.value} client` : ""}? Referrals can be sent to it at once.`)) return;
        const agency = await s.api.post<AgencyEntry>("/v1/agencies", { name: agencyName, kind: kind.value, enc_key: encKey, sign_key: signKey });
        let text = `${agency.name} is onboarded. Its agency id is ${agency.id}.`;
        if (authKey) {
          const client = await s.api.post<Client>(`/v1/agencies/${agency.id}/clients`, { role: role.value, auth_key: authKey });
          text += ` Its ${client.role} client is registered: client id ${client.client_id}. Give the agency both ids; they type them when they first sign in with their key file.`;
        }
        form.reset();
        confirmed(done, text);
        refresh();
      } catch (exc) {
        showError(form, exc);
      }
    })();
  });
  return form;
}

async function list(body: HTMLElement): Promise<void> {
  const s = session();
  say("Loading the agencies and checking each against the signed key directory…");
  try {
    const agencies = (await s.api.get<{ items: AgencyEntry[] }>("/v1/agencies", { limit: "500" })).items;
    const cp = await s.trust.latest();
    const dir = directoryLine(cp);
    const rows: HTMLElement[] = [];
    for (const a of agencies.sort((x, y) => x.name.localeCompare(y.name))) {
      rows.push(h("tr", {}, h("th", { scope: "row" }, a.name), h("td", {}, words(a.kind)), h("td", {}, a.status),
        h("td", {}, await leafText(a, cp.size, dir)), h("td", {}, actions(a, body))));
    }
    body.replaceChildren(h("table", {},
      h("caption", {}, `Agencies (${agencies.length}); key directory checked against the signed checkpoint of size ${cp.size}`),
      h("thead", {}, h("tr", {}, ["Agency", "Kind", "Status", "Key directory (verified in this browser)", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
    say(`${agencies.length} agencies loaded.`);
  } catch (exc) {
    showError(body, exc);
  }
}

async function leafText(a: AgencyEntry, size: number, dir: { size: number; root: Uint8Array } | null): Promise<HTMLElement> {
  if (!dir) return h("span", {}, "This checkpoint has no key directory.");
  try {
    const proof = await session().api.get<unknown>(`/v1/agencies/${a.id}/keys/proof`, { tree_size: String(size) });
    const leaf = verifyDirectoryProof(proof, a.id, dir);
    const current = (use: string): string | null => {
      const k = a.keys.find((x) => x.use === use && x.status === "current");
      try {
        return k ? kid(b64urlDecode(k.public_key, 32)) : null;
      } catch {
        return null;
      }
    };
    const same = leaf.status === a.status && leaf.enc_kid === current("enc") && leaf.sig_kid === current("sig");
    return same
      ? h("span", { class: "ok" }, `Verified: ${leaf.status}, keys as listed (log event ${leaf.event}).`)
      : h("strong", { class: "bad" }, `Does not match: the signed directory says ${leaf.status} with other keys than the server lists. Report it to your oversight office.`);
  } catch (exc) {
    if (exc instanceof ApiError && (exc.status === 409 || exc.status === 503 || exc.status === 404)) {
      return h("span", {}, "Not yet in the signed directory (it is added within a minute or two).");
    }
    return h("strong", { class: "bad" }, `Not verified: ${(exc as Error).message}`);
  }
}

function actions(a: AgencyEntry, body: HTMLElement): HTMLElement {
  const s = session();
  const cell = h("div", {});
  const act = (label: string, question: string, run: () => Promise<string>): HTMLButtonElement => {
    const b = h("button", { type: "button", class: "secondary" }, label, h("span", { class: "visually-hidden" }, ` ${a.name}`));
    b.addEventListener("click", () => {
      void (async () => {
        if (!confirm(question)) return;
        try {
          const text = await run();
          await list(body);
          note(text);
        } catch (exc) {
          showError(cell, exc);
        }
      })();
    });
    return b;
  };
  if (a.status === "active") {
    cell.append(act("Suspend", `Suspend ${a.name}? Its clients get no new sign-ins and nothing more is sent to it until you reactivate it.`, async () => {
      await s.api.post(`/v1/agencies/${a.id}/suspend`, undefined);
      return `${a.name} is suspended. Its clients cannot sign in and nothing is sent to it.`;
    }));
  } else {
    cell.append(act("Reactivate", `Reactivate ${a.name}? Its clients can sign in again and referrals can be sent to it.`, async () => {
      await s.api.post(`/v1/agencies/${a.id}/reactivate`, undefined);
      return `${a.name} is active again.`;
    }));
  }
  cell.append(clientForms(a, body), rotateForm(a, body));
  return cell;
}

function clientForms(a: AgencyEntry, body: HTMLElement): HTMLElement {
  const s = session();
  const role = select(ROLES.map((r): [string, string] => [r, r]), "caseworker");
  const auth = keyInput();
  const revokeId = h("input", { type: "text", spellcheck: false, autocomplete: "off" });
  const register: HTMLFormElement = h("form", { "aria-label": `Register a client of ${a.name}` },
    labelled("Public-key file", publicKeyFileInput((k) => { auth.value = k.auth_key; if (k.role && ROLES.includes(k.role)) role.value = k.role; }, () => register)),
    labelled("Client sign-in key", auth), labelled("Role", role), h("button", { type: "submit" }, "Register the client"));
  const revoke: HTMLFormElement = h("form", { "aria-label": `Revoke a client of ${a.name}` },
    labelled("Client id", revokeId), h("button", { type: "submit", class: "secondary" }, "Revoke the client"));
  register.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      try {
        const key = checkKey(auth.value, "client sign-in key");
        if (!confirm(`Register a ${role.value} client for ${a.name}? Whoever holds the matching key file can then sign in as ${a.name}.`)) return;
        const c = await s.api.post<Client>(`/v1/agencies/${a.id}/clients`, { role: role.value, auth_key: key });
        register.reset();
        note(`A ${c.role} client of ${a.name} is registered: client id ${c.client_id} (agency id ${a.id}). Give both ids to the agency.`);
      } catch (exc) {
        showError(register, exc);
      }
    })();
  });
  revoke.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      try {
        const id = revokeId.value.trim().toLowerCase();
        if (!/^[0-9a-f-]{36}$/.test(id)) throw new KeyFileError("Type the client id to revoke (36 letters, digits and dashes).");
        if (!confirm(`Revoke client ${id} of ${a.name} for good? It cannot sign in again; its current sign-in stops working at once.`)) return;
        await s.api.post(`/v1/agencies/${a.id}/clients/${id}/revoke`, undefined);
        revoke.reset();
        note(`Client ${id} of ${a.name} is revoked for good.`);
      } catch (exc) {
        showError(revoke, exc);
      }
    })();
  });
  return h("details", {}, h("summary", {}, "Clients", h("span", { class: "visually-hidden" }, ` of ${a.name}`)), register, revoke);
}

function rotateForm(a: AgencyEntry, body: HTMLElement): HTMLElement {
  const s = session();
  const enc = keyInput();
  const sign = keyInput();
  const form: HTMLFormElement = h("form", { "aria-label": `Rotate the keys of ${a.name}` },
    labelled("Public-key file", publicKeyFileInput((k) => { enc.value = k.enc_key; sign.value = k.sign_key; }, () => form)),
    labelled("New encryption key", enc), labelled("New signing key", sign),
    h("button", { type: "submit", class: "secondary" }, "Rotate the keys"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      try {
        const encKey = enc.value.trim() ? checkKey(enc.value, "encryption key") : null;
        const signKey = sign.value.trim() ? checkKey(sign.value, "signing key") : null;
        if (!encKey && !signKey) throw new KeyFileError("Give a new encryption key, a new signing key, or both.");
        if (!confirm(`Rotate ${a.name}'s ${encKey && signKey ? "encryption and signing keys" : encKey ? "encryption key" : "signing key"}? New referrals use the new keys; the old ones stay listed as retired.`)) return;
        await s.api.post(`/v1/agencies/${a.id}/keys`, { enc_key: encKey, sign_key: signKey });
        await list(body);
        note(`${a.name}'s keys are rotated. The old keys are retired.`);
      } catch (exc) {
        showError(form, exc);
      }
    })();
  });
  return h("details", {}, h("summary", {}, "Rotate keys", h("span", { class: "visually-hidden" }, ` of ${a.name}`)), form);
}
