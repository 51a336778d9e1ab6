// DOM building without HTML strings: every piece of text becomes a Text node (textContent),
// so data from the server can never become markup. Nothing here, nor anywhere in the app,
// assigns innerHTML/outerHTML or calls insertAdjacentHTML/document.write.

export type Child = Node | string | number | null | undefined | false | readonly Child[];

type Handler<K extends keyof HTMLElementEventMap> = (event: HTMLElementEventMap[K]) => void;

export interface Props {
  class?: string | undefined;
  testid?: string | undefined;
  title?: string | undefined;
  attrs?: Record<string, string | number | boolean | null | undefined>;
  dataset?: Record<string, string | number | undefined>;
  on?: { [K in keyof HTMLElementEventMap]?: Handler<K> };
}

const URL_ATTRIBUTES = new Set(["href", "src", "action", "formaction", "xlink:href"]);

function setAttribute(el: Element, name: string, value: string | number | boolean): void {
  const lower = name.toLowerCase();
  // Event handlers are functions (`on`), never attribute strings; style attributes are
  // refused by the page's CSP anyway.
  if (lower.startsWith("on") || lower === "style" || lower === "srcdoc") {
    throw new Error(`refusing to set attribute ${name}`);
  }
  const text = value === true ? "" : String(value);
  if (URL_ATTRIBUTES.has(lower) && !isSafeUrl(text)) {
    throw new Error(`refusing unsafe URL in ${name}`);
  }
  el.setAttribute(name, text);
}

/** Same-origin paths, fragments and http(s) URLs; never `javascript:` or `data:`. */
export function isSafeUrl(url: string): boolean {
  if (url.startsWith("/") || url.startsWith("#")) return !url.startsWith("//");
  try {
    const parsed = new URL(url, window.location.href);
    return parsed.protocol === "http:" || parsed.protocol === "https:";
  } catch {
    return false;
  }
}

function apply(el: Element, props: Props | undefined): void {
  if (props === undefined) return;
  if (props.class !== undefined) el.setAttribute("class", props.class);
  if (props.testid !== undefined) el.setAttribute("data-testid", props.testid);
  if (props.title !== undefined) el.setAttribute("title", props.title);
  for (const [name, value] of Object.entries(props.attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    setAttribute(el, name, value);
  }
  for (const [name, value] of Object.entries(props.dataset ?? {})) {
    if (value !== undefined && el instanceof HTMLElement) el.dataset[name] = String(value);
    else if (value !== undefined) el.setAttribute(`data-${name}`, String(value));
  }
  if (props.on !== undefined) {
    for (const [type, handler] of Object.entries(props.on)) {
      if (handler !== undefined) el.addEventListener(type, handler as EventListener);
    }
  }
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, ...(child as readonly Child[]));
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
}

/** `h("td", {class: "num"}, value)`: an element whose string children are text nodes. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props?: Props | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  apply(el, props ?? undefined);
  append(el, ...children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

export function s<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs?: Record<string, string | number | undefined>,
  ...children: Child[]
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value !== undefined) setAttribute(el, name, value);
  }
  append(el, ...children);
  return el;
}

/** Replace every child of `parent`. */
export function replace(parent: Node, ...children: Child[]): void {
  while (parent.firstChild !== null) parent.removeChild(parent.firstChild);
  append(parent, ...children);
}

/** A table from a header row and rows of cells; `empty` is shown when there is no row. */
export function table(
  headers: readonly (string | { text: string; num?: boolean })[],
  rows: readonly (readonly Child[] | HTMLTableRowElement)[],
  options: { testid?: string; empty?: string } = {},
): HTMLElement {
  const head = h(
    "tr",
    null,
    headers.map((col) =>
      typeof col === "string"
        ? h("th", { attrs: { scope: "col" } }, col)
        : h("th", { attrs: { scope: "col" }, class: col.num === true ? "num" : undefined }, col.text),
    ),
  );
  const numeric = headers.map((col) => typeof col !== "string" && col.num === true);
  const body = h(
    "tbody",
    null,
    rows.map((row) =>
      row instanceof HTMLTableRowElement
        ? row
        : h(
            "tr",
            null,
            row.map((cell, i) => h("td", { class: numeric[i] === true ? "num" : undefined }, cell)),
          ),
    ),
  );
  if (rows.length === 0) {
    body.appendChild(
      h("tr", { class: "empty" }, h("td", { attrs: { colspan: headers.length } }, options.empty ?? "Nothing yet.")),
    );
  }
  return h(
    "div",
    { class: "table-wrap", testid: options.testid },
    h("table", null, h("thead", null, head), body),
  );
}

export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), control, hint !== undefined ? h("small", null, hint) : null);
}

export function badge(text: string, kind = ""): HTMLElement {
  return h("span", { class: `badge ${kind}`.trim() }, text);
}

export function section(title: string, ...children: Child[]): HTMLElement {
  return h("section", { class: "card" }, h("h2", null, title), ...children);
}
