// Part 2 of the console in real headless Chromium, only through the page, against a
// live gateway (started by tests/console/test_console_part2_browser.py), one phase
// per run so that the test can act between phases (the CLI, the operator's SQL).
// Usage: node e2e/part2.mjs <config.json> <phase>; exits non-zero with a reason on failure.
//
//   onboard   a new agency makes its keys on "Create my agency's keys": the sealed
//             key file and the public-key file are downloaded (to config.onboard.*);
//             no request carries anything but the page's own assets.
//   admin     the administrator onboards it from the public-key file with its client;
//             the ids are written to config.out.
//   newagency the new agency's caseworker signs in with that sealed file, typing the
//             ids the administrator gave, and opens the referral sent to it.
//   report    the shelter's access report of its referral: the police read in plain
//             words, every event verified in the page; the print stylesheet.
//   auditor   the auditor finds the police read, verifies it in the page (its seq is
//             written to config.out), exports NDJSON, opens the log's health.
//   tampered  after the test rewrote that event by SQL: "Verification failed" in words.
//
// Every phase: requests stay on the origin and never carry a secret; axe-core finds
// no serious or critical violation; screenshots of each view (config.screenshots).
import assert from "node:assert/strict";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const phase = process.argv[3];
const BASE = config.url;
const origin = new URL(BASE).origin;
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const SHOTS = config.screenshots;
if (SHOTS) mkdirSync(SHOTS, { recursive: true });
const secrets = [config.passphrase, ...(config.secrets ?? [])];

const browser = await chromium.launch({ executablePath: config.chromium, args: ["--no-sandbox"] });
const problems = [];
const pages = [];

async function open(who, path) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const page = await context.newPage();
  pages.push([who, page]);
  const requests = [];
  page.on("request", (request) => {
    const url = request.url();
    requests.push(url);
    if (!url.startsWith("blob:") && new URL(url).origin !== origin) problems.push(`${who}: a request left the origin: ${url}`);
    const body = request.postData() ?? "";
    for (const s of secrets) if (s && (body.includes(s) || url.includes(s))) problems.push(`${who}: a request to ${url} carries a secret`);
  });
  page.on("pageerror", (e) => problems.push(`${who}: page error ${e.message}`));
  page.on("dialog", (d) => d.accept());
  const response = await page.goto(`${BASE}/console/${path}`);
  assert.equal(response.headers()["content-security-policy"], config.csp, "the CSP header is exact");
  return { context, page, who, requests };
}

async function axe(s, view) {
  await s.page.evaluate(AXE);
  const result = await s.page.evaluate(() => window.axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"] },
  }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  for (const v of bad) problems.push(`axe on ${view}: ${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join("; ")}`);
}

