/** Sign in: open the key file in the page, check the audit log, get a token. */
import { Api } from "../api";
import { KeyFileError, parseKeyFile } from "../crypto/keyfile";
import { encPublicFromPrivate, kid, sigPublicFromSeed } from "../crypto/keys";
import { utf8 } from "../crypto/encoding";
import { ready } from "../crypto/sodium";
import { start } from "../session";
import { Trust } from "../trust";
import { unsealInWorker } from "../unseal";
import { h, labelled, say, showError } from "../ui";
import { registrationInputs } from "./onboarding";

export function unlockView(onDone: () => void): HTMLElement {
  const file = h("input", { type: "file", accept: ".json,application/json", required: true });
  const pass = h("input", { type: "password", autocomplete: "current-password" });
  const logKey = h("input", { type: "text", spellcheck: false, autocomplete: "off" });
  const forget = h("input", { type: "checkbox" });
  const ids = registrationInputs();
  const button = h("button", { type: "submit" }, "Unlock");
  const form = h("form", { class: "panel", "aria-labelledby": "unlock-title" },
    h("h1", { id: "unlock-title" }, "Sign in with your agency's key file"),
    h("p", {}, "Your key file is opened in this browser only. Its keys never leave this page and are forgotten when you lock, reload or close the tab."),
    labelled("Key file", file, "The file made by \"refgate keygen\" (for example agency.key.json)."),
    labelled("Passphrase", pass, "Only if your key file is protected by a passphrase."),
    labelled("Log key (optional)", logKey, "The audit log key your task force gave you. Leave empty if it was pinned on an earlier sign-in."),
    ids.fields,
    h("div", { class: "control checkbox" }, forget, h("label", { for: (forget.id ||= "forget-pin") }, "Forget the pinned log key (only when your task force tells you it changed)")),
    button,
    h("p", {}, "New agency without a key file? ", h("a", { href: "#/onboard" }, "Create my agency's keys")),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      button.disabled = true;
      try {
        await ready();
        const chosen = file.files?.[0];
        if (!chosen) throw new KeyFileError("Choose your key file first.");
        const parsed = parseKeyFile(await chosen.text());
        const { agencyId, clientId } = ids.resolve(parsed.settings);
        if (!agencyId || !clientId) {
          throw new KeyFileError("This key file is not registered yet (it has no agency or client id). Ask your administrator to register it, then type the agency and client ids they give you under \"New key file only\" (or record them with \"refgate configure\").");
        }
        if (parsed.sealed && !pass.value) throw new KeyFileError("This key file is protected: enter its passphrase.");
        let secrets;
        if (parsed.sealed) {
          // Argon2id runs in a worker: the page stays responsive and shows how long it has worked
          const bar = h("progress", { "aria-label": "Opening the key file" });
          const elapsed = h("span", {}, "");
          const box = h("p", { class: "progress" }, bar, " Opening the key file with your passphrase… this takes a few seconds. ", elapsed);
          button.after(box);
          say("Opening the key file… this takes a few seconds.");
          try {
            secrets = await unsealInWorker(parsed, utf8(pass.value), (sec) => { elapsed.textContent = `${sec} s`; });
          } finally {
            box.remove();
          }
        } else {
          secrets = parsed.plain as NonNullable<typeof parsed.plain>;
        }
        pass.value = "";
        file.value = "";
        say("Signing in and checking the audit log…");
        const api = new Api(clientId, secrets.authSeed);
        const trust = new Trust(api, `refgate.pin.${kid(sigPublicFromSeed(secrets.authSeed))}`);
        await trust.init(logKey.value.trim() || null, forget.checked);
        const own = await trust.agency(agencyId);
        const limits = await api.get<{ max_consent_days: number }>("/v1/limits");
        start({
          agencyId, clientId, role: parsed.settings.role, agencyName: own.name, secrets,
          encPublic: encPublicFromPrivate(secrets.encPrivate), api, trust, settings: parsed.settings,
          maxConsentDays: limits.max_consent_days,
        });
        say(trust.firstUse
          ? `Signed in as ${own.name}. No log key was pinned: the server's key was trusted on first use and is pinned from now on.`
          : `Signed in as ${own.name}.`);
        onDone();
      } catch (exc) {
        pass.value = "";
        showError(form, exc instanceof KeyFileError && /cannot open/.test(exc.message)
          ? new Error("The passphrase is wrong, or the key file was changed. Type the passphrase again.")
          : exc);
      } finally {
        button.disabled = false;
      }
    })();
  });
  return form;
}
