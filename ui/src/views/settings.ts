import { ApiError, isRecord, json } from "../api";
import type { Context } from "../context";
import { field, h, replace } from "../dom";
import { ErrorLine, viewHeader } from "./common";

/** What the server puts in place of a secret ("***", or a URL with "***" for its password). */
const MASKED = /\*{3}|^<(redacted|masked)>$/i;

/** GET /api/v1/settings: the effective configuration, secrets masked by the server, as a tree. */
export function settingsView({ scope }: Context): HTMLElement {
  const errors = new ErrorLine();
  const body = h("div", { class: "card", testid: "settings-body" }, h("p", { class: "muted" }, "Loading…"));
  const filter = h("input", { testid: "settings-filter", attrs: { type: "search", placeholder: "filter by key or value" } });
  let data: unknown = null;

  const render = (): void => {
    const needle = filter.value.trim().toLowerCase();
    const tree = node("settings", data, "", needle, true);
    replace(body, tree ?? h("p", { class: "muted", testid: "settings-no-match" }, "Nothing matches the filter."));
  };
  filter.addEventListener("input", render);

  void (async () => {
    try {
      const reply = await json<unknown>("/api/v1/settings", { signal: scope.signal });
      // {"object": "settings", "settings": {...}}: the tree is under `settings`.
      data = isRecord(reply) && reply.object === "settings" && isRecord(reply.settings) ? reply.settings : reply;
      if (!scope.alive) return;
      render();
    } catch (error) {
      if (!scope.alive) return;
      if (error instanceof ApiError && (error.status === 404 || error.status === 405)) {
        replace(
          body,
          h(
            "p",
            { class: "notice", testid: "settings-unavailable" },
            "This server does not publish its configuration (GET /api/v1/settings is not available in this version).",
          ),
        );
      } else if (error instanceof ApiError && error.status === 403) {
        replace(body, h("p", { class: "notice", testid: "settings-forbidden" }, `Only admins may read the configuration: ${error.message}`));
      } else {
        replace(body);
        errors.show("Could not load the settings", error);
      }
    }
  })();

  return h(
    "div",
    { class: "view", testid: "view-settings" },
    viewHeader("Settings", h("span", { class: "muted" }, "The effective configuration; secrets are masked by the server.")),
    errors.el,
    field("Filter", filter),
    body,
  );
}

/** A subtree as nested <details>; null when nothing in it matches `needle`. */
function node(key: string, value: unknown, path: string, needle: string, root = false): HTMLElement | null {
  const here = root ? "" : path === "" ? key : `${path}.${key}`;
  if (Array.isArray(value) || isRecord(value)) {
    const entries: [string, unknown][] = Array.isArray(value)
      ? value.map((v, i) => [String(i), v])
      : Object.entries(value);
    const selfMatches = needle !== "" && key.toLowerCase().includes(needle) && !root;
    const children = entries
      .map(([k, v]) => node(k, v, here, selfMatches ? "" : needle))
      .filter((c): c is HTMLElement => c !== null);
    if (children.length === 0 && needle !== "" && !selfMatches) return null;
    const size = Array.isArray(value) ? `[${value.length}]` : `{${entries.length}}`;
    return h(
      "details",
      { class: "tree-node", dataset: { path: here }, attrs: { open: root || needle !== "" || here.split(".").length < 2 } },
      h("summary", null, h("span", { class: "tree-key" }, root ? "configuration" : key), " ", h("span", { class: "muted" }, size)),
      entries.length === 0 ? h("div", { class: "tree-leaf muted" }, "empty") : h("ul", { class: "tree" }, children.map((c) => h("li", null, c))),
    );
  }
  const shown = leafText(value);
  if (needle !== "" && !key.toLowerCase().includes(needle) && !shown.toLowerCase().includes(needle)) return null;
  const masked = typeof value === "string" && MASKED.test(value);
  return h(
    "div",
    { class: "tree-leaf", dataset: { path: here }, testid: `setting-${here}` },
    h("span", { class: "tree-key" }, key),
    ": ",
    h("span", { class: `tree-value ${valueKind(value)}${masked ? " masked" : ""}`, title: masked ? "secret (masked by the server)" : undefined }, shown),
  );
}

function leafText(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") return JSON.stringify(value);
  return String(value);
}

function valueKind(value: unknown): string {
  if (value === null || value === undefined) return "null";
  return typeof value;
}