async function shot(s, name) {
  if (SHOTS) await s.page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function unlock(page, keyFile, passphrase, ids) {
  await page.getByRole("heading", { name: "Sign in with your agency's key file" }).waitFor();
  await page.getByLabel("Key file", { exact: true }).setInputFiles(keyFile);
  if (passphrase) await page.getByLabel("Passphrase", { exact: true }).fill(passphrase);
  if (ids) {
    await page.getByLabel("Agency id", { exact: true }).fill(ids.agency_id);
    await page.getByLabel("Client id", { exact: true }).fill(ids.client_id);
  }
  await page.getByRole("button", { name: "Unlock" }).click();
  await page.locator("header .who").waitFor({ timeout: 60_000 });
}

const phases = {
  async onboard() {
    const s = await open("new agency", "");
    // from the sign-in form, the way a new agency finds it
    await s.page.getByRole("link", { name: "Create my agency's keys" }).click();
    await s.page.getByRole("heading", { name: "Create my agency's keys", level: 1 }).waitFor();
    await axe(s, "onboarding form");
    await s.page.getByLabel("Agency name", { exact: true }).fill(config.onboard.name);
    await s.page.getByLabel("Role of this key file", { exact: true }).selectOption("caseworker");
    await s.page.getByLabel("Passphrase", { exact: true }).fill("too short");
    await s.page.getByLabel("Passphrase again", { exact: true }).fill("too short");
    await s.page.getByRole("button", { name: "Create my agency's keys" }).click();
    await s.page.getByRole("alert").getByText(/passphrase is too short/).waitFor();
    await s.page.getByLabel("Passphrase", { exact: true }).fill(config.passphrase);
    await s.page.getByLabel("Passphrase again", { exact: true }).fill(`${config.passphrase}x`);
    await s.page.getByRole("button", { name: "Create my agency's keys" }).click();
    await s.page.getByRole("alert").getByText(/two passphrases are different/).waitFor();
    await s.page.getByLabel("Passphrase", { exact: true }).fill(config.passphrase);
    await s.page.getByLabel("Passphrase again", { exact: true }).fill(config.passphrase);
    const saved = s.page.waitForEvent("download", { timeout: 60_000 });
    await s.page.getByRole("button", { name: "Create my agency's keys" }).click();
    const keyDownload = await saved;
    assert.match(keyDownload.suggestedFilename(), /\.key\.json$/);
    await keyDownload.saveAs(config.onboard.key_out);
    await s.page.getByRole("heading", { name: "Your key file is ready" }).waitFor();
    const pubSaved = s.page.waitForEvent("download");
    await s.page.getByRole("link", { name: "Download the public-key file" }).click();
    await (await pubSaved).saveAs(config.onboard.public_out);
    assert.equal(await s.page.getByLabel("Passphrase", { exact: true }).inputValue(), "", "the passphrase is cleared");
    await axe(s, "onboarding done");
    await shot(s, "onboarding");
    const api = s.requests.filter((u) => new URL(u).pathname.startsWith("/v1/") || new URL(u).pathname.startsWith("/oauth"));
    assert.deepEqual(api, [], "making keys sends nothing to the server");
  },

  // the administrator onboards the new agency from its public-key file and registers its client
  async admin() {
    const s = await open("admin", "");
    await unlock(s.page, config.keys.admin, null);
    await s.page.getByRole("heading", { name: "Agencies", level: 1 }).waitFor();
    await s.page.getByText(/^Verified: active, keys as listed/).first().waitFor({ timeout: 60_000 });
    await axe(s, "agencies");
    const form = s.page.getByRole("form", { name: "Onboard an agency" });
    await form.getByLabel("Public-key file (optional)").setInputFiles(config.onboard.public_out);
    await form.getByLabel("Kind", { exact: true }).selectOption("law_enforcement");
    assert.equal(await form.getByLabel("Agency name", { exact: true }).inputValue(), config.onboard.name, "the name comes from the public-key file");
    await form.getByRole("button", { name: "Onboard the agency" }).click();
    const done = s.page.locator("main p.ok").filter({ hasText: "is onboarded" });
    await done.waitFor({ timeout: 30_000 });
    const text = await done.textContent();
    const agencyId = text.match(/agency id is ([0-9a-f-]{36})/)[1];
    const clientId = text.match(/client id ([0-9a-f-]{36})/)[1];
    assert.match(text, /Its caseworker client is registered/);
    const row = s.page.getByRole("row", { name: new RegExp(config.onboard.name) });
    await row.waitFor();
    // suspend and reactivate it, each confirmed in plain words (the dialogs are accepted)
    await row.getByRole("button", { name: /^Suspend/ }).click();
    await s.page.locator("main p.ok").filter({ hasText: `${config.onboard.name} is suspended.` }).waitFor({ timeout: 30_000 });
    await row.getByRole("cell", { name: "suspended", exact: true }).waitFor();
    await row.getByRole("button", { name: /^Reactivate/ }).click();
    await s.page.locator("main p.ok").filter({ hasText: `${config.onboard.name} is active again.` }).waitFor({ timeout: 30_000 });
    await row.getByRole("cell", { name: "active", exact: true }).waitFor();
    await axe(s, "agencies, onboarded");
    await shot(s, "agencies");
    writeFileSync(config.out, JSON.stringify({ agency_id: agencyId, client_id: clientId }));
  },

  async newagency() {
    const s = await open("new agency", "");
    await unlock(s.page, config.onboard.key_out, config.passphrase, config.onboard.ids);
    await axe(s, "new agency inbox");
    await s.page.getByRole("cell", { name: config.onboard.case_ref }).waitFor({ timeout: 30_000 });
    await s.page.getByRole("row", { name: new RegExp(config.onboard.case_ref) }).getByRole("link", { name: /Open/ }).click();
    await s.page.getByText(config.onboard.field_value).waitFor({ timeout: 30_000 });
  },

  // the sender's access report: the police read, in plain words, every event verified
  async report() {
    const s = await open("shelter", "");
    await unlock(s.page, config.keys.shelter, null);
    await s.page.goto(`${BASE}/console/#/referral/${config.referral_id}`);
    await s.page.getByRole("link", { name: /Access report/ }).click();
    await s.page.getByRole("heading", { name: "Access report", level: 1 }).waitFor();
    const read = `${config.names.police} read full_name under investigation consent`;
    await s.page.getByRole("cell", { name: read }).waitFor({ timeout: 60_000 });
    await s.page.getByText(/ events?: \d+ verified in this browser/).waitFor();
    const summary = await s.page.getByText(/ events?: \d+ verified in this browser/).textContent();
    assert.match(summary, / 0 failed\./, "nothing failed");
    assert.doesNotMatch(summary, /: 0 verified/, "events were verified");
    await axe(s, "access report");
    await shot(s, "access-report");
    await s.page.emulateMedia({ media: "print" });
    assert.equal(await s.page.getByRole("button", { name: "Print this report" }).isVisible(), false, "the print stylesheet hides buttons");
    await shot(s, "access-report-print");
  },

  // the auditor finds the police read, verifies it in the page, exports, checks the log's health
  async auditor() {
    const s = await open("auditor", "");
    await unlock(s.page, config.keys.auditor, null);
    await s.page.getByRole("heading", { name: "Audit log", level: 1 }).waitFor();
    await s.page.getByLabel("Referral id", { exact: true }).fill(config.referral_id);
    await s.page.getByLabel("Agency", { exact: true }).selectOption({ label: config.names.police });
    await s.page.getByLabel("Action", { exact: true }).selectOption("referral:read");
    await s.page.getByLabel("Outcome", { exact: true }).selectOption("ok");
    await s.page.getByRole("button", { name: "Search" }).click();
    await s.page.getByText(/^Events matching your search/).waitFor({ timeout: 30_000 });
    const row = s.page.getByRole("row", { name: new RegExp(`${config.names.police} read`) });
    assert.equal(await s.page.locator("tbody tr").count(), 1, "one police read of this referral");
    await axe(s, "audit search");
    await shot(s, "audit-search");
    await row.getByRole("link", { name: /Open/ }).click();
    await s.page.getByRole("heading", { name: /^Audit event \d+$/ }).waitFor();
    const seq = Number((await s.page.getByRole("heading", { name: /^Audit event \d+$/ }).textContent()).split(" ").pop());
    await s.page.getByRole("button", { name: "Verify" }).click();
    await s.page.locator("main p.ok").filter({ hasText: /^Verified\. Verified in this browser: event \d+ is in the signed audit log/ }).waitFor({ timeout: 30_000 });
    await axe(s, "audit event");
    await shot(s, "audit-event");
    writeFileSync(config.out, JSON.stringify({ seq }));

    await s.page.getByRole("link", { name: "Back to the search" }).click();
    await s.page.getByRole("heading", { name: "Audit log", level: 1 }).waitFor();
    const saved = s.page.waitForEvent("download", { timeout: 120_000 });
    await s.page.getByRole("button", { name: "Export as NDJSON" }).click();
    const download = await saved;
    await download.saveAs(config.export_out);
    await s.page.locator("main").getByText(/^Export complete: /).waitFor();

    await s.page.getByRole("link", { name: "Log health" }).click();
    await s.page.getByRole("heading", { name: "Log health", level: 1 }).waitFor();
    await s.page.getByText(/^Verified in this browser with the pinned log key/).waitFor({ timeout: 30_000 });
    await axe(s, "log health");
    await shot(s, "log-health");
  },

  // after the operator rewrote the police read in the database: the page says so in plain words
  async tampered() {
    const s = await open("auditor", "");
    await unlock(s.page, config.keys.auditor, null);
    await s.page.goto(`${BASE}/console/#/audit/event/${config.seq}`);
    await s.page.getByRole("button", { name: "Verify" }).click();
    const alert = s.page.locator("main").getByRole("alert").filter({ hasText: "Verification failed." });
    await alert.waitFor({ timeout: 30_000 });
    assert.match(await alert.textContent(), /changed or removed on the server after it was logged/);
    await axe(s, "audit event, tampered");
    await shot(s, "audit-event-tampered");
  },
};

try {
  assert.ok(phases[phase], `unknown phase ${phase}`);
  await phases[phase]();
} catch (exc) {
  if (config.debug) {
    for (const [who, page] of pages) await page.screenshot({ path: join(config.debug, `failed-${phase}-${who.replace(/\W+/g, "-")}.png`), fullPage: true }).catch(() => {});
  }
  throw exc;
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log(`part2 ${phase} ok`);
