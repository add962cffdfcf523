/**
 * The console's shell: a skip link, a header with the signed-in agency and
 * "Lock", navigation, one main region per view (hash routes), and a polite
 * live region for progress. Locked, every route shows the sign-in form;
 * a reload always starts locked, because keys exist only in memory.
 */
import { isUnlocked, lock, session } from "./session";
import { h } from "./ui";
import { adminView } from "./views/admin";
import { auditEventView, auditSearchView, logHealthView } from "./views/audit";
import { composeView } from "./views/compose";
import { inboxView } from "./views/lists";
import { onboardingView } from "./views/onboarding";
import { referralView } from "./views/referral";
import { settingsView } from "./views/settings";
import { reportView } from "./views/report";
import { unlockView } from "./views/unlock";

const ROUTES: [RegExp, string][] = [
  [/^#\/inbox$/, "Inbox"], [/^#\/sent$/, "Sent"], [/^#\/compose$/, "New referral"], [/^#\/referral\/[0-9a-f-]{36}$/, "Referral"],
  [/^#\/settings$/, "Trust settings"],
  // part 2 (issue 17)
  [/^#\/report\/[0-9a-f-]{36}$/, "Access report"], [/^#\/audit$/, "Audit log"], [/^#\/audit\/event\/[0-9]{1,18}$/, "Audit event"],
  [/^#\/audit\/health$/, "Log health"], [/^#\/admin$/, "Agencies"],
];

/** Where a role starts, and its views beyond the caseworker's (part 2). */
function home(role: string | null): string {
  return role === "auditor" ? "#/audit" : role === "admin" ? "#/admin" : "#/inbox";
}

function part2View(hash: string): HTMLElement | null {
  if (hash.startsWith("#/report/")) return reportView(hash.slice("#/report/".length));
  if (hash === "#/audit") return auditSearchView();
  if (hash === "#/admin") return adminView();
  if (hash === "#/audit/health") return logHealthView();
  if (hash.startsWith("#/audit/event/")) return auditEventView(Number(hash.slice("#/audit/event/".length)));
  return null;
}

function nav(role: string | null): HTMLElement {
  const here = location.hash || home(role);
  const link = (href: string, text: string): HTMLElement =>
    h("li", {}, h("a", { href, "aria-current": here === href ? "page" : undefined }, text));
  if (role === "admin") return h("nav", { "aria-label": "Main" }, h("ul", {}, link("#/admin", "Agencies")));
  if (role === "auditor") {
    return h("nav", { "aria-label": "Main" }, h("ul", {}, link("#/audit", "Audit log"), link("#/audit/health", "Log health")));
  }
  return h("nav", { "aria-label": "Main" }, h("ul", {},
    link("#/inbox", "Inbox"), link("#/compose", "New referral"), link("#/sent", "Sent"), link("#/settings", "Settings")));
}

function render(): void {
  const header = document.getElementById("header") as HTMLElement;
  const main = document.getElementById("main") as HTMLElement;
  header.replaceChildren(h("p", { class: "brand" }, "refgate"));
  if (!isUnlocked() && location.hash === "#/onboard") {
    document.title = "Create my agency's keys · refgate";
    main.replaceChildren(onboardingView());
    (main.querySelector("h1") as HTMLElement | null)?.focus();
    return;
  }
  if (!isUnlocked()) {
    document.title = "Sign in · refgate";
    main.replaceChildren(unlockView(() => {
      if (!ROUTES.some(([re]) => re.test(location.hash))) location.hash = home(isUnlocked() ? session().role : null);
      render();
    }));
    return;
  }
  const s = session();
  const lockButton = h("button", { type: "button", class: "secondary" }, "Lock");
  lockButton.addEventListener("click", () => {
    lock();
    location.hash = "";
    render();
  });
  header.append(h("p", { class: "who" }, `Signed in as ${s.agencyName}`), lockButton, nav(s.role));
  if (s.trust.firstUse) {
    header.append(h("p", { class: "notice", role: "note" },
      `No log key was pinned for this key file, so the server's was trusted on first use and pinned: ${s.trust.pinnedKey}. Compare it with the key your task force published.`));
  }
  const hash = location.hash || home(s.role);
  const route = ROUTES.find(([re]) => re.test(hash));
  let view: HTMLElement;
  const extra = route ? part2View(hash) : null;
  if (extra) view = extra;
  else if (s.role === "auditor") view = auditSearchView();
  else if (s.role === "admin") view = adminView();
  else if (hash === "#/sent") view = inboxView("sent");
  else if (hash === "#/compose") view = composeView((id) => { location.hash = `#/referral/${id}`; });
  else if (hash === "#/settings") view = settingsView();
  else if (route && hash.startsWith("#/referral/")) view = referralView(hash.slice("#/referral/".length));
  else view = inboxView("received");
  document.title = `${route?.[1] ?? (s.role === "auditor" ? "Audit log" : s.role === "admin" ? "Agencies" : "Inbox")} · refgate`;
  main.replaceChildren(view);
  (main.querySelector("h1") as HTMLElement | null)?.focus();
}

window.addEventListener("hashchange", render);
render();
