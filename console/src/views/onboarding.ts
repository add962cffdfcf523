/**
 * Onboarding a new agency: "Create my agency's keys". The X25519, Ed25519
 * (signing) and Ed25519 (client auth) keys are made in this page, sealed
 * under a passphrase with Argon2id in the key-file format of `refgate keygen
 * --passphrase` (so the CLI and SDK open it), and offered as a download. The
 * page then shows the public keys and offers a public-key file for the
 * administrator. Private keys leave the page only inside the sealed file;
 * nothing is sent to the server, and the raw keys are wiped once sealed.
 */
import { generateSecrets, KeyFileError, publicKeyFile, publicKeys, sealedKeyFile } from "../crypto/keyfile";
import { utf8 } from "../crypto/encoding";
import { lib, ready } from "../crypto/sodium";
import { h, labelled, paint, say, select, showError } from "../ui";

const MIN_PASSPHRASE = 12;
const ROLES: [string, string][] = [
  ["caseworker", "Caseworker (sends and follows referrals)"],
  ["liaison", "Liaison (receives referrals)"],
  ["auditor", "Auditor (reads and verifies the audit log)"],
  ["admin", "Administrator (onboards agencies and clients)"],
];

/** A file name from the agency's name: lower case letters, digits and dashes only. */
function stem(name: string): string {
  return name.toLowerCase().normalize("NFKD").replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "agency";
}

let urls: string[] = [];

/** A download link for JSON text (a Blob URL: the bytes stay in this page until saved). */
function download(text: string, filename: string, label: string): HTMLAnchorElement {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  urls.push(url);
  return h("a", { href: url, download: filename, class: "button" }, label);
}

export function onboardingView(): HTMLElement {
  for (const u of urls) URL.revokeObjectURL(u);
  urls = [];
  const name = h("input", { type: "text", autocomplete: "organization", spellcheck: false });
  const role = select(ROLES, "caseworker");
  const pass = h("input", { type: "password", autocomplete: "new-password" });
  const again = h("input", { type: "password", autocomplete: "new-password" });
  const button = h("button", { type: "submit" }, "Create my agency's keys");
  const result = h("section", { "aria-labelledby": "onboard-done", hidden: true });
  const form = h("form", { class: "panel", "aria-labelledby": "onboard-form" },
    h("h2", { id: "onboard-form" }, "Your agency and a passphrase"),
    labelled("Agency name", name, "As your task force knows it; it names the files and tells the administrator who you are."),
    labelled("Role of this key file", role, "What the people using this key file will do. Your administrator registers it with this role."),
    labelled("Passphrase", pass, `At least ${MIN_PASSPHRASE} characters. Anyone with the file and the passphrase can act as your agency; without the passphrase nobody can open it, not even us.`),
    labelled("Passphrase again", again),
    button,
  );
  const view = h("div", {},
    h("h1", { tabindex: -1 }, "Create my agency's keys"),
    h("p", {}, "This page makes your agency's keys in this browser: an encryption key, a signing key and a sign-in key. It locks them in a key file with your passphrase and saves that file to this computer. The private keys never leave this page except inside that locked file, and nothing is sent to the server."),
    h("p", {}, h("a", { href: "#/" }, "Back to sign in")),
    form, result,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      button.disabled = true;
      try {
        const agency = name.value.trim();
        if (!agency) throw new KeyFileError("Type your agency's name first.");
        if (pass.value.length < MIN_PASSPHRASE) throw new KeyFileError(`The passphrase is too short: use at least ${MIN_PASSPHRASE} characters (a few words is easiest to remember).`);
        if (pass.value !== again.value) throw new KeyFileError("The two passphrases are different. Type the same passphrase twice.");
        await ready();
        say("Creating the keys and locking them with your passphrase… this takes a few seconds.");
        await paint();
        const secrets = generateSecrets();
        const pub = publicKeys(secrets);
        const passphrase = utf8(pass.value);
        let file: Record<string, unknown>;
        try {
          file = sealedKeyFile(secrets, { server: location.origin, agency_id: null, client_id: null, role: role.value }, passphrase);
        } finally {
          lib().memzero(passphrase);
          lib().memzero(secrets.encPrivate);
          lib().memzero(secrets.sigSeed);
          lib().memzero(secrets.authSeed);
        }
        pass.value = "";
        again.value = "";
        const base = stem(agency);
        const keyLink = download(`${JSON.stringify(file, null, 2)}\n`, `${base}.key.json`, "Save the key file again");
        const pubText = `${JSON.stringify(publicKeyFile(pub, agency, role.value), null, 2)}\n`;
        const pubLink = download(pubText, `${base}.public.json`, "Download the public-key file");
        const rows: [string, string][] = [
          ["Encryption key (X25519)", pub.enc_key], ["Signing key (Ed25519)", pub.sign_key], ["Sign-in key (Ed25519)", pub.auth_key],
        ];
        result.replaceChildren(
          h("h2", { id: "onboard-done", tabindex: -1 }, "Your key file is ready"),
          h("p", {}, `Your browser saved ${base}.key.json. Keep it private and keep the passphrase apart from it: together they are your agency. If the download did not start, use this button:`),
          h("p", {}, keyLink),
          h("h2", {}, "Public keys for your administrator"),
          h("p", {}, "These are safe to share. Give the public-key file (or these three keys) to your task-force administrator, who registers your agency and a client with the role you chose. Then sign in with your key file."),
          h("dl", { class: "fields" }, rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: "key" }, v)])),
          h("p", {}, pubLink),
        );
        result.hidden = false;
        form.querySelectorAll(":scope > .error").forEach((e) => e.remove());
        keyLink.click();
        say("Your key file is ready and saved. Give the public-key file to your administrator.");
        (result.querySelector("h2") as HTMLElement).focus();
      } catch (exc) {
        pass.value = "";
        again.value = "";
        showError(form, exc);
      } finally {
        button.disabled = false;
      }
    })();
  });
  return view;
}

/**
 * Sign-in inputs for a key file made here (or by `refgate keygen` without ids):
 * the agency and client ids the administrator gave. The file's own ids win.
 */
export function registrationInputs(): {
  fields: HTMLElement;
  resolve: (s: { agency_id: string | null; client_id: string | null }) => { agencyId: string | null; clientId: string | null };
} {
  const agency = h("input", { type: "text", spellcheck: false, autocomplete: "off" });
  const client = h("input", { type: "text", spellcheck: false, autocomplete: "off" });
  const fields = h("fieldset", {},
    h("legend", {}, "New key file only"),
    h("p", { class: "hint" }, "If your key file was just made and registered, type the two ids your administrator gave you."),
    labelled("Agency id", agency), labelled("Client id", client));
  const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  const resolve = (s: { agency_id: string | null; client_id: string | null }): { agencyId: string | null; clientId: string | null } => {
    const typed = (el: HTMLInputElement, what: string): string | null => {
      const v = el.value.trim().toLowerCase();
      if (!v) return null;
      if (!uuid.test(v)) throw new KeyFileError(`The ${what} id should look like 8-4-4-4-12 letters and digits (for example 3f2a…-…). Copy it again from your administrator's message.`);
      return v;
    };
    return { agencyId: s.agency_id ?? typed(agency, "agency"), clientId: s.client_id ?? typed(client, "client") };
  };
  return { fields, resolve };
}
