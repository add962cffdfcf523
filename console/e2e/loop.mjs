// The whole referral loop in real headless Chromium, only through the page,
// against a live gateway (started by tests/console/test_console_browser.py).
// Usage: node e2e/loop.mjs <config.json>; exits non-zero with a reason on failure.
//
// Beside the loop it checks what the page must never do: talk to another
// origin; put a private key, a passphrase or a field value into a request or
// into localStorage, sessionStorage, IndexedDB or cookies; let the liaison's
// page or any response it received name a field it was not given. It checks
// the CSP header exactly, that a reload asks for the key file again, runs
// axe-core on every view and saves a screenshot of each.
import assert from "node:assert/strict";
import { readFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const BASE = config.url;
const origin = new URL(BASE).origin;
const AXE = readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");
const SHOTS = config.screenshots;
if (SHOTS) mkdirSync(SHOTS, { recursive: true });

const NAME = "Maria Example";
const NARRATIVE = "Recruited with a false job offer; passport withheld.";
const CUSTOM = "safe_house_code"; // a custom field, for legal aid only
const CUSTOM_VALUE = "Blue door, code 4471";
const NOTE = "Intake Tuesday 10:00, bring ID if safe.";
const secrets = [config.passphrase, NAME, NARRATIVE, NOTE, CUSTOM_VALUE, ...config.private_keys];

const pages = [];
const browser = await chromium.launch({ executablePath: config.chromium, args: ["--no-sandbox"] });
const problems = [];

async function open(who, keyFile, passphrase) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  pages.push([who, page]);
  const bodies = [];
  page.on("request", (request) => {
    const url = request.url();
    if (new URL(url).origin !== origin) problems.push(`${who}: a request left the origin: ${url}`);
    const body = request.postData() ?? "";
    for (const s of secrets) if (body.includes(s) || url.includes(s)) problems.push(`${who}: a request to ${url} carries a secret or a field value`);
  });
  page.on("response", async (response) => {
    try {
      bodies.push([response.url(), await response.text()]);
    } catch {
      // redirects and aborted loads have no body
    }
  });
  page.on("pageerror", (e) => problems.push(`${who}: page error ${e.message}`));
  page.on("dialog", (d) => d.accept());
  const response = await page.goto(`${BASE}/console/`);
  assert.equal(response.headers()["content-security-policy"], config.csp, "the CSP header is exact");
  await unlock(page, keyFile, passphrase);
  return { context, page, bodies, who };
}

async function unlock(page, keyFile, passphrase) {
  await page.getByRole("heading", { name: "Sign in with your agency's key file" }).waitFor();
  await page.getByLabel("Key file", { exact: true }).setInputFiles(keyFile);
  if (passphrase) await page.getByLabel("Passphrase", { exact: true }).fill(passphrase);
  const workers = [];
  const onWorker = (w) => workers.push(w.url());
  page.on("worker", onWorker);
  await page.getByRole("button", { name: "Unlock" }).click();
  if (passphrase) {
    // Argon2id runs in a worker from the page's own origin; the page shows progress and stays responsive
    const progress = page.getByRole("progressbar", { name: "Opening the key file" });
    await progress.waitFor({ timeout: 10_000 });
    await page.evaluate(() => document.title);
    assert.ok(await progress.isVisible(), "the page answers while the key file is being opened");
  }
  await page.getByText(/^Signed in as /).waitFor({ timeout: 30_000 });
  page.off("worker", onWorker);
  if (passphrase) {
    assert.equal(workers.length, 1, "one worker opened the sealed key file");
    assert.match(workers[0], new RegExp(`^${origin}/console/assets/unseal-worker-[A-Z0-9]{8}\\.js$`));
  }
}

