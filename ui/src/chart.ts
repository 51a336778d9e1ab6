// Line charts drawn as SVG (no chart library, nothing from a CDN). Text goes in as text
// nodes; colours are presentation attributes and classes (the CSP allows no inline styles).
import { clock, compact } from "./format";
import { h, replace, s } from "./dom";

export interface Series {
  name: string;
  values: readonly (number | null)[];
}

export interface ChartOptions {
  title: string;
  testid: string;
  /** Formats a value for the tooltip (the axis uses a compact form). */
  format?: (value: number) => string;
  /** Show dates on the time axis (ranges longer than a day). */
  withDate?: boolean;
}

export const PALETTE = ["#4f7cff", "#e8893a", "#3bb273", "#d64e7f", "#8a63d2", "#2ab7ca", "#b5a33a"];

const W = 640;
const H = 200;
const PAD = { left: 46, right: 12, top: 12, bottom: 26 };

function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * magnitude) return step * magnitude;
  }
  return 10 * magnitude;
}

export class LineChart {
  readonly el: HTMLElement;
  private readonly plot: HTMLElement;
  private readonly legend: HTMLElement;
  private readonly tooltip: HTMLElement;
  private times: readonly Date[] = [];
  private series: readonly Series[] = [];

  constructor(private readonly options: ChartOptions) {
    this.plot = h("div", { class: "chart-plot" });
    this.legend = h("div", { class: "legend" });
    this.tooltip = h("div", { class: "chart-tooltip", attrs: { hidden: true } });
    this.el = h(
      "figure",
      { class: "chart", testid: options.testid },
      h("figcaption", null, options.title),
      h("div", { class: "chart-body" }, this.plot, this.tooltip),
      this.legend,
    );
    this.update([], []);
  }

  update(times: readonly Date[], series: readonly Series[]): void {
    this.times = times;
    this.series = series;
    const n = times.length;
    const values = series.flatMap((one) => one.values.filter((v): v is number => v !== null));
    const top = niceMax(values.length > 0 ? Math.max(...values) : 0);
    const plotW = W - PAD.left - PAD.right;
    const plotH = H - PAD.top - PAD.bottom;
    const x = (i: number): number => PAD.left + (n <= 1 ? plotW / 2 : (i / (n - 1)) * plotW);
    const y = (v: number): number => PAD.top + plotH - (v / top) * plotH;

    const svg = s("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-label": this.options.title,
      class: "chart-svg",
    });
    // Grid and y axis.
    for (let k = 0; k <= 4; k += 1) {
      const v = (top * k) / 4;
      const yy = y(v);
      svg.append(
        s("line", { x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy, class: k === 0 ? "axis" : "grid" }),
        s("text", { x: PAD.left - 6, y: yy + 4, "text-anchor": "end", class: "tick" }, compact(v)),
      );
    }
    // Time axis: first, middle and last bucket.
    if (n > 0) {
      const marks = n === 1 ? [0] : [0, Math.floor((n - 1) / 2), n - 1];
      for (const i of marks) {
        const time = times[i];
        if (time === undefined) continue;
        const anchor = i === 0 && n > 1 ? "start" : i === n - 1 && n > 1 ? "end" : "middle";
        svg.append(
          s("text", { x: x(i), y: H - 8, "text-anchor": anchor, class: "tick" }, clock(time, this.options.withDate)),
        );
      }
    }
    // One path per series; a null value breaks the line.
    series.forEach((one, index) => {
      const colour = PALETTE[index % PALETTE.length] ?? "#888";
      let d = "";
      let pen = false;
      let drawn = 0;
      one.values.forEach((v, i) => {
        if (v === null || i >= n) {
          pen = false;
          return;
        }
        d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
        drawn += 1;
      });
      if (d !== "") {
        svg.append(
          s("path", {
            d,
            fill: "none",
            stroke: colour,
            "stroke-width": index === 0 ? 2 : 1.5,
            "stroke-linejoin": "round",
            class: "series",
            "data-series": one.name,
            "data-points": drawn,
          }),
        );
      }
      // Isolated points (no neighbour to draw a line to) get a dot.
      one.values.forEach((v, i) => {
        if (v === null || i >= n) return;
        const before = i > 0 ? one.values[i - 1] : null;
        const after = i + 1 < n ? one.values[i + 1] : null;
        if ((before === null || before === undefined) && (after === null || after === undefined)) {
          svg.append(s("circle", { cx: x(i), cy: y(v), r: 2.5, fill: colour, class: "dot" }));
        }
      });
    });
    const cursor = s("line", { x1: 0, x2: 0, y1: PAD.top, y2: H - PAD.bottom, class: "cursor", visibility: "hidden" });
    const overlay = s("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, class: "overlay", fill: "transparent" });
    overlay.addEventListener("pointermove", (event) => this.hover(event, svg, cursor, x));
    overlay.addEventListener("pointerleave", () => {
      cursor.setAttribute("visibility", "hidden");
      this.tooltip.hidden = true;
    });
    svg.append(cursor, overlay);
    replace(this.plot, svg);

    const max = values.length > 0 ? Math.max(...values) : 0;
    this.el.dataset.max = String(max);
    this.el.dataset.points = String(values.length);
    this.el.dataset.series = String(series.length);
    replace(
      this.legend,
      series.map((one, index) =>
        h(
          "span",
          { class: "legend-item" },
          h("span", { class: `swatch swatch-${index % PALETTE.length}` }),
          one.name,
        ),
      ),
    );
  }

  private hover(event: PointerEvent, svg: SVGSVGElement, cursor: SVGLineElement, x: (i: number) => number): void {
    const n = this.times.length;
    if (n === 0) return;
    const box = svg.getBoundingClientRect();
    const vx = ((event.clientX - box.left) / box.width) * W;
    let best = 0;
    for (let i = 1; i < n; i += 1) {
      if (Math.abs(x(i) - vx) < Math.abs(x(best) - vx)) best = i;
    }
    const cx = x(best);
    cursor.setAttribute("x1", String(cx));
    cursor.setAttribute("x2", String(cx));
    cursor.setAttribute("visibility", "visible");
    const time = this.times[best];
    const format = this.options.format ?? compact;
    replace(
      this.tooltip,
      h("strong", null, time === undefined ? "" : clock(time, this.options.withDate)),
      this.series.map((one, index) => {
        const v = one.values[best];
        return h(
          "div",
          null,
          h("span", { class: `swatch swatch-${index % PALETTE.length}` }),
          `${one.name}: ${v === null || v === undefined ? "—" : format(v)}`,
        );
      }),
    );
    this.tooltip.hidden = false;
    // CSSOM (not a style attribute): allowed by the CSP.
    const left = (cx / W) * box.width;
    this.tooltip.style.left = `${Math.min(left + 12, box.width - 180)}px`;
  }
}
