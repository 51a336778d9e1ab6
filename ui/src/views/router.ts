import { isRecord, json, withQuery } from "../api";
import { type Context, isAdmin } from "../context";
import { badge, field, h, replace, section, table } from "../dom";
import { ms, num, text, when } from "../format";
import type { DecisionItem, DecisionsResponse, GroupState, ListOf, ModelCard, TargetState } from "../types";
import { ErrorLine, jsonDetails, stamp, touch, viewHeader } from "./common";
import { circuitBadge } from "./overview";

const REFRESH_MS = 5000;

/** The catalogue, each target's health and circuit, the groups, and recent decisions. */
export function routerView({ me, scope, query }: Context): HTMLElement {
  const errors = new ErrorLine();
  const updated = stamp();
  const targets = h("div", { testid: "router-targets" });
  const groups = h("div", { testid: "router-groups" });
  const catalogue = h("div", { testid: "router-models" });
  let knownTargets: string[] = [];

  const refreshTargets = async (): Promise<void> => {
    try {
      const list = await json<ListOf<TargetState>>("/api/v1/router/targets", { signal: scope.signal });
      if (!scope.alive) return;
      knownTargets = list.data.map((t) => t.id);
      fillTargetFilter();
      replace(targets, targetTable(list.data, isAdmin(me), (id, state) => void setCircuit(id, state)));
      touch(updated);
    } catch (error) {
      if (scope.alive) errors.show("Could not load the targets", error);
    }
  };
  const refreshNow = scope.every(REFRESH_MS, refreshTargets);

  async function setCircuit(id: string, state: "open" | "closed"): Promise<void> {
    try {
      await json(`/api/v1/router/targets/${encodeURIComponent(id).replace(/%2F/g, "/")}/circuit`, { method: "POST", body: { state } });
      refreshNow();
    } catch (error) {
      errors.show(`Could not change the circuit of ${id}`, error);
    }
  }

  void (async () => {
    try {
      const [groupList, models] = await Promise.all([
        json<ListOf<GroupState>>("/api/v1/router/groups", { signal: scope.signal }),
        json<ListOf<ModelCard>>("/v1/models", { signal: scope.signal }),
      ]);
      if (!scope.alive) return;
      replace(
        groups,
        table(
          ["Group", "Strategy", "Affinity", "Options", "Targets"],
          groupList.data.map((g) => [g.name, g.strategy, g.affinity, Object.keys(g.options).length === 0 ? "—" : JSON.stringify(g.options), g.targets.join(", ")]),
          { testid: "router-groups-table", empty: "No group." },
        ),
      );
      replace(
        catalogue,
        table(
          ["Name", "Kind", "Owned by", { text: "Context", num: true }, "Aliases", "Targets"],
          models.data.map((m) => [m.id, m.kind ?? "model", m.owned_by, num(m.context_window ?? null), (m.aliases ?? []).join(", ") || "—", (m.targets ?? []).join(", ")]),
          { testid: "router-models-table", empty: "No model." },
        ),
      );
    } catch (error) {
      if (scope.alive) errors.show("Could not load the catalogue", error);
    }
  })();

  // Decisions, with filters.
  const targetFilter = h("select", { testid: "decisions-target", attrs: { name: "target" } });
  const modelFilter = h("input", { testid: "decisions-model", attrs: { name: "model", placeholder: "model or group as requested", value: query.get("model") ?? "" } });
  const windowFilter = h(
    "select",
    { testid: "decisions-window", attrs: { name: "window" } },
    ["15m", "1h", "24h", "7d"].map((w) => h("option", { attrs: { value: w, selected: w === "1h" } }, w)),
  );
  const fallbackOnly = h("input", { testid: "decisions-fallback-only", attrs: { type: "checkbox", name: "fallback_only" } });
  const failedOnly = h("input", { testid: "decisions-failed-only", attrs: { type: "checkbox", name: "failed_only" } });
  const decisions = h("div", { testid: "decisions" });
  const more = h("button", { class: "secondary", testid: "decisions-more", attrs: { type: "button", hidden: true } }, "Older decisions");
  let nextBefore: number | null = null;
  let rows: DecisionItem[] = [];

  function fillTargetFilter(): void {
    const current = targetFilter.value || (query.get("target") ?? "");
    const options = ["", ...knownTargets];
    if (targetFilter.options.length === options.length) return;
    replace(targetFilter, options.map((id) => h("option", { attrs: { value: id, selected: id === current } }, id === "" ? "any target" : id)));
  }
  fillTargetFilter();

  async function loadDecisions(append: boolean): Promise<void> {
    try {
      const reply = await json<DecisionsResponse>(
        withQuery("/api/v1/router/decisions", {
          window: windowFilter.value,
          target: targetFilter.value,
          model: modelFilter.value.trim(),
          fallback_only: fallbackOnly.checked,
          failed_only: failedOnly.checked,
          limit: 50,
          before_id: append ? nextBefore : null,
        }),
        { signal: scope.signal },
      );
      if (!scope.alive) return;
      rows = append ? [...rows, ...reply.data] : reply.data;
      nextBefore = reply.next_before_id;
      more.hidden = nextBefore === null;
      replace(decisions, decisionTable(rows));
    } catch (error) {
      if (scope.alive) errors.show("Could not load the decisions", error);
    }
  }
  more.addEventListener("click", () => void loadDecisions(true));
  const filters = h(
    "form",
    {
      class: "filters",
      testid: "decisions-filters",
      on: {
        submit: (event) => {
          event.preventDefault();
          void loadDecisions(false);
        },
      },
    },
    field("Target", targetFilter),
    field("Model", modelFilter),
    field("Window", windowFilter),
    h("label", { class: "check" }, fallbackOnly, "fallbacks only"),
    h("label", { class: "check" }, failedOnly, "failed only"),
    h("button", { testid: "decisions-apply", attrs: { type: "submit" } }, "Apply"),
  );
  for (const control of [targetFilter, windowFilter, fallbackOnly, failedOnly]) {
    control.addEventListener("change", () => void loadDecisions(false));
  }
  void loadDecisions(false);

  return h(
    "div",
    { class: "view", testid: "view-router" },
    viewHeader("Models & router", updated),
    errors.el,
    section("Targets", targets),
    section("Recent routing decisions", filters, decisions, more),
    section("Groups", groups),
    section("Catalogue (GET /v1/models)", catalogue),
  );
}

