// Build the console: `node build.mjs` writes the static site into
// ../app/console_dist/ (hashed asset names, index.html referencing them);
// `node build.mjs --tests` bundles test/*.test.ts for `node --test`.
import { build } from "esbuild";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));

async function buildTests() {
  const out = join(here, "dist-test");
  rmSync(out, { recursive: true, force: true });
  const entries = readdirSync(join(here, "test")).filter((f) => f.endsWith(".ts")).map((f) => join(here, "test", f));
  await build({
    entryPoints: entries, outdir: out, bundle: true, platform: "node", format: "esm",
    target: "node18", outExtension: { ".js": ".mjs" }, logLevel: "warning",
    banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
  });
}

async function buildSite() {
  const out = join(here, "..", "app", "console_dist");
  rmSync(out, { recursive: true, force: true });
  mkdirSync(join(out, "assets"), { recursive: true });
  const common = {
    outdir: join(out, "assets"), bundle: true, platform: "browser", format: "esm",
    target: ["chrome110", "firefox115", "safari16"], minify: true, sourcemap: false,
    entryNames: "[name]-[hash]", metafile: true, logLevel: "warning", legalComments: "eof",
  };
  const names = (r) => Object.keys(r.metafile.outputs).map((p) => p.split("/").pop());
  // the Argon2id worker first: the page's script names it by its hashed file
  const worker = names(await build({ ...common, entryPoints: { "unseal-worker": join(here, "src", "worker", "unseal.ts") } }))
    .find((f) => /^unseal-worker-.*\.js$/.test(f));
  const result = await build({
    ...common,
    entryPoints: [join(here, "src", "main.ts"), join(here, "src", "style.css")],
    define: { UNLOCK_WORKER: JSON.stringify(`assets/${worker}`) },
  });
  const outputs = names(result);
  const script = outputs.find((f) => /^main-.*\.js$/.test(f));
  const style = outputs.find((f) => /^style-.*\.css$/.test(f));
  const template = readFileSync(join(here, "src", "index.html"), "utf8");
  const html = template.replace("{{script}}", `assets/${script}`).replace("{{style}}", `assets/${style}`);
  writeFileSync(join(out, "index.html"), html);
}

if (process.argv.includes("--tests")) await buildTests();
else await buildSite();
