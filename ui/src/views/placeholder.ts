import type { View } from "../context";
import { h } from "../dom";
import { viewHeader } from "./common";

/** A view that comes in a later release; its navigation item is disabled. */
export function placeholderView(title: string): View {
  return () =>
    h(
      "div",
      { class: "view", testid: "view-placeholder" },
      viewHeader(title),
      h("p", { class: "notice" }, `${title} is not available yet: it comes in a later release.`),
    );
}