async function storageClean(s) {
  const dump = await s.page.evaluate(async () => {
    const dbs = indexedDB.databases ? await indexedDB.databases() : [];
    return JSON.stringify({ local: { ...localStorage }, session: { ...sessionStorage }, dbs, cookie: document.cookie });
  });
  const cookies = JSON.stringify(await s.context.cookies());
  for (const x of secrets) {
    if (dump.includes(x) || cookies.includes(x)) problems.push(`${s.who}: browser storage holds a secret or a field value`);
  }
  const parsed = JSON.parse(dump);
  assert.deepEqual(parsed.dbs, [], "no IndexedDB database");
  assert.equal(parsed.cookie, "", "no cookie");
  assert.deepEqual(Object.keys(parsed.session), [], "nothing in sessionStorage");
  for (const key of Object.keys(parsed.local)) assert.match(key, /^refgate\.pin\./, "localStorage holds only log pins");
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

const ids = config.names;
try {
  // --- a wrong passphrase is refused in plain words
  const early = await browser.newPage();
  await early.goto(`${BASE}/console/`);
  await early.getByLabel("Key file", { exact: true }).setInputFiles(config.keys.shelter);
  await early.getByLabel("Passphrase", { exact: true }).fill(`${config.passphrase}!`);
  await early.getByRole("button", { name: "Unlock" }).click();
  await early.getByRole("alert").getByText("The passphrase is wrong").waitFor({ timeout: 30_000 });
  assert.equal(await early.getByLabel("Passphrase", { exact: true }).inputValue(), "", "the passphrase field is cleared");
  await early.close();

  // --- the shelter's caseworker unlocks a sealed key file and composes
  const shelter = await open("shelter", config.keys.shelter, config.passphrase);
  await axe(shelter, "sign-in done / inbox");

  // --- the task force's witness and quorum are set; every checkpoint after carries the quorum
  await shelter.page.getByRole("link", { name: "Settings" }).click();
  await shelter.page.getByRole("heading", { name: "Trust settings" }).waitFor();
  await shelter.page.getByText(/^No witness is required/).waitFor();
  await shelter.page.getByLabel("Witness keys", { exact: true }).fill(config.witness);
  await shelter.page.getByLabel("Quorum", { exact: true }).fill("2");
  await shelter.page.getByRole("button", { name: "Save and check" }).click();
  await shelter.page.getByRole("alert").getByText("Nothing was changed. A quorum of 2 needs at least as many witness keys (1 given).").waitFor();
  await shelter.page.getByLabel("Quorum", { exact: true }).fill("1");
  const asked = [];
  shelter.page.on("request", (r) => { if (new URL(r.url()).pathname === "/v1/audit/checkpoint") asked.push(new URL(r.url()).search); });
  await shelter.page.getByRole("button", { name: "Save and check" }).click();
  await shelter.page.getByText(/^Saved\. The audit log's checkpoint of size \d+ passes these settings\.$/).waitFor({ timeout: 30_000 });
  await shelter.page.getByText(/^Latest verified checkpoint: size \d+, cosigned by witness\.demo\.refgate\.local\/w1\.$/).waitFor();
  const pin = JSON.parse(Object.values(await shelter.page.evaluate(() => ({ ...localStorage })))[0]);
  assert.deepEqual([pin.witnesses, pin.quorum], [[config.witness], 1], "the witness and quorum are pinned with the log key");
  await axe(shelter, "settings");
  await shot(shelter, "settings");
  await shelter.page.getByRole("link", { name: "New referral" }).click();
  await shelter.page.getByRole("heading", { name: "New referral" }).waitFor();
  // the directory search: legal aid by service and accepting, the police unit by service and language
  const form = shelter.page.getByRole("group", { name: "1. Recipients" });
  const search = async (filters) => {
    for (const [label, value] of Object.entries(filters)) {
      const control = form.getByLabel(label, { exact: true });
      if (await control.evaluate((el) => el.tagName === "SELECT")) await control.selectOption(value);
      else await control.fill(value);
    }
    await form.getByRole("button", { name: "Search the directory" }).click();
    await shelter.page.getByText(/^\d+ agenc(y|ies) found\.$/).waitFor();
  };
  const pick = async (name) => {
    const box = form.getByRole("checkbox", { name: new RegExp(`^${name}`) });
    await box.check();
    assert.ok(await box.isChecked(), `${name} is chosen`);
  };
  await search({ Service: "immigration_legal", Accepting: "yes" });
  const results = form.locator("ul.picker li").filter({ hasText: ids.legal });
  await results.getByText(/accepting, 4 appointments free \(updated (just now|\d+ minutes? ago)\)/).waitFor();
  assert.equal(await form.getByRole("checkbox", { name: new RegExp(`^${ids.police}`) }).count(), 0, "the police unit offers no immigration legal service");
  await pick(ids.legal);
  // the second search and pick by keyboard only: Enter in a text filter searches, Space ticks
  await form.getByLabel("Service", { exact: true }).selectOption("investigation");
  await form.getByLabel("Population", { exact: true }).selectOption("minors");
  await form.getByLabel("Accepting", { exact: true }).selectOption("");
  await form.getByLabel("Language", { exact: true }).focus();
  await shelter.page.keyboard.type("es");
  await shelter.page.keyboard.press("Enter");
  await shelter.page.getByText(/^\d+ agenc(y|ies) found\.$/).waitFor();
  assert.match(shelter.page.url(), /#\/compose$/, "Enter in a filter searched, it did not submit the referral");
  const policeBox = form.getByRole("checkbox", { name: new RegExp(`^${ids.police}`) });
  await policeBox.focus();
  await shelter.page.keyboard.press("Space");
  assert.ok(await policeBox.isChecked(), "the police unit is chosen by keyboard");
  assert.ok(await policeBox.evaluate((el) => el === document.activeElement), "the focus stays on the chosen agency");
  await form.getByRole("heading", { name: "Chosen (2)" }).waitFor();
  await shelter.page.getByLabel("Full name", { exact: true }).fill(NAME);
  await shelter.page.getByLabel("Narrative", { exact: true }).fill(NARRATIVE);
  await shelter.page.getByLabel("Custom field name").fill(CUSTOM);
  await shelter.page.getByRole("button", { name: "Add field" }).click();
  await shelter.page.getByLabel("Safe house code", { exact: true }).fill(CUSTOM_VALUE);
  await shelter.page.getByRole("checkbox", { name: `Share Full name with ${ids.legal}` }).check();
  await shelter.page.getByRole("checkbox", { name: `Share Safe house code with ${ids.legal}` }).check();
  await shelter.page.getByRole("checkbox", { name: `Share Narrative with ${ids.legal}` }).check();
  await shelter.page.getByRole("button", { name: "Review" }).click();
  await shelter.page.getByText(`${ids.police} would receive no field`).waitFor();
  await shelter.page.getByRole("checkbox", { name: `Share Full name with ${ids.police}` }).check();
  await shelter.page.getByLabel(`Services asked of ${ids.legal}`).selectOption(["legal", "immigration_legal"]);
  await shelter.page.getByLabel(`Services asked of ${ids.police}`).selectOption(["investigation"]);
  await shelter.page.getByLabel(`Case reference for ${ids.legal} (optional)`).fill("c-77");
  await shelter.page.getByRole("button", { name: "Review" }).click();
  await shelter.page.getByText(new RegExp(`^${ids.legal} can read Full name until .*, Narrative until`)).waitFor();
  await shelter.page.getByText(new RegExp(`^${ids.police} can read Full name until .*\\(investigation\\)\\.$`)).waitFor();
  await axe(shelter, "compose");
  await shot(shelter, "compose");
  // what the sending progress bar said, step by step (read by a devtools observer, not the page)
  await shelter.page.evaluate(() => {
    window.__progress = [];
    new MutationObserver(() => {
      const bar = document.querySelector('progress[aria-label="Sending the referral"]');
      const text = bar?.parentElement?.textContent?.trim();
      if (bar && text && window.__progress.at(-1) !== text) window.__progress.push(`${bar.value}/${bar.max} ${text}`);
    }).observe(document.body, { subtree: true, childList: true, characterData: true, attributes: true });
  });
  await shelter.page.getByRole("button", { name: "Send referral" }).click();
  await shelter.page.waitForURL(/#\/referral\/[0-9a-f-]{36}$/, { timeout: 60_000 });
  const referralId = shelter.page.url().split("/").pop();
  await shelter.page.getByText(NARRATIVE).waitFor({ timeout: 30_000 });
  assert.ok(asked.length > 0 && asked.every((q) => q === "?cosigned=1"), `every checkpoint was asked with the quorum: ${asked}`);
  const steps = await shelter.page.evaluate(() => window.__progress);
  assert.ok(steps.some((t) => /^0\/4 Checking .*'s key against the audit log \(1 of 2\)/.test(t)), `sending shows progress: ${steps}`);
  assert.ok(steps.some((t) => /^3\/4 Sending/.test(t)), `sending shows progress: ${steps}`);
  await storageClean(shelter);

  // --- the liaison sees it in the inbox and opens it: only full_name
  const police = await open("police", config.keys.police, null);
  await police.page.getByRole("link", { name: /^Open/ }).first().waitFor();
  await police.page.getByLabel("Urgency").selectOption("urgent");
  await police.page.getByRole("button", { name: "Apply filters" }).click();
  await police.page.getByRole("cell", { name: ids.shelter }).waitFor();
  await axe(police, "inbox");
  await shot(police, "inbox");
  await police.page.getByRole("link", { name: /^Open/ }).first().click();
  await police.page.getByText(NAME).waitFor({ timeout: 30_000 });
  await axe(police, "open referral");
  await shot(police, "open-referral");
  const dom = await police.page.content();
  for (const forbidden of ["narrative", "Narrative", NARRATIVE, CUSTOM, "Safe house", CUSTOM_VALUE, "c-77", ids.legal]) {
    assert.ok(!dom.includes(forbidden), `the liaison's page shows ${forbidden}`);
  }
  for (const [url, body] of police.bodies) {
    // the console's own script lists the standard field names (the compose form);
    // everything else, and a custom name anywhere, must not name a field
    const api = !new URL(url).pathname.startsWith("/console/assets/");
    for (const forbidden of [CUSTOM, CUSTOM_VALUE, NARRATIVE, NAME, ...(api ? ["narrative", "full_name"] : [])]) {
      if (body.includes(forbidden)) problems.push(`the response of ${url} to the liaison contains ${forbidden}`);
    }
  }
  await storageClean(police);

  // --- legal aid accepts with a note, by keyboard
  const legal = await open("legal", config.keys.legal, null);
  await legal.page.goto(`${BASE}/console/#/referral/${referralId}`);
  await legal.page.getByText(NARRATIVE).waitFor({ timeout: 30_000 });
  await legal.page.getByLabel("New status").focus();
  await legal.page.keyboard.press("Home"); // "received", then one down: "accepted"
  await legal.page.keyboard.press("ArrowDown");
  await legal.page.getByLabel("Note to the sender (optional)").focus();
  await legal.page.keyboard.type(NOTE);
  await legal.page.keyboard.press("Tab");
  await legal.page.keyboard.press("Enter");
  await legal.page.getByText("Current status: accepted.").waitFor({ timeout: 30_000 });
  await storageClean(legal);

  // --- the shelter sees "accepted" (signed, verified) and the note; revokes the police cell
  await shelter.page.getByRole("link", { name: "Sent" }).click();
  await shelter.page.getByText(`${ids.legal}: accepted (signed, verified)`).waitFor({ timeout: 30_000 });
  await axe(shelter, "sent");
  await shot(shelter, "sent");
  await shelter.page.getByRole("link", { name: /^Open/ }).first().click();
  await shelter.page.getByText(NOTE).waitFor({ timeout: 30_000 });
  await axe(shelter, "referral as sender");
  await shot(shelter, "referral-sender");
  await shelter.page.getByRole("button", { name: `Revoke Full name for ${ids.police}` }).click();
  await shelter.page.getByText(`${ids.police} can no longer read Full name.`).waitFor({ timeout: 30_000 });

  // --- the liaison's next open shows nothing
  await police.page.reload();
  await unlock(police.page, config.keys.police, null);
  await police.page.getByText(/No field is shared with your agency|no longer shared with your agency/).waitFor({ timeout: 30_000 });
  assert.ok(!(await police.page.content()).includes(NAME), "the revoked field is gone");

  // --- consent given again (an amendment signed in the page) reaches the liaison's next open
  const amendForm = shelter.page.getByRole("form", { name: "Add consent" });
  await amendForm.getByLabel("Field", { exact: true }).selectOption("full_name");
  await amendForm.getByLabel("Recipient", { exact: true }).selectOption({ label: ids.police });
  await amendForm.getByLabel("Purpose", { exact: true }).selectOption("investigation");
  await amendForm.getByRole("button", { name: "Add consent" }).click();
  await shelter.page.getByText(`${ids.police} can read Full name until`).waitFor({ timeout: 30_000 });
  await police.page.reload();
  await unlock(police.page, config.keys.police, null);
  await police.page.getByText(NAME).waitFor({ timeout: 30_000 });
  assert.ok(!(await police.page.content()).includes(NARRATIVE), "only the consented field came back");

  // --- Lock forgets; a reload asks for the key file again
  await shelter.page.getByRole("button", { name: "Lock" }).click();
  await shelter.page.getByRole("heading", { name: "Sign in with your agency's key file" }).waitFor();
  await axe(shelter, "sign-in");
  await shot(shelter, "sign-in");
  const beforeRelock = asked.length;
  await unlock(shelter.page, config.keys.shelter, config.passphrase);
  assert.ok(asked.length > beforeRelock && asked.every((q) => q === "?cosigned=1"), "a new sign-in keeps the pinned quorum");
  await shelter.page.reload();
  await shelter.page.getByRole("heading", { name: "Sign in with your agency's key file" }).waitFor();
  await storageClean(shelter);
} catch (exc) {
  // what each page showed when it failed, beside the test's other files
  if (config.debug) {
    for (const [who, page] of pages) await page.screenshot({ path: join(config.debug, `failed-${who}.png`), fullPage: true }).catch(() => {});
  }
  throw exc;
} finally {
  await browser.close();
}
if (problems.length) {
  console.error(problems.join("\n"));
  process.exit(1);
}
console.log("browser loop ok");
