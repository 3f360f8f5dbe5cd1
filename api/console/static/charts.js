// Per-disk performance graphs: the history the service samples (GET /v1/disks/{name}/stats)
// drawn with uPlot (vendor/uplot/, the global `uPlot`). Each graph shows the newest value of
// every series beside it as text, so the figure is readable without the picture.

import { api, disk } from "./api.js";
import { bytes, el, number, seconds } from "./format.js";

export const RANGES = [["15m", "15 min"], ["1h", "1 h"], ["1d", "1 day"]];
const REFRESH_MS = 5000;
const READ = "#2f6fdb";
const WRITE = "#d9480f";
const EXTRA = "#7048e8";

// [chart id, title, unit note, [series key, label, colour, dashed], scale, format]
const CHARTS = [
  ["iops", "IOPS", "operations/s", [["read_iops", "read", READ], ["write_iops", "write", WRITE]]],
  ["mbps", "Throughput", "MB/s", [["read_mbps", "read", READ], ["write_mbps", "write", WRITE]]],
  ["latency", "Latency", "ms", [
    ["read_p50_ms", "read p50", READ], ["read_p99_ms", "read p99", READ, true],
    ["write_p50_ms", "write p50", WRITE], ["write_p99_ms", "write p99", WRITE, true]]],
  ["cache", "Host-cache hit ratio", "%", [["cache_hit_ratio", "hit ratio", EXTRA]], 100],
  ["dirty", "Dirty bytes", "in the host cache", [["dirty_bytes", "dirty", EXTRA]], 1, bytes],
  ["store", "Store requests", "per second", [
    ["store_requests_per_s", "requests", READ], ["store_errors_per_s", "errors", WRITE]]],
  ["lag", "Replication lag", "seconds (grs disks)",
    [["replication_lag_seconds", "lag", EXTRA]], 1, seconds],
];

const clock = (t, seconds) => new Date(t * 1000).toLocaleTimeString([], {
  hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined, hourCycle: "h23",
});
const MIN_SPAN = 60; // seconds: a history a few samples long is not stretched edge to edge

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) {
    if (values[i] !== null && values[i] !== undefined) return values[i];
  }
  return null;
}

class Chart {
  constructor(container, span, [id, title, unit, series, scale = 1, fmt = number]) {
    this.series = series;
    this.scale = scale;
    this.fmt = fmt;
    this.plotBox = el("div", { class: "plot", role: "img", "aria-label": `${title} graph` });
    this.legend = el("dl", { class: "last", "aria-label": `${title}: newest values` });
    this.figure = el("figure", { class: "chart", id: `chart-${id}` },
      el("figcaption", {}, el("strong", {}, title), " ", el("span", { class: "muted" }, unit)),
      this.plotBox, this.legend);
    this.empty = el("p", { class: "empty-note muted" }, "no values in this range");
    this.figure.append(this.empty);
    container.append(this.figure);
    this.values = {};
    for (const [key, label, stroke, dashed] of series) {
      const dd = el("dd", { dataset: { series: key } }, "—");
      const dt = el("dt", { class: dashed ? "swatch dashed" : "swatch" }, label);
      dt.style.borderColor = stroke; // CSSOM: allowed by the page's CSP, unlike a style attribute
      this.values[key] = dd;
      this.legend.append(dt, dd);
    }
    this.plot = new uPlot({
      width: this.width(), height: 150, legend: { show: false }, cursor: { drag: { x: false, y: false } },
      // The range chosen (15 min, 1 h, 1 day), or less when the history is younger.
      scales: { x: { time: true, range: () => span() } },
      axes: [{ space: 80, values: (u, ticks) => ticks.map((t) => clock(t, u.scales.x.max - u.scales.x.min < 600)) },
        { size: 60, values: (u, ticks) => ticks.map((v) => fmt(v)) }],
      series: [{}, ...series.map(([, label, stroke, dashed]) =>
        ({ label, stroke, width: 1.5, dash: dashed ? [5, 4] : undefined, spanGaps: false }))],
    }, [[], ...series.map(() => [])], this.plotBox);
  }

  update(t, data) {
    const columns = this.series.map(([key]) =>
      (data[key] || t.map(() => null)).map((v) => (v === null ? null : v * this.scale)));
    this.plot.setData([t, ...columns]);
    this.empty.hidden = columns.some((c) => c.some((v) => v !== null));
    this.series.forEach(([key], i) => {
      const v = lastValue(columns[i]);
      const dd = this.values[key];
      dd.textContent = v === null ? "—" : this.fmt(v);
      dd.dataset.value = v === null ? "" : String(v / this.scale);
    });
  }

  width() {
    return Math.max(240, this.figure.clientWidth - 18);
  }

  resize() {
    this.plot.setSize({ width: this.width(), height: 150 });
  }

  destroy() {
    this.plot.destroy();
    this.figure.remove();
  }
}

/** The graphs of one disk: range buttons, a refresh every few seconds, the newest values. */
export class DiskGraphs {
  constructor(root, rangeGroup, stateLine) {
    this.root = root;
    this.rangeGroup = rangeGroup;
    this.stateLine = stateLine;
    this.range = "15m";
    this.charts = [];
    this.timer = null;
    this.name = null;
    this.last = null; // the newest stats answer: tests and screen readers read the text
    rangeGroup.replaceChildren(...RANGES.map(([value, label]) => el("button", {
      type: "button", "aria-pressed": String(value === this.range), dataset: { range: value },
      "aria-label": `Show the last ${label}`, onclick: () => this.setRange(value),
    }, label)));
    window.addEventListener("resize", () => this.resize());
  }

  show(name) {
    if (this.name === name) return;
    this.hide();
    this.name = name;
    const span = () => {
      const t = this.last ? this.last.t : [];
      const end = t.length ? t[t.length - 1] : Date.now() / 1000;
      const start = Math.max(end - (this.last ? this.last.since_seconds : 900), t.length ? t[0] : end);
      return [Math.min(start, end - MIN_SPAN), end];
    };
    this.charts = CHARTS.map((spec) => new Chart(this.root, span, spec));
    this.refresh();
    this.timer = setInterval(() => this.refresh(), REFRESH_MS);
  }

  hide() {
    clearInterval(this.timer);
    this.timer = null;
    this.charts.forEach((c) => c.destroy());
    this.charts = [];
    this.name = null;
    this.last = null;
  }

  setRange(range) {
    this.range = range;
    for (const b of this.rangeGroup.querySelectorAll("button")) {
      b.setAttribute("aria-pressed", String(b.dataset.range === range));
    }
    this.refresh();
  }

  resize() {
    this.charts.forEach((c) => c.resize());
  }

  async refresh() {
    const name = this.name;
    if (!name) return;
    try {
      const stats = await api("GET", `${disk(name)}/stats?since=${this.range}`);
      if (name !== this.name) return;
      this.last = stats;
      this.charts.forEach((c) => c.update(stats.t, stats.series));
      const step = stats.step_seconds ? `, one point per ${stats.step_seconds} s` : "";
      this.stateLine.textContent = `updated ${new Date().toLocaleTimeString()}${step}`;
    } catch (err) {
      if (name === this.name) this.stateLine.textContent = `no history: ${err.message}`;
    }
  }
}
