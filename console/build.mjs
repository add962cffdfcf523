// Build the console: `node build.mjs` writes the static site into
// ../app/console_dist/ (hashed asset names, index.html referencing them);
// `node build.mjs --tests` bundles test/*.test.ts for `node --test`.
import { build } from "esbuild";
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
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

// A content hash in the form of esbuild's ([A-Z2-7]{8}), for files written here.
function hashName(prefix, ext, bytes) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const digest = createHash("sha256").update(bytes).digest();
  let name = "";
  for (let i = 0; i < 8; i++) name += alphabet[digest[i] % 32];
  return `${prefix}-${name}.${ext}`;
}

const IMAGE_TYPES = { "image/svg+xml": "svg", "image/png": "png", "image/jpeg": "jpg", "image/gif": "gif" };

// Swagger UI's stylesheet inlines its icons as data: URLs, which the page's
// CSP (img-src 'self') refuses: each becomes a file beside the stylesheet.
function extractDataUrls(css, assets) {
  let out = "";
  let i = 0;
  for (;;) {
    const at = css.indexOf("url(", i);
    if (at < 0) return out + css.slice(i);
    let j = at + 4;
    while (css[j] === " ") j++;
    const quote = css[j] === '"' || css[j] === "'" ? css[j] : "";
    let k = quote ? j + 1 : j;
    let raw = "";
    while (k < css.length) {
      const c = css[k];
      if (quote && c === "\\") { raw += css[k + 1]; k += 2; continue; }
      if (quote ? c === quote : c === ")") break;
      raw += c;
      k++;
    }
    const end = css.indexOf(")", quote ? k + 1 : k) + 1;
    const match = /^data:([^;,]+)((?:;[^;,]+)*?)(;base64)?,(.*)$/s.exec(raw.trim());
    out += css.slice(i, at);
    if (match && IMAGE_TYPES[match[1]]) {
      const bytes = match[3] ? Buffer.from(match[4], "base64")
        : Buffer.from((() => { try { return decodeURIComponent(match[4]); } catch { return match[4]; } })(), "utf8");
      const name = hashName("docsimg", IMAGE_TYPES[match[1]], bytes);
      writeFileSync(join(assets, name), bytes);
      out += `url(${name})`;
    } else {
      out += css.slice(at, end);
    }
    i = end;
  }
}

// The API reference at /docs/ (app/routers/console.py): Swagger UI from
// swagger-ui-dist, its start-up script a file (no inline script), its
// stylesheet without data: URLs; assets beside the console's.
async function buildDocs() {
  const out = join(here, "..", "app", "console_dist");
  const assets = join(out, "assets");
  const result = await build({
    outdir: assets, bundle: true, platform: "browser", format: "esm",
    target: ["chrome110", "firefox115", "safari16"], minify: true, sourcemap: false,
    entryNames: "[name]-[hash]", metafile: true, logLevel: "warning", legalComments: "eof",
    entryPoints: [join(here, "src", "docs", "docs.ts")],
  });
  const script = Object.keys(result.metafile.outputs).map((p) => p.split("/").pop())
    .find((f) => /^docs-.*\.js$/.test(f));
  const require = createRequire(import.meta.url);
  const swaggerCss = readFileSync(require.resolve("swagger-ui-dist/swagger-ui.css"), "utf8")
    .replace(/\/\*# sourceMappingURL=.*?\*\//g, "");
  const css = extractDataUrls(swaggerCss + "\n" + readFileSync(join(here, "src", "docs", "docs.css"), "utf8"), assets);
  if (css.includes("data:")) throw new Error("docs stylesheet still holds a data: URL");
  const style = hashName("docs", "css", css);
  writeFileSync(join(assets, style), css);
  const favicon = readFileSync(require.resolve("swagger-ui-dist/favicon-32x32.png"));
  const icon = hashName("docsimg", "png", favicon);
  writeFileSync(join(assets, icon), favicon);
  const template = readFileSync(join(here, "src", "docs", "index.html"), "utf8");
  writeFileSync(join(out, "docs.html"), template.replace("{{script}}", `assets/${script}`)
    .replace("{{style}}", `assets/${style}`).replace("{{icon}}", `assets/${icon}`));
}

if (process.argv.includes("--tests")) await buildTests();
else {
  await buildSite();
  await buildDocs();
}
