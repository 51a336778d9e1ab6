import { errorMessage } from "../api";
import { h, replace } from "../dom";

/** A line for errors of one part of a view; hidden while there is none. */
export class ErrorLine {
  readonly el = h("div", { class: "error", testid: "error", attrs: { role: "alert", hidden: true } });

  show(prefix: string, error: unknown): void {
    replace(this.el, `${prefix}: ${errorMessage(error)}`);
    this.el.hidden = false;
  }

  clear(): void {
    this.el.hidden = true;
    replace(this.el);
  }
}

export function viewHeader(title: string, ...extra: (Node | string | null)[]): HTMLElement {
  return h("header", { class: "view-header" }, h("h1", null, title), ...extra);
}

/** "updated 12:03:04" */
export function stamp(): HTMLElement {
  return h("span", { class: "muted stamp", testid: "updated" });
}

export function touch(el: HTMLElement): void {
  replace(el, `updated ${new Date().toLocaleTimeString()}`);
}

/** `<details>` with pretty JSON inside a <pre> (as text). */
export function jsonDetails(summary: string, value: unknown): HTMLElement {
  return h("details", { class: "json" }, h("summary", null, summary), h("pre", null, JSON.stringify(value, null, 2)));
}

/** The target id the router uses for a (served model, provider) row of the analytics. */
export function targetId(servedModel: string | null, provider: string | null): string {
  if (servedModel === null) return "(not routed)"; // refused before any target, e.g. a 401
  const model = servedModel;
  return provider === null || provider === "" || provider === "local" ? `local/${model}` : `${provider}/${model}`;
}
