/**
 * Trust settings, like `refgate configure --log-key K --witness V… --quorum N`:
 * the audit log's key, the task force's witness keys and how many of them must
 * have cosigned every checkpoint this browser accepts. Public data only,
 * stored with the log pin of this key file (localStorage `refgate.pin.<kid>`).
 * A change is saved only after the server's latest checkpoint passes it.
 */
import { parseWitnessKey, validCosigners } from "../crypto/cosignature";
import { session } from "../session";
import { h, labelled, say, showError } from "../ui";

export function settingsView(): HTMLElement {
  const s = session();
  const now = s.trust.settings;
  const logKey = h("input", { type: "text", spellcheck: false, autocomplete: "off", value: now.logKey });
  const witnesses = h("textarea", { rows: 4, spellcheck: false, autocomplete: "off" });
  witnesses.value = now.witnesses.join("\n");
  const quorum = h("input", { type: "number", min: 0, max: 32, step: 1, inputmode: "numeric", value: String(now.quorum) });
  const state = h("div", { class: "panel", "aria-live": "polite" });
  const save = h("button", { type: "submit" }, "Save and check");
  const drawState = (): void => {
    const cp = s.trust.checkpoint;
    const t = s.trust.settings;
    const cosigners = cp ? validCosigners(cp, t.witnesses.map(parseWitnessKey)) : [];
    state.replaceChildren(h("h2", {}, "In force"), h("ul", {},
      h("li", {}, `Log key: ${t.logKey}`),
      h("li", {}, t.quorum
        ? `Every checkpoint must be cosigned by ${t.quorum} of ${t.witnesses.length} witness${t.witnesses.length === 1 ? "" : "es"}.`
        : "No witness is required: a server could show this browser a log nobody else sees. Ask your task force for its witness keys."),
      cp ? h("li", {}, `Latest verified checkpoint: size ${cp.size}${cosigners.length ? `, cosigned by ${cosigners.join(", ")}` : ""}.`) : null));
  };
  const form = h("form", { "aria-labelledby": "view-title", novalidate: true },
    h("h1", { id: "view-title", tabindex: -1 }, "Trust settings"),
    h("p", {}, "The keys your task force handed out: the audit log's key and its witnesses' keys. They are public, and stored in this browser for this key file only."),
    labelled("Log key", logKey, "The audit log key from your task force's notice. Changing it forgets the checkpoint pinned with the old key."),
    labelled("Witness keys", witnesses, "One witness verifier key per line, as your task force published them."),
    labelled("Quorum", quorum, "How many of these witnesses must have cosigned every checkpoint this browser accepts."),
    save, state);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    void (async () => {
      save.disabled = true;
      form.querySelectorAll(":scope > .error").forEach((e) => e.remove());
      try {
        const k = Number(quorum.value.trim() || "0");
        say("Checking the audit log with these settings…");
        const cp = await s.trust.configure({ logKey: logKey.value, witnesses: witnesses.value.split("\n"), quorum: k });
        drawState();
        document.querySelector("header .notice")?.remove(); // the log key is now pinned on purpose
        say(`Saved. The audit log's checkpoint of size ${cp.size} passes these settings.`);
      } catch (exc) {
        showError(form, new Error(`Nothing was changed. ${(exc as Error).message}`));
      } finally {
        save.disabled = false;
      }
    })();
  });
  drawState();
  return form;
}
