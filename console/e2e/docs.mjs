// The API reference at /docs/ in real headless Chromium (started by
// tests/console/test_docs_browser.py). Usage: node e2e/docs.mjs <config.json>.
//
// The page must show every operation of /openapi.json, under the exact CSP,
// with no CSP violation or other console error, no failed request and no
// request to another origin (the assets are bundled: no CDN).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const origin = new URL(config.url).origin;
const problems = [];

const browser = await chromium.launch({ executablePath: config.chromium, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requested = [];
  page.on("request", (r) => {
    requested.push(r.url());
    if (new URL(r.url()).origin !== origin) problems.push(`a request left the origin: ${r.url()}`);
  });
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on("response", (r) => { if (r.status() >= 400) problems.push(`${r.status()} for ${r.url()}`); });
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning" || /Content Security Policy/i.test(m.text())) {
      problems.push(`console ${m.type()}: ${m.text()}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));

  const response = await page.goto(`${config.url}/docs`);
  assert.equal(response.url(), `${config.url}/docs/`, "/docs leads to /docs/");
  assert.equal(response.headers()["content-security-policy"], config.csp, "the CSP header is exact");

  // every operation of the document is listed (method and path)
  await page.waitForSelector(".opblock", { timeout: 60000 });
  const listed = await page.$$eval(".opblock", (blocks) => blocks.map((b) => {
    const method = b.querySelector(".opblock-summary-method")?.textContent?.trim().toLowerCase();
    const path = b.querySelector(".opblock-summary-path")?.getAttribute("data-path");
    return `${method} ${path}`;
  }));
  const expected = config.operations;
  const missing = expected.filter((op) => !listed.includes(op));
  assert.deepEqual(missing, [], `operations missing from /docs/: ${missing.join(", ")}`);
  assert.ok(listed.length >= expected.length);

  // open one operation: its description and parameters render (and their icons load)
  const send = page.locator(".opblock-post", { has: page.locator('[data-path="/v1/referrals"]') }).first();
  await send.locator(".opblock-summary").first().click();
  await send.locator(".opblock-description-wrapper").first().waitFor({ timeout: 30000 });
  const description = await send.locator(".opblock-description-wrapper").first().innerText();
  assert.ok(description.length > 40, "the operation shows its description");
  await page.waitForLoadState("networkidle");
  if (config.screenshot) await page.screenshot({ path: config.screenshot, fullPage: false });

  assert.ok(requested.some((u) => u.endsWith("/openapi.json")), "the page read /openapi.json");
  assert.deepEqual(problems, [], problems.join("\n"));
  console.log(`docs ok: ${listed.length} operations listed`);
} finally {
  await browser.close();
}
