import { json, withQuery } from "../api";
import { LineChart, type Series } from "../chart";
import type { Context } from "../context";
import { badge, h, replace, section, table } from "../dom";
import { ms, num, pct } from "../format";
import type {
  ListOf,
  ModelPerformanceItem,
  Ranged,
  RoutingStatItem,
  TargetState,
  TimeseriesItem,
  TimeseriesResponse,
} from "../types";
import { ErrorLine, stamp, targetId, touch, viewHeader } from "./common";

const REFRESH_MS = 5000;
const PER_MODEL = 4;
const BUCKET_S = 60;

/** The last hour, per minute: requests/s, latency, tokens/s and errors, in total and per
 * model, with tables per model and per target. Refreshed every few seconds. */
export function overviewView({ scope }: Context): HTMLElement {
  const errors = new ErrorLine();
  const updated = stamp();
  const tiles = h("div", { class: "tiles", testid: "overview-tiles" });
  const charts = {
    requests: new LineChart({ title: "Requests / s", testid: "chart-requests", format: (v) => `${v.toFixed(2)}/s` }),
    latency: new LineChart({ title: "Latency p95 (ms)", testid: "chart-latency", format: ms }),
    tokens: new LineChart({ title: "Tokens / s", testid: "chart-tokens", format: (v) => `${v.toFixed(1)}/s` }),
    errors: new LineChart({ title: "Errors / min", testid: "chart-errors", format: (v) => num(v) }),
  };
  const latencyAll = new LineChart({ title: "Latency, all models: average and p95 (ms)", testid: "chart-latency-all", format: ms });
  const models = h("div", { testid: "overview-models" });
  const targets = h("div", { testid: "overview-targets" });

  const refresh = async (): Promise<void> => {
    const range = "1h";
    const signal = scope.signal;
    const [total, perModel, routing, live] = await Promise.all([
      json<TimeseriesResponse>(withQuery("/api/v1/analytics/timeseries", { window: range, bucket: "minute" }), { signal }),
      json<Ranged<ModelPerformanceItem>>(withQuery("/api/v1/analytics/models", { window: range }), { signal }),
      json<Ranged<RoutingStatItem>>(withQuery("/api/v1/analytics/routing", { window: range }), { signal }).catch(() => null),
      json<ListOf<TargetState>>("/api/v1/router/targets", { signal }).catch(() => null),
    ]).catch((error: unknown) => {
      if (scope.alive) errors.show("Could not load the metrics", error);
      return [null, null, null, null] as const;
    });
    if (!scope.alive || total === null || perModel === null) return;
    errors.clear();
    const top = [...perModel.data].sort((a, b) => b.requests - a.requests).slice(0, PER_MODEL);
    const series = await Promise.all(
      top.map((m) =>
        json<TimeseriesResponse>(
          withQuery("/api/v1/analytics/timeseries", { window: range, bucket: "minute", model: m.served_model }),
          { signal },
        )
          .then((r) => ({ name: m.served_model, data: r.data }))
          .catch(() => ({ name: m.served_model, data: [] as TimeseriesItem[] })),
      ),
    );
    if (!scope.alive) return;

    const times = total.data.map((b) => new Date(b.bucket_start));
    const index = new Map(total.data.map((b, i) => [b.bucket_start, i]));
    const aligned = (data: readonly TimeseriesItem[], pick: (b: TimeseriesItem) => number | null): (number | null)[] => {
      const values: (number | null)[] = times.map(() => null);
      for (const b of data) {
        const i = index.get(b.bucket_start);
        if (i !== undefined) values[i] = pick(b);
      }
      return values;
    };
    const build = (pick: (b: TimeseriesItem) => number | null, zeroFill: boolean): Series[] => [
      { name: "all models", values: total.data.map(pick) },
      ...series.map((one) => ({
        name: one.name,
        values: aligned(one.data, pick).map((v) => (v === null && zeroFill ? 0 : v)),
      })),
    ];
    charts.requests.update(times, build((b) => b.requests / BUCKET_S, true));
    charts.tokens.update(times, build((b) => b.tokens / BUCKET_S, true));
    charts.errors.update(times, build((b) => b.errors, true));
    charts.latency.update(times, build((b) => b.latency_p95_ms, false));
    latencyAll.update(times, [
      { name: "average", values: total.data.map((b) => b.latency_avg_ms) },
      { name: "p95", values: total.data.map((b) => b.latency_p95_ms) },
    ]);

    const requests = total.data.reduce((n, b) => n + b.requests, 0);
    const failed = total.data.reduce((n, b) => n + b.errors, 0);
    const tokens = total.data.reduce((n, b) => n + b.tokens, 0);
    const p95 = Math.max(0, ...perModel.data.map((m) => m.latency_p95_ms ?? 0));
    const last = total.data.at(-1);
    replace(
      tiles,
      tile("Requests (1 h)", num(requests), "stat-requests"),
      tile("Requests / s (this minute)", last === undefined ? "—" : (last.requests / BUCKET_S).toFixed(2), "stat-rps"),
      tile("Errors (1 h)", `${num(failed)} · ${pct(requests > 0 ? failed / requests : null)}`, "stat-errors"),
      tile("Tokens (1 h)", num(tokens), "stat-tokens"),
      tile("Worst p95 latency", p95 > 0 ? ms(p95) : "—", "stat-p95"),
    );
    replace(
      models,
      table(
        ["Model", { text: "Requests", num: true }, { text: "Errors", num: true }, { text: "Error rate", num: true }, { text: "p50", num: true }, { text: "p95", num: true }, { text: "TTFT p50", num: true }, { text: "Tokens/s", num: true }],
        perModel.data.map((m) => [m.served_model, num(m.requests), num(m.errors), pct(m.error_rate), ms(m.latency_p50_ms), ms(m.latency_p95_ms), ms(m.ttft_p50_ms), num(m.output_tokens_per_second, 1)]),
        { testid: "overview-models-table", empty: "No request in the last hour." },
      ),
    );
    const stats = new Map((routing?.data ?? []).map((r) => [targetId(r.served_model, r.provider), r]));
    const ids = new Set<string>([...(live?.data ?? []).map((t) => t.id), ...stats.keys()]);
    const state = new Map((live?.data ?? []).map((t) => [t.id, t]));
    replace(
      targets,
      table(
        ["Target", "Circuit", { text: "In flight", num: true }, { text: "Queued", num: true }, { text: "Requests (1 h)", num: true }, { text: "Success", num: true }, { text: "p50", num: true }, { text: "p95", num: true }, { text: "TTFT p50", num: true }, { text: "Live tokens/s", num: true }],
        [...ids].sort().map((id) => {
          const t = state.get(id);
          const r = stats.get(id);
          return [
            id,
            t === undefined ? "—" : circuitBadge(t.circuit),
            num(t?.in_flight),
            num(t?.queue_depth),
            num(r?.requests ?? 0),
            pct(r?.success_rate),
            ms(r?.latency_p50_ms),
            ms(r?.latency_p95_ms),
            ms(r?.ttft_p50_ms),
            num(t?.tokens_per_s, 1),
          ];
        }),
        { testid: "overview-targets-table", empty: "No target." },
      ),
    );
    touch(updated);
  };
  scope.every(REFRESH_MS, refresh);

  return h(
    "div",
    { class: "view", testid: "view-overview" },
    viewHeader("Overview", h("span", { class: "muted" }, "Last hour, per minute · refreshed every 5 s"), updated),
    errors.el,
    tiles,
    h("div", { class: "chart-grid" }, charts.requests.el, charts.latency.el, charts.tokens.el, charts.errors.el),
    h("div", { class: "chart-grid" }, latencyAll.el),
    section("Per model", models),
    section("Per target", targets),
  );
}

function tile(label: string, value: string, testid: string): HTMLElement {
  return h("div", { class: "tile", testid }, h("div", { class: "tile-value" }, value), h("div", { class: "tile-label" }, label));
}

export function circuitBadge(circuit: string): HTMLElement {
  const kind = circuit === "closed" ? "ok" : circuit === "open" ? "bad" : "warn";
  return badge(circuit, kind);
}
