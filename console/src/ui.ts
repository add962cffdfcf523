/**
 * A few DOM helpers: elements built with properties and children (never
 * innerHTML, so no decrypted value is ever parsed as markup), a live region
 * for progress and results, and plain words for dates and names.
 */

type Child = Node | string | null | undefined | false;
type Props = Record<string, string | number | boolean | ((ev: Event) => void) | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K, props: Props = {}, ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined) continue;
    if (value === false) {
      // a boolean property (spellcheck, checked) is set false; an attribute is left out
      if (typeof (el as unknown as Record<string, unknown>)[key] === "boolean") (el as unknown as Record<string, unknown>)[key] = false;
      continue;
    }
    if (typeof value === "function") el.addEventListener(key.replace(/^on/, "").toLowerCase(), value);
    else if (key === "class") el.className = String(value);
    else if (key === "text") el.textContent = String(value);
    else if (key in el && typeof (el as unknown as Record<string, unknown>)[key] !== "object" && !key.includes("-")) {
      (el as unknown as Record<string, unknown>)[key] = value;
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(typeof c === "string" ? document.createTextNode(c) : c);
  }
  return el;
}

let idCounter = 0;
export function uid(prefix: string): string {
  idCounter += 1;
  return `${prefix}-${idCounter}`;
}

/** A labelled form control. */
export function labelled(label: string, control: HTMLElement, hint?: string): HTMLElement {
  control.id ||= uid("f");
  const hintEl = hint ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "control" }, h("label", { for: control.id }, label), control, hintEl);
}

export function select(options: [string, string][], value = ""): HTMLSelectElement {
  const el = h("select", {});
  for (const [v, text] of options) el.append(h("option", { value: v, selected: v === value }, text));
  return el;
}

const statusRegion = (): HTMLElement => document.getElementById("status") as HTMLElement;

/** Announce progress or a result in the polite live region. */
export function say(text: string): void {
  statusRegion().textContent = text;
}

/** Show an error in plain words where the user is, focused so screen readers read it. */
export function showError(where: HTMLElement, error: unknown): void {
  const message = error instanceof Error ? error.message : String(error);
  where.querySelectorAll(":scope > .error").forEach((e) => e.remove());
  const box = h("div", { class: "error", role: "alert", tabindex: -1 }, h("strong", {}, "Something went wrong. "), message);
  where.prepend(box);
  box.focus();
  say("");
}

export function fieldLabel(name: string): string {
  const words = name.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

export function words(value: string): string {
  return value.replace(/[_-]/g, " ");
}

export function date(text: string | null | undefined): string {
  if (!text) return "—";
  const d = new Date(text);
  if (Number.isNaN(d.getTime())) return text;
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short", timeZone: "UTC" }) + " UTC";
}

export function day(text: string): string {
  const d = new Date(text);
  return d.toLocaleDateString("en-GB", { day: "numeric", month: "long", year: "numeric", timeZone: "UTC" });
}

/** Let the browser paint (progress text) before a long synchronous step such as Argon2id. */
export function paint(): Promise<void> {
  return new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
}
