import { json, withQuery } from "../api";
import { LineChart } from "../chart";
import { type Context, isAdmin, mayCall } from "../context";
import { field, h, replace, section, table } from "../dom";
import { ms, num, pct, usd } from "../format";
import type { KeyItem, ListOf, Ranged, RoutingStatItem, TimeseriesResponse, UsageItem, UserItem } from "../types";
import { ErrorLine, stamp, targetId, touch, viewHeader } from "./common";

const WINDOWS: Record<string, { bucket: "hour" | "day"; label: string }> = {
  "24h": { bucket: "hour", label: "24 hours, per hour" },
  "7d": { bucket: "hour", label: "7 days, per hour" },
  "30d": { bucket: "day", label: "30 days, per day" },
};

/** The 24 h series (or a longer range), usage per API key and per user, and routing. */
export function analyticsView({ me, scope }: Context): HTMLElement {
  const errors = new ErrorLine();
  const updated = stamp();
  const range = h(
    "select",
    { testid: "analytics-window", attrs: { name: "window" } },
    Object.entries(WINDOWS).map(([value, w]) => h("option", { attrs: { value } }, w.label)),
  );
  const charts = {
    requests: new LineChart({ title: "Requests", testid: "analytics-requests", withDate: true, format: (v) => num(v) }),
    tokens: new LineChart({ title: "Tokens", testid: "analytics-tokens", withDate: true, format: (v) => num(v) }),
    errors: new LineChart({ title: "Errors", testid: "analytics-errors", withDate: true, format: (v) => num(v) }),
    latency: new LineChart({ title: "Latency (ms)", testid: "analytics-latency", withDate: true, format: ms }),
  };
  const byKey = h("div", { testid: "usage-keys" });
  const byUser = h("div", { testid: "usage-users" });
  const byEndUser = h("div", { testid: "usage-end-users" });
  const routing = h("div", { testid: "analytics-routing" });

  const load = async (): Promise<void> => {
    const span = range.value;
    const choice = WINDOWS[span] ?? { bucket: "hour", label: "" };
    const signal = scope.signal;
    try {
      const [series, keys, users, endUsers, routes, keyNames, userNames] = await Promise.all([
        json<TimeseriesResponse>(withQuery("/api/v1/analytics/timeseries", { window: span, bucket: choice.bucket }), { signal }),
        json<Ranged<UsageItem>>(withQuery("/api/v1/analytics/usage", { window: span, group_by: "api_key" }), { signal }),
        json<Ranged<UsageItem>>(withQuery("/api/v1/analytics/usage", { window: span, group_by: "user" }), { signal }),
        json<Ranged<UsageItem>>(withQuery("/api/v1/analytics/usage", { window: span, group_by: "end_user" }), { signal }),
        json<Ranged<RoutingStatItem>>(withQuery("/api/v1/analytics/routing", { window: span }), { signal }),
        // Names for the ids, where the caller may list them.
        mayCall(me) ? json<ListOf<KeyItem>>("/api/v1/keys", { signal }).catch(() => null) : Promise.resolve(null),
        isAdmin(me) ? json<ListOf<UserItem>>(withQuery("/api/v1/users", { limit: 1000 }), { signal }).catch(() => null) : Promise.resolve(null),
      ]);
      if (!scope.alive) return;
      errors.clear();
      const times = series.data.map((b) => new Date(b.bucket_start));
      charts.requests.update(times, [{ name: "requests", values: series.data.map((b) => b.requests) }]);
      charts.tokens.update(times, [{ name: "tokens", values: series.data.map((b) => b.tokens) }]);
      charts.errors.update(times, [{ name: "errors", values: series.data.map((b) => b.errors) }]);
      charts.latency.update(times, [
        { name: "average", values: series.data.map((b) => b.latency_avg_ms) },
        { name: "p95", values: series.data.map((b) => b.latency_p95_ms) },
      ]);
      const keyName = new Map((keyNames?.data ?? []).map((k) => [k.id, `${k.name} (${k.prefix}…)`]));
      const userName = new Map((userNames?.data ?? []).map((u) => [u.id, u.username]));
      replace(byKey, usageTable("API key", keys.data, keyName, "usage-keys-table"));
      replace(byUser, usageTable("User", users.data, userName, "usage-users-table"));
      replace(byEndUser, usageTable("End user (the request's `user`)", endUsers.data, new Map(), "usage-end-users-table"));
      replace(
        routing,
        table(
          ["Target", { text: "Requests", num: true }, { text: "Success", num: true }, { text: "p50", num: true }, { text: "p95", num: true }, { text: "TTFT p50", num: true }, { text: "Prompt tokens", num: true }, { text: "Completion tokens", num: true }, { text: "Cost", num: true }],
          routes.data.map((r) => [targetId(r.served_model, r.provider), num(r.requests), pct(r.success_rate), ms(r.latency_p50_ms), ms(r.latency_p95_ms), ms(r.ttft_p50_ms), num(r.prompt_tokens), num(r.completion_tokens), usd(r.cost_usd)]),
          { testid: "analytics-routing-table", empty: "No request in this range." },
        ),
      );
      touch(updated);
    } catch (error) {
      if (scope.alive) errors.show("Could not load the analytics", error);
    }
  };
  range.addEventListener("change", () => void load());
  scope.every(60_000, load);

  return h(
    "div",
    { class: "view", testid: "view-analytics" },
    viewHeader("Analytics", field("Range", range), updated),
    errors.el,
    h("div", { class: "chart-grid" }, charts.requests.el, charts.tokens.el, charts.errors.el, charts.latency.el),
    section("Usage per API key", byKey),
    section("Usage per user", byUser),
    section("Usage per end user", byEndUser),
    section("Per target", routing),
  );
}

function usageTable(label: string, rows: UsageItem[], names: Map<string, string>, testid: string): HTMLElement {
  return table(
    [label, { text: "Requests", num: true }, { text: "Errors", num: true }, { text: "Prompt tokens", num: true }, { text: "Completion tokens", num: true }, { text: "Cost", num: true }],
    rows.map((u) => [
      u.key === null ? h("span", { class: "muted" }, "not recorded") : h("span", { title: u.key }, names.get(u.key) ?? u.key),
      num(u.requests),
      num(u.errors),
      num(u.prompt_tokens),
      num(u.completion_tokens),
      usd(u.cost_usd),
    ]),
    { testid, empty: "No request in this range." },
  );
}
