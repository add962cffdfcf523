// Measure the console's audit export in headless Chromium: the auditor exports every
// event as NDJSON; the page's JS heap (CDP Performance.getMetrics) and the progress
// text are sampled while it streams. Driven by bench/console_export.py.
// Usage: node e2e/export_bench.mjs <config.json>; prints one JSON line.
import { readFileSync, statSync } from "node:fs";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const browser = await chromium.launch({ executablePath: config.chromium, args: ["--no-sandbox"] });
try {
  const context = await browser.newContext({ acceptDownloads: true });
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("Performance.enable");
  const heap = async () => (await cdp.send("Performance.getMetrics")).metrics.find((m) => m.name === "JSHeapUsedSize").value;
  await page.goto(`${config.url}/console/`);
  await page.getByLabel("Key file", { exact: true }).setInputFiles(config.key);
  await page.getByRole("button", { name: "Unlock" }).click();
  await page.getByRole("heading", { name: "Audit log", level: 1 }).waitFor({ timeout: 60_000 });
  const before = await heap();
  const progress = new Set();
  let peak = before;
  let running = true;
  const sampler = (async () => {
    while (running) {
      peak = Math.max(peak, await heap());
      const t = await page.locator("main p[role=status]").textContent().catch(() => null);
      if (t) progress.add(t);
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  const started = Date.now();
  const saved = page.waitForEvent("download", { timeout: 600_000 });
  await page.getByRole("button", { name: "Export as NDJSON" }).click();
  const download = await saved;
  await download.saveAs(config.out);
  const seconds = (Date.now() - started) / 1000;
  running = false;
  await sampler;
  const lines = readFileSync(config.out, "utf8").split("\n").filter(Boolean).length;
  console.log(JSON.stringify({
    lines, bytes: statSync(config.out).size, seconds,
    heap_before_mb: +(before / 1048576).toFixed(1), heap_peak_mb: +(peak / 1048576).toFixed(1),
    progress_samples: progress.size, last_progress: [...progress].slice(-2),
  }));
} finally {
  await browser.close();
}
