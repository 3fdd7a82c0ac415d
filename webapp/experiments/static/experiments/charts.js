// Line charts on uPlot (vendored from npm, webapp/static/vendor/uplot): EMA smoothing with the raw
// line faint behind it, min-max bands, downsampling that keeps every bucket's extremes, and zoom
// that survives new data. Shared by the dashboard and the compare page.
"use strict";

const VPOCharts = (() => {
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  // Exponential moving average with TensorBoard's debiasing; null stays null (a gap).
  function ema(values, alpha) {
    if (!alpha) return values;
    const out = new Array(values.length);
    let acc = 0, weight = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i];
      if (v === null || v === undefined || Number.isNaN(v)) { out[i] = null; continue; }
      acc = alpha * acc + (1 - alpha) * v;
      weight = alpha * weight + (1 - alpha);
      out[i] = acc / weight;
    }
    return out;
  }

  // Indices to draw when there are more points than pixels: per bucket, the first and last point
  // and, for every series, the points holding its minimum and maximum, so no spike is lost.
  function downsample(x, ys, maxPoints) {
    const n = x.length;
    if (n <= maxPoints) return null;
    const buckets = Math.max(1, Math.floor(maxPoints / 4));
    const size = n / buckets;
    const keep = [];
    for (let b = 0; b < buckets; b++) {
      const lo = Math.floor(b * size), hi = Math.min(n, Math.floor((b + 1) * size));
      if (hi <= lo) continue;
      const picked = new Set([lo, hi - 1]);
      for (const y of ys) {
        let iMin = -1, iMax = -1;
        for (let i = lo; i < hi; i++) {
          const v = y[i];
          if (v === null || v === undefined) continue;
          if (iMin < 0 || v < y[iMin]) iMin = i;
          if (iMax < 0 || v > y[iMax]) iMax = i;
        }
        if (iMin >= 0) { picked.add(iMin); picked.add(iMax); }
      }
      keep.push(...[...picked].sort((a, b) => a - b));
    }
    return keep;
  }

  function pick(arr, idx) { return idx ? idx.map((i) => arr[i]) : arr; }

  // One chart: {title, lines: [{label, values}], band: {lo, hi, label} | null}.
  class Chart {
    constructor(container, title, xLabel) {
      this.el = document.createElement("div");
      this.el.className = "chart";
      container.appendChild(this.el);
      this.title = title;
      this.xLabel = xLabel;
      this.plot = null;
      this.zoomed = false;
      this.signature = "";
      this.drawn = 0;
    }

    // x: numbers; lines: [{label, values}]; band: {label, lo, hi} or null; alpha: EMA factor (0 = off)
    update(x, lines, band, alpha) {
      const raw = [...lines.map((l) => l.values), ...(band ? [band.lo, band.hi] : [])];
      const idx = downsample(x, raw, Math.max(200, 2 * (this.el.clientWidth || 600)));
      this.drawn = idx ? idx.length : x.length;
      const data = [pick(x, idx)];
      const series = [{label: this.xLabel}];
      lines.forEach((line, i) => {
        const colour = COLOURS[i % COLOURS.length];
        if (alpha) {  // raw faint behind, smoothed solid on top
          data.push(pick(line.values, idx));
          series.push({label: `${line.label} (raw)`, stroke: colour + "40", width: 1, spanGaps: true});
          data.push(pick(ema(line.values, alpha), idx));
          series.push({label: line.label, stroke: colour, width: 2, spanGaps: true});
        } else {
          data.push(pick(line.values, idx));
          series.push({label: line.label, stroke: colour, width: 1.5, spanGaps: true});
        }
      });
      const bands = [];
      if (band) {  // drawn in the first line's colour
        data.push(pick(band.lo, idx), pick(band.hi, idx));
        series.push({label: `${band.label} min`, stroke: COLOURS[0] + "55", width: 1, spanGaps: true},
                    {label: `${band.label} max`, stroke: COLOURS[0] + "55", width: 1, spanGaps: true});
        bands.push({series: [series.length - 1, series.length - 2], fill: COLOURS[0] + "22"});
      }
      const signature = series.map((s) => s.label).join("|");
      if (!this.plot || signature !== this.signature) {
        this.create(series, bands, data);
        this.signature = signature;
      } else {
        // keep what the user zoomed into; otherwise follow the data as it grows
        this.plot.setData(data, !this.zoomed);
      }
    }

    create(series, bands, data) {
      const scale = this.plot ? this.plot.scales.x : null;
      if (this.plot) this.plot.destroy();
      const chart = this;
      this.plot = new uPlot({
        title: this.title,
        width: Math.max(300, this.el.clientWidth || 600),
        height: 220,
        series,
        bands,
        scales: {x: {time: false}},
        axes: [{label: this.xLabel}, {}],
        legend: {live: true},
        cursor: {sync: {key: "vpo"}, drag: {x: true, y: false}},
        hooks: {
          setSelect: [(u) => { if (u.select.width > 0) chart.zoomed = true; }],
          ready: [(u) => {
            u.over.addEventListener("dblclick", () => { chart.zoomed = false; });
          }],
        },
      }, data, this.el);
      if (scale && this.zoomed && scale.min !== null) this.plot.setScale("x", {min: scale.min, max: scale.max});
    }

    resize() {
      if (this.plot) this.plot.setSize({width: Math.max(300, this.el.clientWidth), height: 220});
    }
  }

  return {Chart, ema, downsample, COLOURS};
})();