function targetTable(list: TargetState[], admin: boolean, setCircuit: (id: string, state: "open" | "closed") => void): HTMLElement {
  return table(
    ["Target", "Kind", "Circuit", { text: "In flight", num: true }, { text: "Queued", num: true }, { text: "Latency", num: true }, { text: "TTFT", num: true }, { text: "Tokens/s", num: true }, { text: "OK", num: true }, { text: "Failed", num: true }, "Probe", "Last error", ...(admin ? [""] : [])],
    list.map((t) => {
      const row = h(
        "tr",
        { dataset: { target: t.id } },
        [
          h("span", { title: `capabilities: ${t.capabilities.join(", ")}` }, t.id),
          t.kind,
          circuitBadge(t.circuit),
          num(t.in_flight),
          num(t.queue_depth),
          ms(t.ewma_latency_ms),
          ms(t.ewma_ttft_ms),
          num(t.tokens_per_s, 1),
          num(t.successes),
          num(t.failures),
          t.probe_ok === null ? "—" : t.probe_ok ? badge("ok", "ok") : badge("failing", "bad"),
          t.last_error ?? "—",
        ].map((cell, i) => h("td", { class: i >= 3 && i <= 9 ? "num" : undefined }, cell)),
      );
      if (admin) {
        const drain = t.circuit === "closed";
        row.append(
          h(
            "td",
            null,
            h(
              "button",
              {
                class: "secondary small",
                testid: `circuit-${t.id}`,
                attrs: { type: "button" },
                title: drain ? "Open the circuit: no new request goes here" : "Close the circuit: serve again",
                on: { click: () => setCircuit(t.id, drain ? "open" : "closed") },
              },
              drain ? "Drain" : "Restore",
            ),
          ),
        );
      }
      return row;
    }),
    { testid: "router-targets-table", empty: "No target." },
  );
}

function decisionTable(rows: DecisionItem[]): HTMLElement {
  const body: HTMLTableRowElement[] = [];
  for (const d of rows) {
    body.push(
      h(
        "tr",
        { class: "decision", dataset: { id: d.id }, testid: "decision-row" },
        h("td", null, when(d.created_at)),
        h("td", null, d.requested_model ?? "—"),
        h("td", null, d.strategy),
        h("td", null, d.chosen_target === null ? badge("all failed", "bad") : d.chosen_target),
        h("td", { class: "reason", testid: "decision-reason" }, d.reason ?? "—"),
        h("td", { class: "num" }, d.fallback_attempts > 0 ? badge(String(d.fallback_attempts), "warn") : "0"),
        h("td", { class: "num" }, ms(d.decision_ms)),
        h("td", null, candidatesView(d), attemptsView(d)),
      ),
    );
  }
  return table(["When", "Requested", "Strategy", "Chosen", "Reason", { text: "Fallbacks", num: true }, { text: "Decision", num: true }, "Candidates"], body, {
    testid: "decisions-table",
    empty: "No decision in this range matches.",
  });
}

function candidatesView(d: DecisionItem): HTMLElement {
  const items = d.candidates.map((c) => {
    if (!isRecord(c)) return h("li", null, text(c));
    const target = text(c.target);
    const parts: string[] = [];
    if (typeof c.score === "number") parts.push(`score ${c.score.toFixed(3)}`);
    if (typeof c.note === "string") parts.push(c.note);
    if (c.fallback === true) parts.push("fallback");
    const excluded = typeof c.excluded === "string" ? c.excluded : null;
    return h(
      "li",
      { class: excluded === null ? (target === d.chosen_target ? "chosen" : "") : "excluded" },
      h("code", null, target),
      parts.length > 0 ? ` · ${parts.join(" · ")}` : "",
      excluded === null ? "" : ` · excluded: ${excluded}`,
    );
  });
  return h("details", { class: "candidates", testid: "decision-candidates" }, h("summary", null, `${d.candidates.length} candidate${d.candidates.length === 1 ? "" : "s"}`), h("ul", null, items));
}

function attemptsView(d: DecisionItem): HTMLElement | null {
  if (d.attempts.length === 0) return null;
  return jsonDetails(`${d.attempts.length} attempt${d.attempts.length === 1 ? "" : "s"}`, d.attempts);
}

